//! The two things the binary does: trace (the default) and `check`.
//!
//! Tracing wires the stages together: kernel support -> loaded programs -> ring buffer -> decode
//! -> enrich -> filter -> sink, and reports lost events while running and when it stops.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, IsTerminal as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use rst_trace_common::NO_OFFSET;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use crate::{
    attribute::Attributor,
    backlog,
    cause::Cause,
    cli::{BacklogArgs, ColorChoice, TraceArgs},
    container_names::ContainerNames,
    decode::{Decoder, WallClock},
    enrich::CgroupResolver,
    event::{Event, Folded},
    filter::Filter,
    fold::FoldedSample,
    loader::{Hook, LoadOptions, Tracer},
    metrics::{self, Metrics},
    output::{Format, OutputFile, Outputs, Sink, SummaryView},
    pcap::PcapFile,
    privileges,
    sources::KernelSupport,
    stack::StackReader,
    tracefs::Tracefs,
};

/// How a trace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Events written one by one.
    pub reported: u64,
    /// Events the ring buffer had no room for.
    pub lost: u64,
    /// Events the kernel counted instead of sending, written as one line per key and second.
    pub folded: u64,
}

/// Probes the kernel, printing to stderr what is off or was changed (tracefs mounted).
fn probe_kernel() -> anyhow::Result<KernelSupport> {
    privileges::ensure_can_trace()?;
    let support = KernelSupport::probe()?;
    if let Tracefs::MountedByUs(path) = &support.tracefs {
        eprintln!(
            "rst-trace: tracefs was not mounted; mounted it at {}",
            path.display()
        );
    }
    Ok(support)
}

