//! Loads the embedded kernel programs with this kernel's offsets and attaches every usable source.

use std::{collections::HashSet, os::fd::AsFd as _};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, CgroupArray, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap,
    },
    programs::{BtfTracePoint, KProbe, TracePoint},
};
use rst_trace_common::{
    KernelOffsets, ListenerHistory, ListenerKey, MAX_CGROUP_FILTER, MAX_NETNS_FILTER,
    MAX_PID_FILTER, MAX_PORT_FILTER,
};

use crate::{
    fold::{EpochMaps, FoldReader},
    listener_iter,
    programs::BtfKernel,
    sources::{KernelSupport, Role, Source},
};

/// The kernel programs, built by build.rs and embedded so that the binary is one file.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rst-trace"));

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Keep only these processes (`--pid`), filtered in the kernel.
    pub pids: Vec<u32>,
    /// Keep only events where either end uses one of these ports (`--port`), in the kernel.
    pub ports: Vec<u16>,
    /// Keep only events in these network namespaces (`--netns`), in the kernel.
    pub netns: Vec<u64>,
    /// Keep only events of processes in these cgroups or below (`--cgroup`, paths from the
    /// cgroup2 root), in the kernel where every one of them exists at start-up.
    pub cgroups: Vec<String>,
    pub ring_buffer_bytes: u32,
    /// Record kernel stacks (`--stack`).
    pub stacks: bool,
    /// Never use the BTF tracepoint programs (`--classic-tracepoints`).
    pub classic_tracepoints: bool,
    /// Events of one key sent per second before the rest are counted (`--fold-after`; 0:
    /// never fold).
    pub fold_after: u32,
    /// Copy the packet behind each reset sent and each queue drop (`--pcap`).
    pub pcap: bool,
}

/// Forwards the kernel programs' aya-log messages to the `log` crate.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Loaded and attached programs. Dropping it detaches them.
pub struct Tracer {
    ebpf: Ebpf,
    logger: Option<KernelLogger>,
    /// Sources attached, as `system:event`.
    pub attached: Vec<String>,
    /// Sources that could not be attached, with why.
    pub failed: Vec<(String, String)>,
    /// How each attached tracepoint that has a BTF program is served: by that program (fields
    /// read with plain loads), or by the classic one and why the BTF program was not used.
    pub hooks: Vec<(String, Hook)>,
    /// Whether the listener iterator loaded, or why not (then listener drops come from
    /// sampling each network namespace).
    pub listener_iter: Result<(), String>,
    /// Passes over the kernel's listener map after the first (see [`crate::listener_iter`]), or
    /// why every pass walks the open files instead.
    pub listener_map: Result<listener_iter::MapPasses, String>,
    /// Whether the first pass after attaching (over every open file) has run.
    listeners_seeded: bool,
}

/// Which program serves a reset tracepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Btf,
    Classic { why: String },
}

