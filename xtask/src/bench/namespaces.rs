//! The "namespaces" workload: what rst-trace costs at rest on a host with many network
//! namespaces, and how soon it reports a full accept queue in the last of them.
//!
//! For each count N (0, 100 and 500 by default) the bench makes N network namespaces with lo up,
//! each with a listener and [`CONNECTIONS`] established connections on lo, held open by this
//! process (a pod's worth of sockets, nothing dropping), then measures the CPU seconds per second
//! of `rst-trace --json` and of `rst-trace backlog` once they have settled. At the largest count
//! one more listener, in the last namespace, overflows: the figure is the time from the first
//! SYN the kernel dropped (its `ListenOverflows` counter moving, polled every millisecond) to
//! rst-trace's `queue_drop` event for that listener.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

use super::kernel::cpu_seconds;

/// Established connections per namespace (both ends held here): 19, so that 500 namespaces
/// (19,500 descriptors) fit under a 20,000 open-file hard limit, which a root without
/// CAP_SYS_RESOURCE cannot raise.
pub const CONNECTIONS: usize = 19;
/// The namespace counts of a full run.
pub const DEFAULT_COUNTS: [usize; 3] = [0, 100, 500];
/// What the issue measured before the listener iterator (sampling every namespace each
/// second), for the report: (extra namespaces, CPU seconds per second of `rst-trace`).
pub const BEFORE: [(usize, f64); 3] = [(1, 0.0145), (100, 0.199), (400, 0.515)];
/// The targets: idle CPU at 500 namespaces, and seconds from the first dropped SYN to the event.
pub const TARGET_CPU_PER_S: f64 = 0.005;
pub const TARGET_OVERFLOW_S: f64 = 1.5;

/// After start-up and the first passes (the baseline) before CPU is counted.
const SETTLE: Duration = Duration::from_secs(3);
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One namespace count's figures.
#[derive(Clone)]
pub struct Row {
    pub extra: usize,
    pub trace_cpu_per_s: f64,
    pub backlog_cpu_per_s: f64,
}

/// What the workload measured.
#[derive(Clone)]
pub struct Figures {
    pub rows: Vec<Row>,
    /// Seconds from the first dropped SYN in the last namespace to the event.
    pub overflow_seconds: f64,
    pub measured_for: Duration,
}

/// Runs the workload for each count (ascending), measuring each tracer for `measure`.
pub fn run(rst_trace: &Path, counts: &[usize], measure: Duration) -> anyhow::Result<Figures> {
    raise_fd_limit(counts.iter().copied().max().unwrap_or(0))?;
    let prefix = format!("rtbench{}", std::process::id());
    let mut made = Namespaces::new(&prefix);
    let mut rows = Vec::new();
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    for &extra in &counts {
        made.grow_to(extra)?;
        eprintln!("bench: namespaces: {extra} extra namespaces ready; measuring rst-trace");
        let tracer = Tracer::start(rst_trace, &["--json"])?;
        let trace_cpu_per_s = tracer.idle_cpu(measure)?;
        drop(tracer);
        let backlog = Tracer::start(rst_trace, &["backlog", "--interval", "1"])?;
        let backlog_cpu_per_s = backlog.idle_cpu(measure)?;
        drop(backlog);
        eprintln!(
            "bench: namespaces: {extra}: rst-trace {trace_cpu_per_s:.4} CPU-s/s, backlog \
             {backlog_cpu_per_s:.4} CPU-s/s"
        );
        rows.push(Row {
            extra,
            trace_cpu_per_s,
            backlog_cpu_per_s,
        });
    }
    let last = made
        .names
        .last()
        .cloned()
        .context("the overflow needs at least one extra namespace")?;
    let tracer = Tracer::start(rst_trace, &["--json"])?;
    thread::sleep(SETTLE);
    let overflow_seconds = overflow(&tracer, &last)?;
    drop(tracer);
    Ok(Figures {
        rows,
        overflow_seconds,
        measured_for: measure,
    })
}