pub async fn trace(args: TraceArgs) -> anyhow::Result<Summary> {
    for pid in &args.filters.pids {
        if !Path::new("/proc").join(pid.to_string()).exists() {
            bail!("no process with pid {pid} is running (--pid {pid})");
        }
    }
    // Bind first, so that a port in use fails the start with a sentence.
    let metrics = match args.metrics {
        Some(addr) => {
            let listener = metrics::bind(addr)?;
            // Said always, and needed with port 0: the kernel chose the port.
            let bound = listener
                .local_addr()
                .context("reading the metrics address")?;
            eprintln!("rst-trace: serving metrics at http://{bound}/metrics");
            let metrics = Arc::new(Mutex::new(Metrics::new()));
            tokio::spawn(metrics::serve_on(Arc::clone(&metrics), listener));
            Some(metrics)
        }
        None => None,
    };
    // Before loading anything: a refused --output is a sentence, not a wait.
    let mut outputs = outputs(&args)?;
    let runtime_roots = args.runtimes.roots()?;
    let support = probe_kernel()?;
    let skb = &support.offsets;
    if args.pcap.is_some()
        && [skb.skb_head, skb.skb_network_header, skb.skb_tail].contains(&NO_OFFSET)
    {
        bail!(
            "--pcap cannot be used on this kernel: its BTF does not say where struct sk_buff \
             keeps head, network_header and tail (see `rst-trace check`)"
        );
    }
    let options = LoadOptions {
        pids: args.filters.pids.clone(),
        ports: args.filters.ports.clone(),
        netns: args.filters.netns.clone(),
        cgroups: args.filters.cgroups.clone(),
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
        stacks: args.stack,
        classic_tracepoints: args.classic_tracepoints,
        fold_after: args.fold_after,
        pcap: args.pcap.is_some(),
    };
    let mut tracer = Tracer::load(&support, &options)?;
    for source in &support.sources {
        for note in &source.notes {
            eprintln!("rst-trace: note: {}: {note}", source.name());
        }
    }
    for missing in &support.missing {
        eprintln!("rst-trace: note: not in this kernel's BTF: {missing}");
    }
    for (name, why) in &tracer.failed {
        let serves = support
            .sources
            .iter()
            .find(|source| source.name() == *name)
            .map_or("its events", |source| source.serves);
        eprintln!("rst-trace: warning: {name} is off ({serves} not available): {why}");
    }
    for limit in privileges::proc_limits() {
        eprintln!("rst-trace: note: {limit}");
    }
    if tracer.listener_iter.is_ok()
        && let Err(why) = &tracer.listener_map
    {
        eprintln!(
            "rst-trace: note: the listener map iterator is off ({why}); each second's listener \
             pass walks every open file on the host instead"
        );
    }
    if let Err(why) = &tracer.listener_iter {
        eprintln!(
            "rst-trace: note: the listener iterator is off ({why}); SYNs dropped at full queues \
             are found by entering every network namespace each second, which needs \
             CAP_SYS_ADMIN and costs more"
        );
    }

    let decoder = Decoder {
        send_reset: support.send_reset,
        receive_reset: support.receive_reset,
        drop_reason: support.drop_reason,
        names: support.names.clone(),
        clock: WallClock::now()?,
    };
    let mut ring = poll(tracer.events()?).context("polling the ring buffer")?;
    let lost_counter = tracer.lost_counter()?;
    let filtered_counter = tracer.filtered_counter()?;
    let mut folds = tracer.fold_reader()?;
    let stacks = if args.stack {
        Some(StackReader::new(tracer.stacks()?)?)
    } else {
        None
    };
    let mut kernel_log = tracer.take_logger().and_then(|logger| poll(logger).ok());
    let mut attributor = Attributor::new(CgroupResolver::new())
        .with_container_names(ContainerNames::new(runtime_roots))
        .with_listeners(tracer.listeners()?);
    if outputs.stream.is_none() && outputs.file.is_none() && outputs.pcap.is_none() {
        attributor = attributor.without_explanations();
    }
    let filter = Filter::from_args(&args.filters);
    // Everything that needed more is done: programs attached, files and sockets open. Before
    // the first thread starts, since threads inherit the reduced sets.
    if let Err(error) = privileges::drop_after_attach() {
        log::warn!("could not drop capabilities after attaching: {error:#}");
    }
    // Listener drops: from the listener iterator, one pass a second, where the kernel takes it;
    // else by sampling each network namespace.
    let (listener_passes, mut listener_drops) = match &tracer.listener_iter {
        Ok(()) => {
            let (passes, drops) = backlog::spawn_iter_watcher();
            (Some(passes), drops)
        }
        Err(_) => (None, backlog::spawn_watcher(LISTENER_SAMPLE_INTERVAL)),
    };
    let mut listener_tick = tokio::time::interval(LISTENER_SAMPLE_INTERVAL);

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = args.duration.map(|duration| Instant::now() + duration);
    let mut lost_check = tokio::time::interval(Duration::from_secs(1));
    let mut fold_tick = tokio::time::interval(FOLD_INTERVAL);
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    let mut summary_tick = tokio::time::interval(args.summary.unwrap_or(Duration::from_secs(3600)));
    summary_tick.tick().await;
    let mut lost_reported = 0u64;
    let mut pipeline = Pipeline {
        decoder: &decoder,
        attributor: &mut attributor,
        filter: &filter,
        stacks,
        outputs: &mut outputs,
        metrics: metrics.clone(),
        reported: 0,
        folded: 0,
        folded_lines: 0,
        limit: args.count,
    };

    // The pass over every open file (it puts the listeners that were already there in the
    // kernel's map) runs before tracing is announced: while it visits a file it holds it, and a
    // close() of that file then finishes in rst-trace's context. Done now, it cannot meet what
    // the operator, or a test, does once tracing has started; the watcher's first pass, its
    // baseline, is then a pass over the listener map.
    if listener_passes.is_some()
        && let Err(error) = tracer
            .listener_pass()
            .and_then(crate::listener_iter::read_pass)
    {
        log::debug!("listener iterator pass: {error:#}");
    }
    eprintln!(
        "rst-trace: tracing {} (Ctrl-C to stop)",
        tracer.attached.join(" and ")
    );

    let mut done = false;
    while !done {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                done = pipeline.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            Some(drop) = listener_drops.recv() => {
                if let Some(event) = pipeline.attributor.listener_drop_event(&drop) {
                    done = pipeline.write(&event)?;
                }
            }
            Some(guard) = async {
                match kernel_log.as_mut() {
                    Some(log) => Some(log.readable_mut().await),
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                // The kernel wakes us only when the buffer fills up; quieter events are picked
                // up here. Received resets that waited long enough for a partner go out too.
                done = pipeline.drain(ring.get_mut())?;
            }
            _ = fold_tick.tick(), if args.fold_after > 0 => {
                // What the kernel counted instead of sending in the last second: a line per key.
                // With `--fold-after 0` the kernel counts nothing, so there is nothing to take.
                let folded = folds.take().await?;
                done = pipeline.write_folded(folded)?;
            }
            _ = listener_tick.tick(), if listener_passes.is_some() => {
                if let Some(passes) = &listener_passes {
                    match tracer.listener_pass() {
                        Ok(file) => {
                            // The watcher thread ends only with this loop.
                            let _ = passes.send(file);
                        }
                        Err(error) => log::debug!("listener iterator pass: {error:#}"),
                    }
                }
            }
            _ = summary_tick.tick(), if args.summary.is_some() => {
                if let Some(summary) = &mut pipeline.outputs.summary {
                    summary.tick().or_else(ignore_broken_pipe)?;
                }
            }
            _ = lost_check.tick() => {
                let lost = lost_counter.total()?;
                if let Some(metrics) = &metrics {
                    let mut metrics = metrics.lock().unwrap_or_else(PoisonError::into_inner);
                    metrics.set_lost(lost);
                    if let Some(file) = &pipeline.outputs.file {
                        metrics.set_unwritten(file.inner().unwritten());
                    }
                    metrics.set_program_stats(&tracer.program_stats());
                }
                if lost > lost_reported {
                    eprintln!(
                        "rst-trace: warning: {} events lost: the ring buffer was full (raise \
                         --ring-buffer-kib, now {})",
                        lost - lost_reported,
                        args.ring_buffer_kib
                    );
                    lost_reported = lost;
                }
            }
            _ = async {
                match deadline {
                    Some(deadline) => sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => done = true,
            _ = interrupt.recv() => done = true,
            _ = terminate.recv() => done = true,
        }
    }
    // Whatever the kernel delivered or counted before we stopped still counts: detach first,
    // so that nothing more arrives, then take it all.
    let program_stats = tracer.program_stats();
    drop(tracer);
    if !pipeline.limit_reached() && !pipeline.drain(ring.get_mut())? {
        pipeline.release(true)?;
        let folded = folds.take_all()?;
        pipeline.write_folded(folded)?;
    }
    let (reported, folded, folded_lines) =
        (pipeline.reported, pipeline.folded, pipeline.folded_lines);
    outputs.flush().or_else(ignore_broken_pipe)?;
    if let Some(summary) = &mut outputs.summary {
        summary.finish().or_else(ignore_broken_pipe)?;
    }
    let lost = lost_counter.total()?;
    if let Some(metrics) = &metrics {
        let mut metrics = metrics.lock().unwrap_or_else(PoisonError::into_inner);
        metrics.set_lost(lost);
        metrics.set_program_stats(&program_stats);
        if let Some(file) = &outputs.file {
            metrics.set_unwritten(file.inner().unwritten());
        }
    }
    let filters = &args.filters;
    if !(filters.pids.is_empty()
        && filters.ports.is_empty()
        && filters.netns.is_empty()
        && filters.cgroups.is_empty())
    {
        // What the filters kept out before it cost more than the check: a storm elsewhere.
        eprintln!(
            "rst-trace: {} events filtered out in the kernel",
            filtered_counter.total()?
        );
    }
    let totals = format!(
        "rst-trace: {reported} events reported, {lost} lost, {folded} folded into {folded_lines} lines"
    );
    match &outputs.file {
        Some(file) if file.inner().unwritten() > 0 => eprintln!(
            "{totals}, {} not written to {}",
            file.inner().unwritten(),
            file.inner().path().display()
        ),
        _ => eprintln!("{totals}"),
    }
    Ok(Summary {
        reported,
        lost,
        folded,
    })
}

/// How often the ring buffer is drained when the kernel has not woken us (see WAKEUP_BYTES in
/// the kernel programs): the most an event waits before it is printed.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// Records decoded before the events they make are written out (see `Pipeline::drain`).
const DRAIN_BATCH: usize = 256;

/// How often the kernel's folded counts are taken out: a folded line covers at most this long.
const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// How often listener queues and drop counters are sampled in every network namespace.
const LISTENER_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The outputs the flags ask for.
fn outputs(args: &TraceArgs) -> anyhow::Result<Outputs> {
    let stdout_is_terminal = io::stdout().is_terminal();
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stdout_is_terminal && std::env::var_os("NO_COLOR").is_none(),
    };
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let stdout = || -> Box<dyn io::Write> { Box::new(BufWriter::new(io::stdout())) };
    let stream = (!args.quiet && args.summary.is_none())
        .then(|| Sink::new(format, stdout()).with_color(color));
    let summary = args
        .summary
        .filter(|_| !args.quiet)
        .map(|_| SummaryView::new(stdout(), stdout_is_terminal));
    let file = match &args.output {
        Some(path) => Some(Sink::new(
            Format::Json,
            OutputFile::new(open_output(path)?, path.clone()),
        )),
        None => None,
    };
    let pcap = match &args.pcap {
        Some(path) => Some(PcapFile::create(path)?),
        None => None,
    };
    Ok(Outputs {
        stream,
        file,
        summary,
        pcap,
    })
}

/// Opens `--output` to append, creating it readable by root only. Refuses a symbolic link: a
/// user who can plant one where root writes would otherwise choose the file rst-trace appends
/// to (a script, say), with process names of their choosing inside.
fn open_output(path: &Path) -> anyhow::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "refusing to write --output to {}: it is a symbolic link; give the path of the \
                 file itself",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot open {} for --output: {error}", path.display()),
        })
}

