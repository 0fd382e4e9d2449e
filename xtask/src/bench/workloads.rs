//! The workloads the bench runs, and their load generators. Every generator sends traffic only to
//! 127.0.0.1, runs for a fixed time and at most a fixed number of operations per thread, and
//! reports how many operations it completed.
//!
//! The reset workloads are closed loops that keep both cores busy, so that whatever a tracer
//! costs (in the kernel or in its own process) shows as lost throughput.

use std::{
    collections::VecDeque,
    io::{self, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use socket2::{Domain, Socket, Type};

use super::{
    needles::{self, NeedleKind, PER_SECOND, Record},
    tracers::{self, Setup, shell_quote},
};

use crate::loopback;

/// Operations one generator thread stops at even if time remains: a bound, never reached in
/// seconds on today's hardware.
const MAX_OPS_PER_THREAD: u64 = 50_000_000;

/// The accept-queue overflow workload's listener backlog: small, so that a handful of
/// connections fill it.
const OVERFLOW_BACKLOG: i32 = 8;

/// Bytes per echo request and response.
const ECHO_MESSAGE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Many threads connecting to a closed port: each connect is one reset sent (no socket) and
    /// one received (by the connecting socket, in SYN_SENT).
    RefusedStorm,
    /// `hping3 -S --flood` at a closed port: one reset sent per SYN, none received (the RSTs go
    /// to ports with no socket).
    HpingFlood,
    /// Connect, then close with SO_LINGER 0: one reset sent (abort on close) and one received
    /// (by the accepted socket).
    LingerStorm,
    /// SYNs at a listener whose accept queue is full: every SYN is dropped and counted in
    /// TcpExtListenOverflows; no resets.
    AcceptOverflow,
    /// Ordinary traffic with no resets: 64-byte request/response over kept-alive loopback
    /// connections to an echo server.
    Echo,
    /// The refused-connect storm, plus the four rare kinds of reset from their own processes
    /// (needles.rs) at a low rate, plus `tcpdump -w` on lo capturing every RST: whether the
    /// rare resets survive a storm, and whether every reset on the wire is accounted for.
    StormNeedles,
}

/// What the kernel counts for a workload's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelCount {
    Resets,
    ListenOverflows,
    Nothing,
}

/// What a workload run did.
pub struct Outcome {
    /// Operations completed; `None` when only the kernel's counters tell (hping3).
    pub ops: Option<u64>,
    pub elapsed: Duration,
    /// Sockets to keep until the tracer has stopped (the overflowing listener must outlive
    /// rst-trace's last sample of it).
    pub keep: Vec<Socket>,
    /// StormNeedles: what tcpdump captured and what the needles did.
    pub capture: Option<Capture>,
}

/// The StormNeedles workload's capture and the needles' records.
pub struct Capture {
    pub pcap: PathBuf,
    /// tcpdump's own count of packets dropped by the kernel (its capture is complete at 0).
    pub tcpdump_dropped: u64,
    pub records: Vec<Record>,
}