/// The report's section.
pub fn markdown(figures: &Figures) -> String {
    let mut out = String::new();
    let w = &mut out;
    use std::fmt::Write as _;
    let _ = writeln!(w, "## Network namespaces at rest\n");
    let _ = writeln!(
        w,
        "Extra network namespaces, each with lo up, a listener and {CONNECTIONS} established \
         connections on lo held by the bench, nothing dropping. CPU seconds per second over {} s \
         after start-up and a {} s settle (`/proc/PID/stat`), of `rst-trace --json` and of \
         `rst-trace backlog --interval 1`. Before: the issue's figures for rst-trace \
         when it sampled every namespace each second (namespaces with lo up only, `/usr/bin/time` \
         over 20 s).\n",
        figures.measured_for.as_secs(),
        SETTLE.as_secs()
    );
    let _ = writeln!(
        w,
        "| extra namespaces | rst-trace CPU-s/s | backlog CPU-s/s |\n| --- | --- | --- |"
    );
    for row in &figures.rows {
        let _ = writeln!(
            w,
            "| {} | {:.4} | {:.4} |",
            row.extra, row.trace_cpu_per_s, row.backlog_cpu_per_s
        );
    }
    let before: Vec<String> = BEFORE
        .iter()
        .map(|(extra, cpu)| format!("{extra}: {cpu:.3}"))
        .collect();
    let _ = writeln!(
        w,
        "\nBefore (sampling, CPU-s/s by extra namespaces): {}.",
        before.join(", ")
    );
    let largest = figures.rows.last();
    let _ = writeln!(
        w,
        "\nTargets: at 500 namespaces rst-trace at most {TARGET_CPU_PER_S} CPU-s/s ({}); one \
         listener in the last namespace overflowing is reported {:.2} s after its first dropped \
         SYN (target {TARGET_OVERFLOW_S} s: {}).\n",
        match largest {
            Some(row) if row.extra >= 500 => {
                if row.trace_cpu_per_s <= TARGET_CPU_PER_S {
                    format!("met: {:.4}", row.trace_cpu_per_s)
                } else {
                    format!("missed: {:.4}", row.trace_cpu_per_s)
                }
            }
            _ => "not measured at 500 in this run".to_string(),
        },
        figures.overflow_seconds,
        if figures.overflow_seconds <= TARGET_OVERFLOW_S {
            "met"
        } else {
            "missed"
        }
    );
    out
}

/// A listener with backlog 1 in namespace `name`, filled, then one SYN more: the seconds from
/// the first drop the kernel counted to rst-trace's event for that listener.
fn overflow(tracer: &Tracer, name: &str) -> anyhow::Result<f64> {
    let path = netns_path(name);
    let inode = fs::metadata(&path)
        .with_context(|| format!("could not stat {}", path.display()))?
        .ino();
    let (first_drop, port, _held) = in_netns(name, || -> anyhow::Result<_> {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        // Backlog 1 holds 2 connections; nobody accepts them.
        listener.listen(1)?;
        let local = listener
            .local_addr()?
            .as_socket()
            .context("the listener has no address")?;
        let mut held = vec![TcpStream::connect(local)?, TcpStream::connect(local)?];
        let before = listen_overflows()?;
        let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        client.set_nonblocking(true)?;
        // In progress: the SYN went out and is being dropped.
        let _ = client.connect(&local.into());
        let started = Instant::now();
        loop {
            if listen_overflows()? > before {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("ListenOverflows did not move in namespace {name}");
            }
            thread::sleep(Duration::from_millis(1));
        }
        let first_drop = Instant::now();
        held.push(TcpStream::from(std::os::fd::OwnedFd::from(client)));
        Ok((first_drop, local.port(), (listener, held)))
    })??;
    let event = tracer.wait_for(EVENT_TIMEOUT, |event| {
        event["kind"] == "queue_drop"
            && event["netns"].as_u64() == Some(inode)
            && event["local"]["port"].as_u64() == Some(u64::from(port))
    })?;
    Ok(event.saturating_duration_since(first_drop).as_secs_f64())
}

/// `TcpExtListenOverflows` of the calling thread's namespace.
fn listen_overflows() -> anyhow::Result<u64> {
    let text = fs::read_to_string("/proc/thread-self/net/netstat")
        .context("could not read /proc/thread-self/net/netstat")?;
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let position = names
            .split_whitespace()
            .position(|name| name == "ListenOverflows")
            .context("netstat has no ListenOverflows")?;
        return values
            .split_whitespace()
            .nth(position)
            .and_then(|value| value.parse().ok())
            .context("netstat's ListenOverflows is not a number");
    }
    bail!("netstat has no TcpExt lines")
}

/// Room for every socket the largest count holds.
fn raise_fd_limit(namespaces: usize) -> anyhow::Result<()> {
    let needed = (namespaces * (2 * CONNECTIONS + 1) + 256) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit(RLIMIT_NOFILE) failed");
        }
        if limit.rlim_cur >= needed {
            return Ok(());
        }
        // The soft limit up to the hard one needs no privilege; past it, CAP_SYS_RESOURCE.
        limit.rlim_cur = needed;
        limit.rlim_max = limit.rlim_max.max(needed);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!(
                "could not raise the open-file limit to {needed} for {namespaces} namespaces: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn netns_path(name: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `work` on a thread that has entered namespace `name` (this thread stays where it is).
fn in_netns<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = netns_path(name);
    let file = File::open(&path).with_context(|| format!("could not open {}", path.display()))?;
    thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<T> {
                // SAFETY: setns on a namespace file we hold open; only this thread moves.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "could not enter network namespace {name}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                Ok(work())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in namespace {name} panicked"))?
    })
}