/// Decode, attribute and filter: everything between the ring buffer and the outputs.
struct Pipeline<'a> {
    decoder: &'a Decoder,
    attributor: &'a mut Attributor,
    filter: &'a Filter,
    stacks: Option<StackReader>,
    outputs: &'a mut Outputs,
    metrics: Option<Arc<Mutex<Metrics>>>,
    /// Events written one by one so far; events written as folded lines, and those lines;
    /// `--count` (lines).
    reported: u64,
    folded: u64,
    folded_lines: u64,
    limit: Option<u64>,
}

impl Pipeline<'_> {
    /// Takes in what the ring buffer holds.
    /// Takes everything waiting in the ring buffer through the pipeline, a batch at a time:
    /// the buffer can hold thousands of records, and holding them all as events at once would
    /// cost more memory than the buffer itself. True when the trace should end.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<bool> {
        loop {
            let more = self.take(ring, DRAIN_BATCH);
            if self.release(false)? {
                return Ok(true);
            }
            if !more {
                return Ok(false);
            }
        }
    }

    /// Decodes and attributes up to `max` records; true when it stopped at `max`.
    fn take(&mut self, ring: &mut RingBuf<MapData>, max: usize) -> bool {
        for _ in 0..max {
            let Some(item) = ring.next() else {
                return false;
            };
            match self.decoder.decode(&item) {
                Ok(decoded) => {
                    let stack = self
                        .stacks
                        .as_mut()
                        .zip(decoded.stack_id)
                        .and_then(|(stacks, id)| stacks.read(id));
                    // Every event is attributed, even one filtered out later: pairing needs
                    // both ends.
                    self.attributor.push(decoded, stack);
                }
                Err(error) => log::warn!("skipped a record: {error:#}"),
            }
        }
        true
    }

    /// Writes the events attribution has finished (all of them with `flush`); returns whether
    /// the trace should end (`--count` reached, or the output went away).
    fn release(&mut self, flush: bool) -> anyhow::Result<bool> {
        for event in self.attributor.release(monotonic_ns(), flush) {
            if self.write(&event)? {
                return Ok(true);
            }
        }
        match self.outputs.flush() {
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(true),
            other => other.map(|()| false).context("writing events"),
        }
    }

    /// Decodes, attributes and writes the keys the kernel folded; true when the trace should
    /// end.
    fn write_folded(&mut self, samples: Vec<FoldedSample>) -> anyhow::Result<bool> {
        for sample in samples {
            let decoded = match self.decoder.decode(&sample.record) {
                Ok(decoded) => decoded,
                Err(error) => {
                    log::warn!("skipped a folded record: {error:#}");
                    continue;
                }
            };
            let clock = &self.decoder.clock;
            let folded = Folded {
                count: sample.count,
                first: clock.wall_time(sample.first_ns),
                last: clock.wall_time(sample.last_ns),
            };
            let event =
                self.attributor
                    .folded_event(decoded, folded, sample.service_local, sample.coarse);
            if self.write(&event)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Filters and writes one event; returns whether the trace should end.
    fn write(&mut self, event: &Event) -> anyhow::Result<bool> {
        if self.limit_reached() {
            return Ok(true);
        }
        if !self.filter.keeps(event) {
            return Ok(false);
        }
        if let Some(metrics) = &self.metrics {
            metrics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(event);
        }
        match self.outputs.write(event) {
            Ok(()) => match event.folded {
                Some(folded) => {
                    self.folded += folded.count;
                    self.folded_lines += 1;
                }
                None => self.reported += 1,
            },
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(true),
            Err(error) => return Err(error).context("writing an event"),
        }
        Ok(self.limit_reached())
    }

    fn limit_reached(&self) -> bool {
        self.limit
            .is_some_and(|limit| self.reported + self.folded_lines >= limit)
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel's timestamps.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(u64::MAX)
}

/// Registers a map's file descriptor with tokio.
fn poll<T: std::os::fd::AsRawFd>(map: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: ring buffer maps own their file descriptor and keep it open until they are
    // dropped, which happens only with the AsyncFd that owns them.
    unsafe { AsyncFd::register(map) }.map_err(io::Error::from)
}

fn ignore_broken_pipe(error: io::Error) -> io::Result<()> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(error)
    }
}