impl Tracer {
    pub fn load(support: &KernelSupport, options: &LoadOptions) -> anyhow::Result<Self> {
        if options.pids.len() > MAX_PID_FILTER as usize {
            bail!("at most {MAX_PID_FILTER} --pid filters are supported");
        }
        if options.ports.len() > MAX_PORT_FILTER as usize {
            bail!("at most {MAX_PORT_FILTER} --port filters are supported");
        }
        if options.netns.len() > MAX_NETNS_FILTER as usize {
            bail!("at most {MAX_NETNS_FILTER} --netns filters are supported");
        }
        let netns = options
            .netns
            .iter()
            .map(|&inode| {
                u32::try_from(inode).map_err(|_| {
                    anyhow!(
                        "--netns {inode} is not a network namespace inode (they fit in 32 bits; \
                         see readlink /proc/PID/ns/net)"
                    )
                })
            })
            .collect::<anyhow::Result<Vec<u32>>>()?;
        if options.cgroups.len() > MAX_CGROUP_FILTER as usize {
            bail!("at most {MAX_CGROUP_FILTER} --cgroup filters are supported");
        }
        let cgroup_dirs = match cgroup_directories(&options.cgroups) {
            Ok(dirs) => dirs,
            Err(why) => {
                eprintln!("rst-trace: --cgroup is applied in userspace only: {why}");
                Vec::new()
            }
        };
        let filter_by_cgroup = cgroup_dirs.len() as u32;
        raise_memlock_limit(support);
        let filter_by_port = u8::from(!options.ports.is_empty());
        let filter_by_netns = u8::from(!netns.is_empty());
        let filter_by_pid = u8::from(!options.pids.is_empty());
        let record_stacks = u8::from(options.stacks);
        let pcap = u8::from(options.pcap);
        // Wake userspace when the data waiting crosses an eighth of the ring buffer (it also
        // drains on a timer).
        let wakeup_bytes = options.ring_buffer_bytes / 8;
        let reason_arg = u8::from(
            support
                .send_reset
                .as_ref()
                .is_some_and(|layout| layout.reason.is_some()),
        );
        let cookie_helper = u8::from(support.socket_cookie_helper);
        let fold_after = options.fold_after;
        let coarse_after = crate::fold::COARSE_AFTER;
        let (ephemeral_low, ephemeral_high) = crate::event::ephemeral_ports();
        let mut ebpf = EbpfLoader::new()
            .override_global("FOLD_AFTER", &fold_after, true)
            .override_global("COARSE_AFTER", &coarse_after, true)
            .override_global("EPHEMERAL_LOW", &ephemeral_low, true)
            .override_global("EPHEMERAL_HIGH", &ephemeral_high, true)
            .override_global("SEND_RESET_REASON_ARG", &reason_arg, true)
            .override_global("SOCKET_COOKIE_HELPER", &cookie_helper, true)
            .override_global("FILTER_BY_PID", &filter_by_pid, true)
            .override_global("FILTER_BY_PORT", &filter_by_port, true)
            .override_global("FILTER_BY_NETNS", &filter_by_netns, true)
            .override_global("FILTER_BY_CGROUP", &filter_by_cgroup, true)
            .override_global("RECORD_STACKS", &record_stacks, true)
            .override_global("PCAP", &pcap, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("OFFSETS", &support.offsets, true)
            .override_global("QUEUE_DROP_REASONS", &support.queue_drop_reasons, true)
            .map_max_entries("EVENTS", options.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .context("the kernel refused rst-trace's BPF maps or programs")?;
        // Must exist before the programs load: it owns the log map they write to.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        // The BTF tracepoints' attach targets. Parsed again rather than shared with the loader
        // above (which parses its own and has dropped it by now): two copies at once would
        // double the start-up peak of resident memory.
        let btf = aya::Btf::from_sys_fs().ok();

        if filter_by_pid != 0 {
            let mut pids: HashMap<_, u32, u8> = HashMap::try_from(
                ebpf.map_mut("PIDS")
                    .ok_or_else(|| anyhow!("PIDS map missing from the object"))?,
            )?;
            for pid in &options.pids {
                pids.insert(pid, 1, 0).context("filling the --pid filter")?;
            }
        }

        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(
            ebpf.map_mut("PORTS")
                .ok_or_else(|| anyhow!("PORTS map missing from the object"))?,
        )?;
        for port in &options.ports {
            ports
                .insert(port, 1, 0)
                .context("filling the --port filter")?;
        }
        let mut namespaces: HashMap<_, u32, u8> = HashMap::try_from(
            ebpf.map_mut("NETNS")
                .ok_or_else(|| anyhow!("NETNS map missing from the object"))?,
        )?;
        for inode in &netns {
            namespaces
                .insert(inode, 1, 0)
                .context("filling the --netns filter")?;
        }

        if !cgroup_dirs.is_empty() {
            let mut cgroups = CgroupArray::try_from(
                ebpf.map_mut("CGROUPS")
                    .ok_or_else(|| anyhow!("CGROUPS map missing from the object"))?,
            )?;
            for (slot, (path, dir)) in options.cgroups.iter().zip(&cgroup_dirs).enumerate() {
                cgroups
                    .set(slot as u32, dir.as_fd(), 0)
                    .with_context(|| format!("filling the --cgroup filter with {path}"))?;
            }
        }

        let listener_iter = load_listener_iter(&mut ebpf, btf.as_ref(), &support.offsets);
        let listener_map = match (&listener_iter, btf.as_ref()) {
            (Ok(()), Some(btf)) => listener_iter::MapPasses::load(&mut ebpf, btf)
                .and_then(|passes| {
                    // One pass proves the kernel runs it.
                    listener_iter::read_pass(passes.start_pass()?)?;
                    Ok(passes)
                })
                .map_err(|error| format!("{error:#}")),
            (Err(why), _) => Err(why.clone()),
            (Ok(()), None) => Err("the kernel has no BTF at /sys/kernel/btf/vmlinux".to_string()),
        };
        let mut attached = Vec::new();
        let mut failed = Vec::new();
        let mut hooks = Vec::new();
        let mut loaded = HashSet::new();
        for source in &support.sources {
            if let Err(why) = &source.status {
                failed.push((source.name(), why.clone()));
                continue;
            }
            let twin = source.btf_twin.filter(|_| !options.classic_tracepoints);
            let kernel = BtfKernel {
                offsets: &support.offsets,
                socket_cookie_helper: support.socket_cookie_helper,
            };
            if let Some(twin) = twin
                && let Err(why) = (twin.usable)(&kernel)
            {
                hooks.push((
                    source.name(),
                    Hook::Classic {
                        why: why.to_string(),
                    },
                ));
            } else if let Some(twin) = twin {
                match attach_btf(&mut ebpf, btf.as_ref(), twin.program, source.event) {
                    Ok(()) => {
                        attached.push(source.name());
                        hooks.push((source.name(), Hook::Btf));
                        continue;
                    }
                    Err(error) => {
                        let why = format!("{error:#}");
                        hooks.push((source.name(), Hook::Classic { why }));
                    }
                }
            }
            match attach(&mut ebpf, source, &mut loaded) {
                Ok(()) => attached.push(source.name()),
                Err(error) => failed.push((source.name(), format!("{error:#}"))),
            }
        }
        let reports_resets = |name: &String| {
            support.sources.iter().any(|s| {
                s.name() == *name && matches!(s.role, Role::ResetSent | Role::ResetReceived)
            })
        };
        if !attached.iter().any(reports_resets) {
            let reasons: Vec<String> = failed
                .iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect();
            bail!(
                "no reset tracepoint could be attached ({})",
                reasons.join("; ")
            );
        }
        Ok(Self {
            ebpf,
            logger,
            attached,
            failed,
            hooks,
            listener_iter,
            listener_map,
            listeners_seeded: false,
        })
    }

    /// Starts a pass of the listener iterator (see [`crate::listener_iter`]): the first, once
    /// the owner programs are attached, over every open file (it puts the listeners that were
    /// already there in the kernel's map); the later ones over that map where the kernel takes
    /// the map iterator.
    pub fn listener_pass(&mut self) -> anyhow::Result<std::fs::File> {
        match &self.listener_map {
            Ok(passes) if self.listeners_seeded => passes.start_pass(),
            _ => {
                let file = listener_iter::start_pass(&mut self.ebpf)?;
                self.listeners_seeded = true;
                Ok(file)
            }
        }
    }

    /// The maps the programs count folded events in.
    pub fn fold_reader(&mut self) -> anyhow::Result<FoldReader> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("{name} map missing from the object"))
        };
        let even = EpochMaps {
            samples: HashMap::try_from(take("FOLDED_EVEN")?)?,
            counts: PerCpuHashMap::try_from(take("COUNTS_EVEN")?)?,
        };
        let odd = EpochMaps {
            samples: HashMap::try_from(take("FOLDED_ODD")?)?,
            counts: PerCpuHashMap::try_from(take("COUNTS_ODD")?)?,
        };
        let hot = PerCpuArray::try_from(take("HOT")?)?;
        let epoch = Array::try_from(take("FOLD_EPOCH")?)?;
        Ok(FoldReader::new(even, odd, hot, epoch))
    }

    /// The ring buffer every event arrives in.
    pub fn events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS map missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The kernel's record of the last listener on every address.
    pub fn listeners(&mut self) -> anyhow::Result<crate::last_listener::Listeners> {
        let map = self
            .ebpf
            .take_map("LAST_LISTENERS")
            .ok_or_else(|| anyhow!("LAST_LISTENERS map missing"))?;
        let table: HashMap<MapData, ListenerKey, ListenerHistory> = HashMap::try_from(map)?;
        Ok(crate::last_listener::Listeners::new(Box::new(table)))
    }

    /// Kernel stacks of events (filled with `LoadOptions::stacks`).
    pub fn stacks(&mut self) -> anyhow::Result<StackTraceMap<MapData>> {
        let map = self
            .ebpf
            .take_map("STACKS")
            .ok_or_else(|| anyhow!("STACKS map missing"))?;
        Ok(StackTraceMap::try_from(map)?)
    }

    /// Per-CPU count of records the kernel could not put in the ring buffer.
    pub fn lost_counter(&mut self) -> anyhow::Result<CpuCounter> {
        self.counter("LOST")
    }

    /// Events the kernel-side filters (`--pid`, `--port`, `--netns`, `--cgroup`) dropped.
    pub fn filtered_counter(&mut self) -> anyhow::Result<CpuCounter> {
        self.counter("FILTERED")
    }

    fn counter(&mut self, name: &str) -> anyhow::Result<CpuCounter> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("{name} map missing from the object"))?;
        Ok(CpuCounter(PerCpuArray::try_from(map)?))
    }

    /// Each loaded program's (name, run time in ns, run count) since load, for `--metrics`. The
    /// kernel counts only while `kernel.bpf_stats_enabled=1` (or a `BPF_ENABLE_STATS` fd is
    /// held); otherwise both are 0. Programs that failed to load have no stats and are left out.
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                let run_time_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                Some((name.to_string(), run_time_ns, info.run_count()))
            })
            .collect()
    }

    /// The kernel programs' log, to be polled and flushed.
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }
}