/// The bench's namespaces and the sockets that keep each busy; deleted when dropped.
struct Namespaces {
    prefix: String,
    names: Vec<String>,
    sockets: Vec<(TcpListener, Vec<TcpStream>)>,
}

impl Namespaces {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            names: Vec::new(),
            sockets: Vec::new(),
        }
    }

    /// Adds namespaces (lo up, a listener, its connections) until there are `count`.
    fn grow_to(&mut self, count: usize) -> anyhow::Result<()> {
        if count <= self.names.len() {
            return Ok(());
        }
        let new: Vec<String> = (self.names.len()..count)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect();
        // One `ip` for all of them: a process per namespace would take longer than the bench.
        let mut ip = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("could not run ip -batch")?;
        {
            let mut stdin = ip.stdin.take().context("ip's stdin")?;
            for name in &new {
                writeln!(stdin, "netns add {name}").context("writing to ip -batch")?;
            }
        }
        let status = ip.wait().context("waiting for ip -batch")?;
        // Recorded before checking, so that whatever was made is deleted.
        self.names.extend(new.iter().cloned());
        if !status.success() {
            bail!("ip -batch (netns add) failed: {status}");
        }
        for name in &new {
            let sockets = in_netns(name, || -> anyhow::Result<_> {
                loopback_up()?;
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let local = listener.local_addr()?;
                let mut streams = Vec::with_capacity(2 * CONNECTIONS);
                for _ in 0..CONNECTIONS {
                    streams.push(TcpStream::connect(local)?);
                    streams.push(listener.accept()?.0);
                }
                Ok((listener, streams))
            })?
            .with_context(|| format!("could not set up namespace {name}"))?;
            self.sockets.push(sockets);
        }
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.sockets.clear();
        if self.names.is_empty() {
            return;
        }
        let deleted = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut ip| {
                if let Some(mut stdin) = ip.stdin.take() {
                    for name in &self.names {
                        writeln!(stdin, "netns del {name}")?;
                    }
                }
                ip.wait()
            });
        if !matches!(deleted, Ok(status) if status.success()) {
            eprintln!(
                "bench: warning: could not delete every namespace {}-*: {deleted:?}",
                self.prefix
            );
        }
    }
}

/// Brings lo up in the calling thread's namespace (SIOCSIFFLAGS), as `ip link set lo up`.
fn loopback_up() -> anyhow::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; the ioctls read and write it in place.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            bail!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
            bail!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A running rst-trace whose JSON lines are kept with the time each arrived.
struct Tracer {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Tracer {
    fn start(rst_trace: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(rst_trace)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", rst_trace.display()))?;
        // Ready once it says so: trace on stderr ("tracing"), backlog with its banner on stdout.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("rst-trace's stdout")?;
        let kept = Arc::clone(&lines);
        let stdout_ready = ready_tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = stdout_ready.send(());
                if let Ok(mut kept) = kept.lock() {
                    kept.push((Instant::now(), line));
                }
            }
        });
        let stderr = child.stderr.take().context("rst-trace's stderr")?;
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("rst-trace: tracing") {
                    let _ = ready_tx.send(());
                } else {
                    eprintln!("bench: namespaces: {line}");
                }
            }
        });
        let mut tracer = Self { child, lines };
        let started = Instant::now();
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return Ok(tracer);
            }
            if let Ok(Some(status)) = tracer.child.try_wait() {
                bail!(
                    "{} {args:?} exited ({status}) before it was ready",
                    rst_trace.display()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{} {args:?} did not get ready in {START_TIMEOUT:?}",
                    rst_trace.display()
                );
            }
        }
    }

    /// CPU seconds per second over `measure`, after [`SETTLE`].
    fn idle_cpu(&self, measure: Duration) -> anyhow::Result<f64> {
        thread::sleep(SETTLE);
        let pid = self.child.id();
        let before = cpu_seconds(pid)?;
        let started = Instant::now();
        thread::sleep(measure);
        let after = cpu_seconds(pid)?;
        Ok((after - before) / started.elapsed().as_secs_f64())
    }

    /// When the first line that `wanted` accepts arrived.
    fn wait_for(
        &self,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Instant> {
        let started = Instant::now();
        loop {
            if let Ok(lines) = self.lines.lock() {
                let found = lines.iter().find(|(_, line)| {
                    serde_json::from_str::<Value>(line).is_ok_and(|value| wanted(&value))
                });
                if let Some((at, _)) = found {
                    return Ok(*at);
                }
            }
            if started.elapsed() > timeout {
                bail!(
                    "rst-trace reported no queue_drop for the overflowing listener in {timeout:?}"
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGINT lets it detach its programs and print totals.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}