/// `rst-trace check`: each event source and whether it can be used, proven by loading and
/// attaching the programs. Returns whether tracing would work.
pub fn check(out: &mut impl io::Write) -> anyhow::Result<bool> {
    writeln!(out, "kernel: {}", crate::sources::kernel_release())?;
    let support = match probe_kernel() {
        Ok(support) => support,
        Err(error) => {
            writeln!(out, "rst-trace cannot trace on this host: {error:#}")?;
            return Ok(false);
        }
    };
    writeln!(out, "privileges: ok")?;
    writeln!(
        out,
        "privileges while tracing: {}",
        privileges::describe_kept()
    )?;
    let mount = match &support.tracefs {
        Tracefs::Mounted(_) => "mounted",
        Tracefs::MountedByUs(_) => "was not mounted; mounted it now",
    };
    writeln!(
        out,
        "tracefs: {} ({mount})",
        support.tracefs.path().display()
    )?;
    writeln!(
        out,
        "BTF: {} (struct sock: skc_state at {}, skc_cookie at {}, skc_net at {})",
        crate::kernel_btf::VMLINUX_BTF,
        support.offsets.skc_state,
        support.offsets.skc_cookie,
        support.offsets.skc_net
    )?;
    for missing in &support.missing {
        writeln!(out, "    not in BTF: {missing}")?;
    }
    writeln!(
        out,
        "names from the running kernel: {} reset reasons, {} TCP states",
        support.names.reset_reasons.len(),
        support.names.tcp_states.len()
    )?;
    let options = LoadOptions {
        pids: Vec::new(),
        ports: Vec::new(),
        netns: Vec::new(),
        cgroups: Vec::new(),
        ring_buffer_bytes: 4096,
        stacks: false,
        classic_tracepoints: false,
        fold_after: crate::fold::DEFAULT_FOLD_AFTER,
        pcap: false,
    };
    let tracer = Tracer::load(&support, &options);
    let (attached, failed, hooks) = match &tracer {
        Ok(tracer) => (
            tracer.attached.clone(),
            tracer.failed.clone(),
            tracer.hooks.clone(),
        ),
        Err(error) => {
            writeln!(out, "loading the kernel programs failed: {error:#}")?;
            (Vec::new(), Vec::new(), Vec::new())
        }
    };
    for source in &support.sources {
        let name = source.name();
        let hook = hooks.iter().find(|(n, _)| *n == name).map(|(_, hook)| hook);
        let status = if attached.contains(&name) {
            match hook {
                Some(Hook::Btf) => "loaded and attached (BTF tracepoint)".to_string(),
                Some(Hook::Classic { why }) => format!(
                    "loaded and attached (classic tracepoint; the BTF tracepoint could not be used: {why})"
                ),
                None => "loaded and attached".to_string(),
            }
        } else if let Some((_, why)) = failed.iter().find(|(n, _)| *n == name) {
            format!("cannot be used: {why}")
        } else {
            "not tried".to_string()
        };
        writeln!(out, "{source}\n    {status}")?;
    }
    let listeners = match &tracer {
        Ok(tracer) => match &tracer.listener_iter {
            Ok(()) => "loaded, and a pass read every listener".to_string(),
            Err(why) => format!(
                "cannot be used: {why}; listener drops come from entering each network \
                 namespace every second instead, which needs CAP_SYS_ADMIN"
            ),
        },
        Err(_) => "not tried".to_string(),
    };
    writeln!(
        out,
        "iter:task_file (SYNs dropped at full accept and SYN queues, per listener, in every \
         network namespace)\n    {listeners}"
    )?;
    let map = match &tracer {
        Ok(tracer) => match (&tracer.listener_iter, &tracer.listener_map) {
            (Ok(()), Ok(_)) => {
                "loaded, and a pass read the listener map: after the first pass over every open \
                 file, each second's pass walks only the listeners"
                    .to_string()
            }
            (Ok(()), Err(why)) => format!(
                "cannot be used: {why}; every second's pass walks every open file on the host \
                 instead (it costs more with many open files)"
            ),
            (Err(_), _) => "not tried (the listener iterator is off)".to_string(),
        },
        Err(_) => "not tried".to_string(),
    };
    writeln!(
        out,
        "iter:bpf_map_elem (the listener map, walked each second in place of every open \
         file)\n    {map}"
    )?;
    let limits = privileges::proc_limits();
    if limits.is_empty() {
        writeln!(
            out,
            "/proc: every process's namespaces and open files can be read"
        )?;
    }
    for limit in limits {
        writeln!(out, "/proc: {limit}")?;
    }
    Ok(tracer.is_ok())
}