pub struct CpuCounter(PerCpuArray<MapData, u64>);

impl CpuCounter {
    /// Total over all CPUs since load.
    pub fn total(&self) -> anyhow::Result<u64> {
        let values = self
            .0
            .get(&0, 0)
            .context("reading a kernel event counter")?;
        Ok(values.iter().sum())
    }
}

/// The `--cgroup` paths opened as directories of the cgroup2 hierarchy, for the kernel filter;
/// why not, when one of them cannot be (no cgroup2 mount, a cgroup that does not exist yet):
/// then userspace alone filters, which also matches cgroups created later.
fn cgroup_directories(paths: &[String]) -> Result<Vec<std::fs::File>, String> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let root = crate::enrich::cgroup2_root()
        .ok_or_else(|| "no cgroup2 hierarchy is mounted".to_string())?;
    paths
        .iter()
        .map(|path| {
            let dir = root.join(path.trim_start_matches('/'));
            std::fs::File::open(&dir).map_err(|error| {
                format!(
                    "cannot open {} ({error})",
                    crate::escape::for_terminal(&dir.to_string_lossy())
                )
            })
        })
        .collect()
}

/// Loads the listener iterator when this kernel's offsets let it run; why not otherwise.
fn load_listener_iter(
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
    offsets: &KernelOffsets,
) -> Result<(), String> {
    listener_iter::usable(offsets)?;
    let btf = btf.ok_or("the kernel has no BTF at /sys/kernel/btf/vmlinux")?;
    listener_iter::load(ebpf, btf).map_err(|error| format!("{error:#}"))?;
    // One pass proves the kernel runs it (the verifier accepted it; reading runs it).
    listener_iter::start_pass(ebpf)
        .and_then(listener_iter::read_pass)
        .map(drop)
        .map_err(|error| format!("{error:#}"))
}

