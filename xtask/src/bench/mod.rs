//! `cargo xtask bench`: what rst-trace costs, measured against no tracer, a bpftrace one-liner,
//! `tcpdump -w` and a minimal reference program, under reset storms, a queue overflow and
//! ordinary traffic; written to BENCHMARKS.md with a chart of the throughput ratios.
//!
//! Each workload runs under every tracer in turn, interleaved (none, json, summary, ..., then
//! again), so that drift on the machine spreads over all of them; medians are reported. Around
//! each run the bench reads the kernel's own counters (TcpOutRsts, TcpExtListenOverflows) and,
//! with `kernel.bpf_stats_enabled=1`, the run time of every BPF program the tracer holds.
//!
//! `--quick` is CI's smoke run: one short repetition of everything, checked for having run and
//! produced output, with the report written to a temporary directory and no timing judged.

mod capture;
mod kernel;
mod namespaces;
mod needles;
mod report;
mod tracers;
mod workloads;

pub use needles::NeedleKind;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    capture::Matched,
    kernel::{BpfStats, ProgramCounters, TcpCounters},
    tracers::{Finished, Mode, Setup},
    workloads::{KernelCount, Workload},
};

/// Where the full run's report goes, relative to the workspace root.
const REPORT: &str = "BENCHMARKS.md";
const CHART: &str = "docs/benchmark-ratios.png";

/// How much work a bench does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub quick: bool,
    pub repetitions: usize,
    pub duration: Duration,
    /// Load generator threads (and echo connections).
    pub threads: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            quick,
            // Five short passes rather than three long ones: a median of five shrugs off two
            // passes disturbed by other work on the machine.
            repetitions: if quick { 1 } else { 5 },
            duration: Duration::from_secs(if quick { 1 } else { 2 }),
            // Two per core: enough to keep every core busy while some wait in the kernel.
            threads: 2 * cores,
        }
    }
}

/// One workload under one tracer, once.
pub struct Run {
    pub workload: Workload,
    pub mode: Mode,
    /// Which pass of the interleaved order (the no-tracer run of the same pass is its baseline).
    pub repetition: usize,
    pub result: Result<Measured, String>,
}

/// What a run measured.
pub struct Measured {
    /// Workload operations per second (hping3: resets the kernel sent per second).
    pub throughput: f64,
    /// How long the load ran.
    pub seconds: f64,
    /// Resets the kernel sent (TcpOutRsts) and listen overflows it counted during the run.
    pub out_rsts: u64,
    pub listen_overflows: u64,
    /// TcpOutRsts minus the resets the workload itself made, where it knows (other processes on
    /// the host, or the bench's own teardown).
    pub background_resets: Option<i64>,
    pub tracer: Option<TracerFigures>,
    /// StormNeedles: tcpdump's capture matched against the needles' records and (JSON modes)
    /// rst-trace's events.
    pub matched: Option<Matched>,
    /// StormNeedles: packets tcpdump says the kernel dropped (its capture is complete at 0).
    pub tcpdump_dropped: Option<u64>,
    /// Ways the run failed to show that the harness works (checked in every mode).
    pub problems: Vec<String>,
}

/// What a tracer did during a run.
pub struct TracerFigures {
    pub startup: Duration,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    /// Events (or drops) the tracer delivered, and the kernel's count of what it should have.
    pub delivered: Option<u64>,
    pub expected: Option<u64>,
    /// Events the tracer itself says it lost (rst-trace: ring buffer full; tcpdump: dropped by
    /// the kernel).
    pub lost: Option<u64>,
    pub programs: Vec<ProgramRun>,
}

/// One BPF program's work during a run.
pub struct ProgramRun {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

/// Set by SIGINT: the bench stops between runs and still restores the sysctl.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// A workload that can run alone (`cargo xtask bench --workload ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Many network namespaces at rest, then an overflow in the last (namespaces.rs).
    Namespaces,
}