impl Workload {
    pub const ALL: [Self; 6] = [
        Self::RefusedStorm,
        Self::HpingFlood,
        Self::LingerStorm,
        Self::AcceptOverflow,
        Self::Echo,
        Self::StormNeedles,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::RefusedStorm => "refused",
            Self::HpingFlood => "hping3",
            Self::LingerStorm => "linger",
            Self::AcceptOverflow => "overflow",
            Self::Echo => "echo",
            Self::StormNeedles => "needles",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::RefusedStorm => "Refused-connect storm",
            Self::HpingFlood => "hping3 SYN flood at a closed port",
            Self::LingerStorm => "SO_LINGER 0 close storm",
            Self::AcceptOverflow => "Accept-queue overflow",
            Self::Echo => "Ordinary traffic: TCP echo, keep-alive",
            Self::StormNeedles => "Storm + needles + capture",
        }
    }

    /// What the throughput counts.
    pub fn unit(self) -> &'static str {
        match self {
            Self::RefusedStorm | Self::StormNeedles => "refused connects/s",
            Self::HpingFlood => "resets sent/s",
            Self::LingerStorm => "aborted connections/s",
            Self::AcceptOverflow => "dropped SYNs sent/s",
            Self::Echo => "requests/s",
        }
    }

    pub fn kernel_count(self) -> KernelCount {
        match self {
            Self::RefusedStorm | Self::HpingFlood | Self::LingerStorm | Self::StormNeedles => {
                KernelCount::Resets
            }
            Self::AcceptOverflow => KernelCount::ListenOverflows,
            Self::Echo => KernelCount::Nothing,
        }
    }

    /// Whether the workload fires tcp:tcp_send_reset (where the reference program can run).
    pub fn sends_resets(self) -> bool {
        self.kernel_count() == KernelCount::Resets
    }

    /// The ports rst-trace and tcpdump watch for this workload.
    pub fn ports(self, setup: &Setup) -> Vec<u16> {
        let mut ports = vec![setup.port];
        if self == Self::StormNeedles {
            ports.extend(setup.needle_ports);
        }
        ports
    }

    /// How the load is made, for the report.
    pub fn description(self, threads: usize, setup: &Setup) -> String {
        let port = setup.port;
        match self {
            Self::RefusedStorm => format!(
                "{threads} threads, each in a loop: `connect()` to 127.0.0.1:{port} (closed), \
                 expect ECONNREFUSED"
            ),
            Self::HpingFlood => format!("`hping3 -S --flood -p {port} 127.0.0.1` (closed port)"),
            Self::LingerStorm => format!(
                "{threads} threads, each in a loop: `connect()` to a listener on \
                 127.0.0.1:{port} (backlog 4096; {} threads accept, and close each socket once \
                 its reset has arrived), then SO_LINGER 0 and `close()`",
                (threads / 2).max(1)
            ),
            Self::AcceptOverflow => format!(
                "a listener on 127.0.0.1:{port} with backlog {OVERFLOW_BACKLOG} that never \
                 accepts, filled with {} connections; then {threads} threads, each in a loop: \
                 non-blocking `connect()` (one SYN, dropped) and `close()`",
                OVERFLOW_BACKLOG + 1
            ),
            Self::Echo => format!(
                "{threads} kept-alive connections to an echo server on 127.0.0.1:{port} (a \
                 thread per connection), each doing {ECHO_MESSAGE}-byte request/response in a \
                 loop, TCP_NODELAY"
            ),
            Self::StormNeedles => {
                let needles: Vec<String> = NeedleKind::ALL
                    .iter()
                    .zip(setup.needle_ports)
                    .map(|(kind, port)| {
                        format!("{kind} on 127.0.0.1:{port} ({})", kind.description())
                    })
                    .collect();
                format!(
                    "{threads} threads, each in a loop: `connect()` to 127.0.0.1:{port} (closed), \
                     expect ECONNREFUSED; beside them four processes (`cargo xtask bench-needle \
                     KIND`), each making {PER_SECOND} resets a second of one rare kind, both \
                     ends its own: {}; and `{}` running throughout",
                    needles.join("; "),
                    tcpdump_command(self, setup, Path::new("FILE"))
                )
            }
        }
    }

    pub fn run(self, setup: &Setup, threads: usize, duration: Duration) -> anyhow::Result<Outcome> {
        let port = setup.port;
        match self {
            Self::RefusedStorm => refused_storm(port, threads, duration),
            Self::HpingFlood => hping_flood(port, duration),
            Self::LingerStorm => linger_storm(port, threads, duration),
            Self::AcceptOverflow => accept_overflow(port, threads, duration),
            Self::Echo => echo(port, threads, duration),
            Self::StormNeedles => storm_needles(setup, threads, duration),
        }
    }
}