/// Only the listener iterators, for `rst-trace backlog` (which reports nothing else), with the
/// owner programs that keep the listener map where their BTF programs attach.
pub struct ListenerIterator {
    ebpf: Ebpf,
    map: Option<listener_iter::MapPasses>,
    seeded: bool,
}

impl ListenerIterator {
    pub fn load(support: &KernelSupport) -> anyhow::Result<Self> {
        raise_memlock_limit(support);
        // The other programs' ring buffer is created with the object: the smallest one will do.
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &support.offsets, true)
            .map_max_entries("EVENTS", 4096)
            .load(EBPF_OBJECT)
            .context("the kernel refused rst-trace's BPF maps")?;
        let btf = aya::Btf::from_sys_fs().ok();
        load_listener_iter(&mut ebpf, btf.as_ref(), &support.offsets)
            .map_err(|why| anyhow!("the listener iterator is not available: {why}"))?;
        // Without the map, every pass walks the open files: it costs more, and works the same.
        let map = keep_listener_map(&mut ebpf, btf.as_ref(), support).ok();
        Ok(Self {
            ebpf,
            map,
            seeded: false,
        })
    }

    /// Starts a pass (see [`crate::listener_iter`]): the first over every open file, the later
    /// ones over the listener map where it is kept.
    pub fn pass(&mut self) -> anyhow::Result<std::fs::File> {
        match &self.map {
            Some(passes) if self.seeded => passes.start_pass(),
            _ => {
                let file = listener_iter::start_pass(&mut self.ebpf)?;
                self.seeded = true;
                Ok(file)
            }
        }
    }
}