pub fn run(
    root: &Path,
    quick: bool,
    only: Option<Only>,
    namespace_counts: Option<Vec<usize>>,
) -> anyhow::Result<()> {
    let env = crate::setup::run(crate::setup::Purpose::Bench)?;
    crate::require_root(
        "the bench loads BPF programs, sets kernel.bpf_stats_enabled and sends raw SYNs",
    )?;
    crate::cargo(
        root,
        &env,
        &["build", "--release", "--package", "rst-trace"],
    )?;
    let rst_trace = root.join("target/release/rst-trace");
    let namespace_counts = namespace_counts.unwrap_or_else(|| {
        if quick {
            vec![0, 5]
        } else {
            namespaces::DEFAULT_COUNTS.to_vec()
        }
    });
    let namespace_measure = Duration::from_secs(if quick { 2 } else { 10 });
    if only == Some(Only::Namespaces) {
        // Alone: the section is printed and written beside the quick report, never over
        // BENCHMARKS.md (which holds a whole run).
        let figures = namespaces::run(&rst_trace, &namespace_counts, namespace_measure)?;
        let text = namespaces::markdown(&figures);
        let dir = std::env::temp_dir().join("rst-trace-bench-quick");
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let path = dir.join("namespaces.md");
        fs::write(&path, &text).with_context(|| format!("could not write {}", path.display()))?;
        println!("{text}");
        eprintln!("bench: wrote {}", path.display());
        return Ok(());
    }
    if !workloads::hping3_present() {
        bail!("hping3 is missing: `cargo xtask setup` installs it");
    }
    let plan = Plan::new(quick);
    let scratch = std::env::temp_dir().join(format!("rst-trace-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch)
        .with_context(|| format!("could not create {}", scratch.display()))?;
    let port = workloads::free_port(20001, &[])?;
    let metrics_port = workloads::free_port(port + 1, &[port])?;
    let mut taken = vec![port, metrics_port];
    let mut needle_ports = [0u16; 4];
    for needle_port in &mut needle_ports {
        let from = taken.iter().copied().max().unwrap_or(port) + 1;
        *needle_port = workloads::free_port(from, &taken)?;
        taken.push(*needle_port);
    }
    let setup = Setup {
        rst_trace,
        port,
        metrics_port,
        needle_ports,
        xtask: std::env::current_exe().context("could not find the xtask binary's path")?,
        scratch: scratch.clone(),
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        )
    };

    let machine = report::Machine::describe(root);
    let started = Instant::now();
    let runs = {
        let stats = BpfStats::enable()?;
        let previous = stats.previous().to_string();
        eprintln!(
            "bench: kernel.bpf_stats_enabled=1 for the bench (was {previous}; put back at the end)"
        );
        run_all(&plan, &setup)
    };
    let namespaces = if INTERRUPTED.load(Ordering::Relaxed) {
        Err("interrupted".to_string())
    } else {
        namespaces::run(&setup.rst_trace, &namespace_counts, namespace_measure)
            .map_err(|error| format!("{error:#}"))
    };
    let _ = fs::remove_dir_all(&scratch);
    let runs = runs?;
    let elapsed = started.elapsed();

    let (report_path, chart_path) = if quick {
        let dir = std::env::temp_dir().join("rst-trace-bench-quick");
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        (dir.join(REPORT), dir.join("benchmark-ratios.png"))
    } else {
        (root.join(REPORT), root.join(CHART))
    };
    let context = report::Context {
        plan,
        setup: &setup,
        machine,
        elapsed,
        namespaces: namespaces.as_ref().ok().cloned(),
    };
    report::write(&runs, &context, &report_path, &chart_path)?;
    eprintln!(
        "bench: wrote {} and {}",
        report_path.display(),
        chart_path.display()
    );

    let problems: Vec<String> = runs
        .iter()
        .flat_map(|run| {
            let name = format!("{} / {}", run.workload.id(), run.mode.id());
            match &run.result {
                Err(error) => vec![format!("{name}: {error}")],
                Ok(measured) => measured
                    .problems
                    .iter()
                    .map(|problem| format!("{name}: {problem}"))
                    .collect(),
            }
        })
        .chain(namespaces.err().map(|error| format!("namespaces: {error}")))
        .collect();
    if !problems.is_empty() {
        bail!(
            "the bench did not run as it should:\n  {}",
            problems.join("\n  ")
        );
    }
    if quick {
        eprintln!("bench: --quick: every workload ran under every tracer and each produced output");
    }
    Ok(())
}

fn run_all(plan: &Plan, setup: &Setup) -> anyhow::Result<Vec<Run>> {
    let total: usize = Workload::ALL
        .iter()
        .map(|w| Mode::ALL.iter().filter(|m| m.applies_to(*w)).count())
        .sum::<usize>()
        * plan.repetitions;
    eprintln!(
        "bench: {total} runs of {} s ({} repetition(s), modes interleaved), about {} minutes",
        plan.duration.as_secs(),
        plan.repetitions,
        (total as u64 * (plan.duration.as_secs() + 2)).div_ceil(60)
    );
    let mut runs = Vec::new();
    for workload in Workload::ALL {
        for repetition in 0..plan.repetitions {
            for mode in Mode::ALL.into_iter().filter(|m| m.applies_to(workload)) {
                if INTERRUPTED.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                let result = run_one(workload, mode, plan, setup).map_err(|e| format!("{e:#}"));
                match &result {
                    Ok(measured) => eprintln!(
                        "bench: {:<8} {}/{} {:<9} {}",
                        workload.id(),
                        repetition + 1,
                        plan.repetitions,
                        mode.id(),
                        report::one_line(workload, measured)
                    ),
                    Err(error) => eprintln!(
                        "bench: {:<8} {}/{} {:<9} FAILED: {error}",
                        workload.id(),
                        repetition + 1,
                        plan.repetitions,
                        mode.id()
                    ),
                }
                runs.push(Run {
                    workload,
                    mode,
                    repetition,
                    result,
                });
            }
        }
    }
    Ok(runs)
}

/// How long a tracer gets after the load stops to deliver what is still queued. rst-trace
/// samples listener counters once a second: the overflow workload waits for one more sample.
fn settle_time(workload: Workload) -> Duration {
    match workload {
        Workload::AcceptOverflow => Duration::from_millis(1500),
        _ => Duration::from_millis(300),
    }
}

/// `cargo xtask bench-needle`: one needle of the StormNeedles workload, in its own process.
pub fn needle(kind: NeedleKind, port: u16, duration: Duration, out: &Path) -> anyhow::Result<()> {
    needles::run(kind, port, duration, out)
}

fn run_one(workload: Workload, mode: Mode, plan: &Plan, setup: &Setup) -> anyhow::Result<Measured> {
    let tracer = tracers::start(mode, setup, workload)?;
    let programs_before = match &tracer {
        Some(tracer) => kernel::programs_of(tracer.pid())?,
        None => Vec::new(),
    };
    let before = TcpCounters::read()?;
    let mut outcome = match workload.run(setup, plan.threads, plan.duration) {
        Ok(outcome) => outcome,
        Err(error) => {
            if let Some(tracer) = tracer {
                let _ = tracer.stop();
            }
            return Err(error.context(format!("the {} workload failed", workload.id())));
        }
    };
    if tracer.is_some() {
        thread::sleep(settle_time(workload));
    }
    let after = TcpCounters::read()?;
    let out_rsts = after.delta(&before, "Tcp:OutRsts");
    let listen_overflows = after.delta(&before, "TcpExt:ListenOverflows");
    let elapsed = outcome.elapsed.as_secs_f64().max(1e-3);
    let throughput = match outcome.ops {
        Some(ops) => ops as f64 / elapsed,
        None => out_rsts as f64 / elapsed,
    };
    // Each refused connect and each aborted connection is exactly one reset sent.
    // The needles' resets are one each too.
    let needle_resets = outcome
        .capture
        .as_ref()
        .map_or(0, |capture| capture.records.len() as i64);
    let background_resets = match workload {
        Workload::RefusedStorm | Workload::LingerStorm | Workload::StormNeedles => outcome
            .ops
            .map(|ops| i64::try_from(out_rsts).unwrap_or(i64::MAX) - ops as i64 - needle_resets),
        _ => None,
    };
    let mut problems = Vec::new();
    if throughput <= 0.0 {
        problems.push("the workload completed no operations".to_string());
    }
    let capture = outcome.capture.take();
    let tcpdump_dropped = capture.as_ref().map(|capture| capture.tcpdump_dropped);
    let Some(tracer) = tracer else {
        let matched = match &capture {
            Some(capture) => Some(check_capture(capture, None, &mut problems)?),
            None => None,
        };
        return Ok(Measured {
            throughput,
            seconds: elapsed,
            out_rsts,
            listen_overflows,
            background_resets,
            tracer: None,
            matched,
            tcpdump_dropped,
            problems,
        });
    };
    let programs_after = kernel::programs_of(tracer.pid())?;
    let names = kernel::program_names().unwrap_or_default();
    let metrics = (mode.folding() == Mode::Metrics).then(|| tracers::scrape_metrics(setup));
    let finished = tracer.stop()?;
    // The overflowing listener and its connections go only now, after the tracer's last look.
    drop(outcome.keep);

    let programs = program_deltas(&programs_before, &programs_after, &names);
    let counts = Counts {
        out_rsts,
        listen_overflows,
        received_resets: programs
            .iter()
            .filter(|p| p.name.starts_with("tcp_receive_re"))
            .map(|p| p.runs)
            .sum(),
    };
    let figures = tracer_figures(workload, mode, &finished, metrics, counts, &mut problems);
    let matched = match &capture {
        Some(capture) => {
            let json = mode.folding() == Mode::Json;
            let stdout = json.then_some(finished.stdout.as_str());
            Some(check_capture(capture, stdout, &mut problems)?)
        }
        None => None,
    };
    Ok(Measured {
        throughput,
        seconds: elapsed,
        out_rsts,
        listen_overflows,
        background_resets,
        tracer: Some(TracerFigures {
            programs,
            ..figures
        }),
        matched,
        tcpdump_dropped,
        problems,
    })
}

/// Matches the StormNeedles capture against the needles' records and rst-trace's JSON (when
/// given), and notes where the run did not show that the harness works: a needle that made
/// no resets, a needle's reset missing from the wire, JSON that matched nothing. Whether
/// rst-trace met its targets is the report's business, not a problem of the run.
fn check_capture(
    capture: &workloads::Capture,
    json: Option<&str>,
    problems: &mut Vec<String>,
) -> anyhow::Result<Matched> {
    let wire = capture::read_pcap(&capture.pcap);
    let _ = fs::remove_file(&capture.pcap);
    let wire = wire?;
    let events = json.map(capture::parse_events).transpose()?;
    let matched = capture::matched(&wire, &capture.records, events.as_deref());
    if wire.is_empty() {
        problems.push("tcpdump captured no resets".to_string());
    }
    for kind in NeedleKind::ALL {
        let figures = matched.kinds.get(&kind).copied().unwrap_or_default();
        if figures.made == 0 {
            problems.push(format!("the {kind} needle made no resets"));
        } else if capture.tcpdump_dropped == 0 && figures.on_wire != figures.made {
            problems.push(format!(
                "the {kind} needle made {} resets, tcpdump saw {} of them",
                figures.made, figures.on_wire
            ));
        }
    }
    if matched.traced && matched.sent_accounted == 0 {
        problems.push("rst-trace's JSON accounted for none of the resets on the wire".to_string());
    }
    let rare = matched.rare();
    if matched.traced && rare.made > 0 && rare.sent_own + rare.received_own == 0 {
        problems.push("rst-trace's JSON has none of the needles' resets".to_string());
    }
    Ok(matched)
}

fn program_deltas(
    before: &[ProgramCounters],
    after: &[ProgramCounters],
    names: &std::collections::HashMap<u32, String>,
) -> Vec<ProgramRun> {
    after
        .iter()
        .map(|now| {
            let then = before
                .iter()
                .find(|p| p.id == now.id)
                .copied()
                .unwrap_or_default();
            ProgramRun {
                name: names
                    .get(&now.id)
                    .cloned()
                    .unwrap_or_else(|| format!("id {}", now.id)),
                runs: now.run_cnt.saturating_sub(then.run_cnt),
                run_time_ns: now.run_time_ns.saturating_sub(then.run_time_ns),
            }
        })
        .collect()
}

/// The kernel's counts during a run.
#[derive(Clone, Copy)]
struct Counts {
    out_rsts: u64,
    listen_overflows: u64,
    /// Runs of rst-trace's tcp_receive_reset program: the kernel's count of resets received
    /// (the tracepoint fires once for each, whether or not the ring buffer has room).
    received_resets: u64,
}

/// What the tracer delivered against the kernel's count, and whether it showed it worked.
fn tracer_figures(
    workload: Workload,
    mode: Mode,
    finished: &Finished,
    metrics: Option<anyhow::Result<String>>,
    counts: Counts,
    problems: &mut Vec<String>,
) -> TracerFigures {
    let mut figures = TracerFigures {
        startup: finished.startup,
        cpu_seconds: finished.cpu_seconds,
        peak_rss_kib: finished.peak_rss_kib,
        delivered: None,
        expected: None,
        lost: None,
        programs: Vec::new(),
    };
    if !finished.exited_cleanly {
        problems.push(format!(
            "{} ended with {} after SIGINT: {}",
            mode.label(),
            finished.exit,
            finished.stderr.join(" | ")
        ));
    }
    let resets = workload.kernel_count() == KernelCount::Resets;
    let overflow = workload.kernel_count() == KernelCount::ListenOverflows;
    let mut require = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_string());
        }
    };
    match mode {
        Mode::NoTracer => {}
        Mode::Json
        | Mode::Summary
        | Mode::Metrics
        | Mode::JsonNoFold
        | Mode::SummaryNoFold
        | Mode::MetricsNoFold => {
            let totals = tracers::rst_trace_totals(&finished.stderr);
            require(totals.is_some(), "rst-trace printed no totals at exit");
            let (reported, lost, folded) = totals.unwrap_or_default();
            figures.lost = Some(lost);
            if resets {
                // Events written one by one, and those the kernel counted into folded lines.
                figures.delivered = Some(reported + folded);
                figures.expected = Some(counts.out_rsts + counts.received_resets);
                require(reported > 0, "rst-trace reported no resets");
            }
            if overflow {
                // JSON events stand for several drops each: only CPU per drop compares.
                figures.expected = Some(counts.listen_overflows);
            }
            if mode.folding() == Mode::Summary {
                let table = tracers::summary_totals(&finished.stdout);
                require(table.is_some(), "--summary printed no totals table");
                if overflow {
                    figures.delivered = table.map(|[_, _, drops]| drops);
                    require(
                        figures.delivered.unwrap_or(0) > 0,
                        "--summary counted no queue drops",
                    );
                }
            }
            if mode.folding() == Mode::Metrics {
                match metrics {
                    Some(Ok(text)) => {
                        require(
                            text.contains("rst_trace_lost_events_total"),
                            "the metrics have no rst_trace_lost_events_total",
                        );
                        if resets {
                            require(
                                tracers::metric_sum(&text, "rst_trace_resets_total", "sent") > 0,
                                "the metrics counted no resets sent",
                            );
                        }
                        if overflow {
                            let drops =
                                tracers::metric_sum(&text, "rst_trace_queue_drops_total", "");
                            figures.delivered = Some(drops);
                            require(drops > 0, "the metrics counted no queue drops");
                        }
                    }
                    Some(Err(error)) => problems.push(format!("{error:#}")),
                    None => {}
                }
            }
        }
        Mode::Reference => {
            let records = tracers::reference_records(&finished.stderr);
            require(
                records.is_some_and(|n| n > 0),
                "the reference program delivered no records",
            );
            figures.delivered = records;
            figures.expected = Some(counts.out_rsts);
        }
        Mode::Bpftrace => {
            let total = tracers::bpftrace_total(&finished.stdout);
            if resets {
                require(total.is_some(), "bpftrace printed no counts");
                figures.delivered = total;
                figures.expected = Some(counts.out_rsts);
            }
        }
        Mode::Tcpdump => {
            let totals = tracers::tcpdump_totals(&finished.stderr);
            require(totals.is_some(), "tcpdump printed no statistics");
            if let Some((captured, dropped)) = totals {
                figures.lost = Some(dropped);
                if resets {
                    figures.delivered = Some(captured);
                    figures.expected = Some(counts.out_rsts);
                    require(
                        captured > 0 && finished.pcap_bytes > 24,
                        "tcpdump captured no resets",
                    );
                }
            }
        }
    }
    figures
}

/// Output of a short command, trimmed; None when it cannot run.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Some(String::from_utf8_lossy(&text).trim().to_string())
}

/// Relative path from the report to the chart, for the Markdown image link.
fn chart_link(report: &Path, chart: &Path) -> PathBuf {
    match report.parent().and_then(|dir| chart.strip_prefix(dir).ok()) {
        Some(relative) => relative.to_path_buf(),
        None => chart.to_path_buf(),
    }
}