/// Runs `op` in `threads` threads until `duration` has passed (or the per-thread bound), and
/// returns the operations completed; the first error stops every thread.
fn closed_loop<F>(threads: usize, duration: Duration, op: F) -> anyhow::Result<(u64, Duration)>
where
    F: Fn() -> anyhow::Result<()> + Sync,
{
    let start = Instant::now();
    let deadline = start + duration;
    let failed = AtomicBool::new(false);
    let results: Vec<anyhow::Result<u64>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut ops = 0u64;
                    while ops < MAX_OPS_PER_THREAD && !failed.load(Ordering::Relaxed) {
                        // The clock is read every 64 operations: cheap, and still precise.
                        if ops.is_multiple_of(64) && Instant::now() >= deadline {
                            break;
                        }
                        if let Err(error) = op() {
                            failed.store(true, Ordering::Relaxed);
                            return Err(error);
                        }
                        ops += 1;
                    }
                    Ok(ops)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("a load generator thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut total = 0;
    for result in results {
        total += result?;
    }
    Ok((total, elapsed))
}

fn refused_storm(port: u16, threads: usize, duration: Duration) -> anyhow::Result<Outcome> {
    let addr = loopback::addr(port);
    let (ops, elapsed) = closed_loop(threads, duration, || match TcpStream::connect(addr) {
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(error) => Err(error).context("a connect to the closed port failed unexpectedly"),
        Ok(_) => bail!("127.0.0.1:{port} accepted a connection: the port is not closed"),
    })?;
    Ok(Outcome {
        ops: Some(ops),
        elapsed,
        keep: Vec::new(),
        capture: None,
    })
}

/// tcpdump's kernel buffer for the StormNeedles capture, in KiB: room for a second of the
/// storm's RSTs, so that tcpdump's capture is complete (it reports any drop, and the bench with
/// it).
pub const CAPTURE_BUFFER_KIB: u32 = 32768;

/// `tcpdump -w` as the StormNeedles workload runs it: every RST on lo to or from the
/// workload's ports (other processes on the host make resets of their own).
pub fn tcpdump_argv(workload: Workload, setup: &Setup, pcap: &Path) -> Vec<String> {
    let ports: Vec<String> = workload
        .ports(setup)
        .iter()
        .map(|port| format!("port {port}"))
        .collect();
    vec![
        "-i".to_string(),
        "lo".to_string(),
        "-n".to_string(),
        "-B".to_string(),
        CAPTURE_BUFFER_KIB.to_string(),
        "-w".to_string(),
        pcap.display().to_string(),
        format!("tcp[tcpflags] & tcp-rst != 0 and ({})", ports.join(" or ")),
    ]
}

pub fn tcpdump_command(workload: Workload, setup: &Setup, pcap: &Path) -> String {
    let mut line = vec!["tcpdump".to_string()];
    line.extend(
        tcpdump_argv(workload, setup, pcap)
            .iter()
            .map(|arg| shell_quote(arg)),
    );
    line.join(" ")
}

/// A child process that is killed if the workload ends early (an error), so that no needle or
/// capture outlives its run.
struct Reaped(Option<Child>);

impl Reaped {
    fn take(mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long tcpdump gets after the load ends before it is stopped: libpcap hands packets over
/// in blocks that the kernel retires when full or after tcpdump's timeout (1000 ms), and a
/// block not yet retired when tcpdump is stopped never reaches its file.
const TCPDUMP_FLUSH: Duration = Duration::from_millis(1500);

/// How long tcpdump may take to exit after SIGINT.
const TCPDUMP_STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn storm_needles(setup: &Setup, threads: usize, duration: Duration) -> anyhow::Result<Outcome> {
    let workload = Workload::StormNeedles;
    let pcap = setup.scratch.join("needles.pcap");
    let mut tcpdump = Command::new("tcpdump")
        .args(tcpdump_argv(workload, setup, &pcap))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start tcpdump (`cargo xtask setup` installs it)")?;
    let (lines, stderr) = tracers::read_lines(tcpdump.stderr.take());
    let tcpdump = Reaped(Some(tcpdump));
    tracers::wait_for_line(&lines, |line| line.contains("listening on"))
        .context("tcpdump did not start")?;

    let mut needles = Vec::new();
    for (kind, port) in NeedleKind::ALL.into_iter().zip(setup.needle_ports) {
        let out = setup.scratch.join(format!("needle-{kind}"));
        let child = Command::new(&setup.xtask)
            .args(["bench-needle", kind.id(), "--port", &port.to_string()])
            .args(["--millis", &duration.as_millis().to_string()])
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start the {kind} needle"))?;
        needles.push((kind, out, Reaped(Some(child))));
    }
    let storm = refused_storm(setup.port, threads, duration);

    let mut records = Vec::new();
    for (kind, out, needle) in needles {
        let Some(child) = needle.take() else { continue };
        let output = child
            .wait_with_output()
            .with_context(|| format!("waiting for the {kind} needle"))?;
        if !output.status.success() {
            bail!(
                "the {kind} needle failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        records.extend(needles::read_records(&out)?);
        let _ = std::fs::remove_file(&out);
    }
    let storm = storm?;

    thread::sleep(TCPDUMP_FLUSH);
    let Some(mut tcpdump) = tcpdump.take() else {
        bail!("tcpdump is gone");
    };
    let pid = libc::pid_t::try_from(tcpdump.id()).context("tcpdump's pid does not fit pid_t")?;
    // SAFETY: kill with a pid we spawned and have not reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + TCPDUMP_STOP_TIMEOUT;
    let status = loop {
        if let Some(status) = tcpdump.try_wait().context("waiting for tcpdump")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = tcpdump.kill();
            let _ = tcpdump.wait();
            bail!("tcpdump did not exit after SIGINT");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let said = stderr.join().unwrap_or_default();
    if !status.success() {
        bail!("tcpdump failed ({status}): {}", said.join(" | "));
    }
    let Some((_, tcpdump_dropped)) = tracers::tcpdump_totals(&said) else {
        bail!("tcpdump printed no statistics: {}", said.join(" | "));
    };
    Ok(Outcome {
        capture: Some(Capture {
            pcap,
            tcpdump_dropped,
            records,
        }),
        ..storm
    })
}

fn hping_flood(port: u16, duration: Duration) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let child = Command::new("hping3")
        .args(["-S", "--flood", "-p", &port.to_string(), "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start hping3 (`cargo xtask setup` installs it)")?;
    thread::sleep(duration);
    let pid = i32::try_from(child.id()).context("hping3's pid does not fit a pid_t")?;
    // SAFETY: kill with a pid we spawned and have not reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let output = child.wait_with_output().context("waiting for hping3")?;
    let elapsed = start.elapsed();
    // On SIGINT hping3 prints its statistics and exits 1 when no reply came back, which is
    // always so in flood mode: the statistics, not the status, say whether it flooded.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let transmitted = said.lines().find_map(|line| {
        line.split_once(" packets transmitted")?
            .0
            .trim()
            .parse::<u64>()
            .ok()
    });
    if transmitted.is_none_or(|n| n == 0) {
        bail!("hping3 sent nothing ({}): {}", output.status, said.trim());
    }
    Ok(Outcome {
        ops: None,
        elapsed,
        keep: Vec::new(),
        capture: None,
    })
}

fn linger_storm(port: u16, threads: usize, duration: Duration) -> anyhow::Result<Outcome> {
    let listener = loopback::listen(port, 4096)?;
    let addr = loopback::addr(port);
    let stop = AtomicBool::new(false);
    // One accepting thread per two client threads (one per core): a single one falls behind
    // the clients, the accept queue overflows and a connect waits a second for its SYN's
    // retransmission.
    let acceptors = (threads / 2).max(1);
    let result = thread::scope(|scope| {
        let accept = || {
            // Accepted sockets are closed only once the client's reset has arrived: closing
            // earlier would send a FIN that could reach the client after its abort and draw a
            // second reset, so that the resets per connection would vary from run to run. The
            // server never waits for one client, or the accept queue would fill behind it.
            let mut open: VecDeque<TcpStream> = VecDeque::new();
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let stream: TcpStream = stream.into();
                        stream.set_nonblocking(true)?;
                        open.push_back(stream);
                        if open.len() > LINGER_OPEN_SOCKETS {
                            close_reset(&mut open);
                        }
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => return Ok(()),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error).context("the linger server's accept failed"),
                }
            }
        };
        let servers: Vec<_> = (0..acceptors).map(|_| scope.spawn(accept)).collect();
        let result = closed_loop(threads, duration, || {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            socket
                .connect(&addr.into())
                .context("a connect to the linger server failed")?;
            socket.set_linger(Some(Duration::ZERO))?;
            drop(socket);
            Ok(())
        });
        stop.store(true, Ordering::Relaxed);
        // Shutting a listener down makes a blocked accept() return (EINVAL).
        let _ = listener.shutdown(Shutdown::Both);
        let mut accepted = Ok(());
        for server in servers {
            let served = server
                .join()
                .unwrap_or_else(|_| Err(anyhow!("a linger server thread panicked")));
            accepted = accepted.and(served);
        }
        accepted.and(result)
    });
    let (ops, elapsed) = result?;
    Ok(Outcome {
        ops: Some(ops),
        elapsed,
        keep: Vec::new(),
        capture: None,
    })
}

/// Accepted sockets the linger server keeps before it closes the oldest that has been reset.
const LINGER_OPEN_SOCKETS: usize = 256;

/// Closes the oldest accepted socket whose client reset it; a socket not reset yet goes to the
/// back of the queue.
fn close_reset(open: &mut VecDeque<TcpStream>) {
    for _ in 0..open.len() {
        let Some(mut stream) = open.pop_front() else {
            return;
        };
        match stream.read(&mut [0u8; 1]) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => open.push_back(stream),
            // Reset (or closed): closing it now sends nothing.
            _ => return,
        }
    }
}