/// `rst-trace backlog`.
pub fn backlog(args: &BacklogArgs) -> anyhow::Result<()> {
    privileges::ensure_can_trace()?;
    let filter = Filter::from_args(&args.filters);
    let names = ContainerNames::new(args.runtimes.roots()?);
    let support = KernelSupport::probe()?;
    let source = match crate::loader::ListenerIterator::load(&support) {
        Ok(iterator) => backlog::ListenerSource::Iterator(Box::new(iterator), Default::default()),
        Err(error) => {
            eprintln!("rst-trace: note: {error:#}; entering each network namespace instead");
            backlog::ListenerSource::Sampling(Default::default())
        }
    };
    let mut out = io::stdout().lock();
    match backlog::run(
        source,
        args.interval,
        args.duration,
        args.json,
        &filter,
        names,
        &mut out,
    ) {
        Err(error)
            if error
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// `rst-trace explain [CAUSE]`.
pub fn explain(cause: Option<&str>, out: &mut impl io::Write) -> anyhow::Result<bool> {
    let Some(id) = cause else {
        for cause in Cause::ALL {
            let meaning = cause.explain().meaning;
            let first = meaning
                .split(". ")
                .next()
                .unwrap_or(meaning)
                .trim_end_matches('.');
            writeln!(out, "{:<24} {first}", cause.id())?;
        }
        return Ok(true);
    };
    let Some(cause) = Cause::from_id(id) else {
        let ids: Vec<&str> = Cause::ALL.iter().map(|c| c.id()).collect();
        bail!("`{id}` is not a cause; causes are: {}", ids.join(", "));
    };
    writeln!(out, "{cause}\n{}", cause.explain())?;
    Ok(true)
}