/// Attaches the BTF programs of `sock:inet_sock_set_state` and `tcp:tcp_destroy_sock` (which
/// add listeners to the map and remove them) and loads the map iterator.
fn keep_listener_map(
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
    support: &KernelSupport,
) -> anyhow::Result<listener_iter::MapPasses> {
    let btf = btf.context("the kernel has no BTF at /sys/kernel/btf/vmlinux")?;
    for event in ["inet_sock_set_state", "tcp_destroy_sock"] {
        let program = support
            .sources
            .iter()
            .filter(|source| source.event == event && source.status.is_ok())
            .find_map(|source| btf_program(source, support))
            .with_context(|| format!("no BTF program serves {event} on this kernel"))?;
        attach_btf(ebpf, Some(btf), program, event)?;
    }
    listener_iter::MapPasses::load(ebpf, btf)
}

/// The BTF tracepoint program that can serve `source` in place of its classic one, when this
/// kernel lets it run (the program table, [`crate::programs`], says which).
fn btf_program(source: &Source, support: &KernelSupport) -> Option<&'static str> {
    let kernel = BtfKernel {
        offsets: &support.offsets,
        socket_cookie_helper: support.socket_cookie_helper,
    };
    source
        .btf_twin
        .filter(|twin| (twin.usable)(&kernel).is_ok())
        .map(|twin| twin.program)
}

/// Loads and attaches a BTF tracepoint program; any failure (no BTF, a kernel before 5.5, a
/// verifier that rejects a load) leaves the classic program to serve the tracepoint.
fn attach_btf(
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
    program: &str,
    event: &str,
) -> anyhow::Result<()> {
    let btf = btf.context("the kernel has no BTF at /sys/kernel/btf/vmlinux")?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the object"))?
        .try_into()?;
    program
        .load(event, btf)
        .context("the kernel refused the BTF tracepoint program")?;
    program.attach().context("attaching the BTF tracepoint")?;
    Ok(())
}

/// Loads the source's program (once: one program may serve several tracepoints) and attaches it.
fn attach(
    ebpf: &mut Ebpf,
    source: &Source,
    loaded: &mut HashSet<&'static str>,
) -> anyhow::Result<()> {
    let program = ebpf
        .program_mut(source.program)
        .ok_or_else(|| anyhow!("program {} missing from the object", source.program))?;
    let refused = || format!("the kernel refused program {}", source.program);
    let attaching = || format!("attaching to {}", source.name());
    if source.is_kprobe() {
        let program: &mut KProbe = program.try_into()?;
        program.load().with_context(refused)?;
        program.attach(source.event, 0).with_context(attaching)?;
        return Ok(());
    }
    let program: &mut TracePoint = program.try_into()?;
    if !loaded.contains(source.program) {
        program.load().with_context(refused)?;
        loaded.insert(source.program);
    }
    program
        .attach(source.system, source.event)
        .with_context(attaching)?;
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones to the cgroup, where the
/// limit does not matter. Failing to raise it is therefore a warning, and only where it matters
/// (the sources decide where).
fn raise_memlock_limit(support: &KernelSupport) {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0
        && support.charges_bpf_to_memlock()
    {
        log::warn!(
            "could not raise RLIMIT_MEMLOCK ({}); this kernel ({release}) charges BPF maps to it \
             and may refuse to create them",
            std::io::Error::last_os_error(),
            release = support.release
        );
    }
}