fn accept_overflow(port: u16, threads: usize, duration: Duration) -> anyhow::Result<Outcome> {
    let listener = loopback::listen(port, OVERFLOW_BACKLOG)?;
    let addr = loopback::addr(port);
    // The accept queue is full when it holds one more than the backlog.
    let mut keep = Vec::new();
    for _ in 0..=OVERFLOW_BACKLOG {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(2))
            .context("filling the accept queue: a connection was not set up in 2 s")?;
        keep.push(socket);
    }
    keep.push(listener);
    let (ops, elapsed) = closed_loop(threads, duration, || {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&addr.into()) {
            // The SYN left; the listener drops it. Closing in SYN_SENT sends nothing.
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
            Ok(()) => Ok(()),
            Err(error) => Err(error).context("a connect to the full listener failed"),
        }
    })?;
    Ok(Outcome {
        ops: Some(ops),
        elapsed,
        keep,
        capture: None,
    })
}

fn echo(port: u16, connections: usize, duration: Duration) -> anyhow::Result<Outcome> {
    let listener = loopback::listen(port, 128)?;
    let addr = loopback::addr(port);
    thread::scope(|scope| {
        let server = scope.spawn(|| -> anyhow::Result<()> {
            thread::scope(|scope| {
                for _ in 0..connections {
                    let (stream, _) = listener.accept().context("the echo server's accept")?;
                    scope.spawn(move || echo_back(stream.into()));
                }
                Ok(())
            })
        });
        let clients: anyhow::Result<Vec<TcpStream>> = (0..connections)
            .map(|_| {
                let stream = TcpStream::connect(addr).context("connecting to the echo server")?;
                stream.set_nodelay(true)?;
                Ok(stream)
            })
            .collect();
        let clients = match clients {
            Ok(clients) => clients,
            Err(error) => {
                // Unblock the server's accept so that the scope can end.
                let _ = listener.shutdown(Shutdown::Both);
                return Err(error);
            }
        };
        let start = Instant::now();
        let deadline = start + duration;
        let counts: Vec<anyhow::Result<u64>> = thread::scope(|scope| {
            let handles: Vec<_> = clients
                .into_iter()
                .map(|mut stream| {
                    scope.spawn(move || -> anyhow::Result<u64> {
                        let request = [7u8; ECHO_MESSAGE];
                        let mut response = [0u8; ECHO_MESSAGE];
                        let mut requests = 0u64;
                        while requests < MAX_OPS_PER_THREAD {
                            if requests.is_multiple_of(64) && Instant::now() >= deadline {
                                break;
                            }
                            stream.write_all(&request)?;
                            stream.read_exact(&mut response)?;
                            requests += 1;
                        }
                        // Closing the client ends the server's thread (it reads EOF).
                        Ok(requests)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("an echo client panicked")))
                })
                .collect()
        });
        let elapsed = start.elapsed();
        server
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the echo server panicked")))?;
        let mut ops = 0;
        for count in counts {
            ops += count.context("an echo client failed")?;
        }
        Ok(Outcome {
            ops: Some(ops),
            elapsed,
            keep: Vec::new(),
            capture: None,
        })
    })
}

fn echo_back(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buffer = [0u8; ECHO_MESSAGE];
    // Until the client closes (EOF or an error): nothing to report either way.
    while stream.read_exact(&mut buffer).is_ok() {
        if stream.write_all(&buffer).is_err() {
            break;
        }
    }
}

/// A port on 127.0.0.1, below the ephemeral range (so that no client socket can be bound to it
/// and turn a connect into a self-connect), that nothing listens on now.
pub fn free_port(from: u16, except: &[u16]) -> anyhow::Result<u16> {
    (from..from.saturating_add(1000))
        .filter(|port| !except.contains(port))
        .find(|port| TcpListener::bind(loopback::addr(*port)).is_ok())
        .with_context(|| format!("no free port on 127.0.0.1 from {from}"))
}

/// Whether hping3 is installed (for the one workload that needs it).
pub fn hping3_present() -> bool {
    ["/usr/sbin/hping3", "/usr/bin/hping3"]
        .iter()
        .any(|path| Path::new(path).exists())
}
