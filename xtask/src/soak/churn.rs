//! The soak's load: once a second, connections that end in resets of most causes, short-lived
//! processes, network namespaces and container-named cgroups that come and go. Everything goes
//! to 127.0.0.1 (of the host or of a namespace the soak created), at a fixed number of operations
//! per tick, so the load is bounded by the run's length.

use std::{
    fs,
    io::{self, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Socket, Type};

use crate::loopback;

/// Connects per tick to the closed port from the soak itself (each one reset sent, one received).
const REFUSED_PER_TICK: usize = 20;
/// Short-lived processes per tick that connect to the closed port once and exit.
const PROCESSES_PER_TICK: usize = 2;
/// SO_LINGER 0 closes per tick.
const LINGER_PER_TICK: usize = 5;
/// Closes with unread data per tick.
const UNREAD_PER_TICK: usize = 3;
/// Writes on connections the server had closed, per tick.
const STALE_PER_TICK: usize = 3;
/// Connections waiting in a listener's accept queue when it closes (every 5th tick).
const LISTENER_CLOSED_QUEUED: usize = 3;
/// SYNs sent at the full listener (every 10th tick); each is retransmitted while it waits.
const OVERFLOW_SYNS: usize = 3;
/// How long the full listener lives: long enough for rst-trace's listener sampler to see it.
const OVERFLOW_TICKS: u64 = 3;

/// The ports the soak uses on 127.0.0.1 (and in its namespaces): rst-trace is told to watch
/// these alone, so that other processes on the machine do not change the figures.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub closed: u16,
    pub linger: u16,
    pub unread: u16,
    pub stale: u16,
    pub listener_closed: u16,
    pub overflow: u16,
}

impl Ports {
    pub fn find() -> anyhow::Result<Self> {
        let mut taken = Vec::new();
        let mut next = || -> anyhow::Result<u16> {
            let port = free_port(21001, &taken)?;
            taken.push(port);
            Ok(port)
        };
        Ok(Self {
            closed: next()?,
            linger: next()?,
            unread: next()?,
            stale: next()?,
            listener_closed: next()?,
            overflow: next()?,
        })
    }

    pub fn all(&self) -> [u16; 6] {
        [
            self.closed,
            self.linger,
            self.unread,
            self.stale,
            self.listener_closed,
            self.overflow,
        ]
    }
}

/// A port on 127.0.0.1 below the ephemeral range that nothing listens on now.
fn free_port(from: u16, except: &[u16]) -> anyhow::Result<u16> {
    (from..from.saturating_add(1000))
        .filter(|port| !except.contains(port))
        .find(|port| TcpListener::bind(loopback::addr(*port)).is_ok())
        .with_context(|| format!("no free port on 127.0.0.1 from {from}"))
}

/// What the churn did, read by the sampler every minute.
#[derive(Default)]
pub struct Counts {
    pub ticks: AtomicU64,
    pub refused: AtomicU64,
    pub processes: AtomicU64,
    pub linger: AtomicU64,
    pub unread: AtomicU64,
    pub stale: AtomicU64,
    pub listener_closed: AtomicU64,
    pub overflow_syns: AtomicU64,
    pub namespaces: AtomicU64,
    pub cgroups: AtomicU64,
    pub errors: AtomicU64,
}

impl Counts {
    /// Operations that end in resets or drops, for the per-minute table.
    pub fn operations(&self) -> u64 {
        [
            &self.refused,
            &self.processes,
            &self.linger,
            &self.unread,
            &self.stale,
            &self.listener_closed,
            &self.overflow_syns,
            &self.namespaces,
            &self.cgroups,
        ]
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .sum()
    }
}

/// The churn's state between ticks: sockets kept until the next tick (closing them at once
/// could send FINs that cross the resets), the listener being overflowed, the first error seen.
pub struct Churn {
    pub ports: Ports,
    linger: TcpListener,
    unread: TcpListener,
    stale: TcpListener,
    cgroup_parent: PathBuf,
    keep: Vec<TcpStream>,
    overflow: Option<(u64, Vec<Socket>)>,
    pub first_error: Option<String>,
}

impl Churn {
    pub fn new(ports: Ports, cgroup_parent: PathBuf) -> anyhow::Result<Self> {
        let listen = |port: u16| {
            TcpListener::bind(loopback::addr(port))
                .with_context(|| format!("could not bind {port}"))
        };
        fs::create_dir_all(&cgroup_parent)
            .with_context(|| format!("could not create cgroup {}", cgroup_parent.display()))?;
        Ok(Self {
            ports,
            linger: listen(ports.linger)?,
            unread: listen(ports.unread)?,
            stale: listen(ports.stale)?,
            cgroup_parent,
            keep: Vec::new(),
            overflow: None,
            first_error: None,
        })
    }

    /// Ticks once a second until `stop`.
    pub fn run(&mut self, counts: &Counts, stop: &AtomicBool) {
        let mut tick = 0u64;
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.tick(tick, counts);
            counts.ticks.fetch_add(1, Ordering::Relaxed);
            tick += 1;
            let next = started + Duration::from_secs(tick);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        self.keep.clear();
        self.overflow = None;
        let _ = fs::remove_dir(&self.cgroup_parent);
    }

    fn tick(&mut self, tick: u64, counts: &Counts) {
        // Last tick's sockets have had their resets by now.
        self.keep.clear();
        let ports = self.ports;
        let mut record = |result: anyhow::Result<()>, count: &AtomicU64, n: u64| match result {
            Ok(()) => {
                count.fetch_add(n, Ordering::Relaxed);
            }
            Err(error) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                if self.first_error.is_none() {
                    self.first_error = Some(format!("tick {tick}: {error:#}"));
                }
            }
        };
        record(
            refused(ports.closed),
            &counts.refused,
            REFUSED_PER_TICK as u64,
        );
        record(
            processes(ports.closed),
            &counts.processes,
            PROCESSES_PER_TICK as u64,
        );
        let mut keep = Vec::new();
        record(
            linger(&self.linger, ports.linger, &mut keep),
            &counts.linger,
            LINGER_PER_TICK as u64,
        );
        record(
            unread(&self.unread, ports.unread, &mut keep),
            &counts.unread,
            UNREAD_PER_TICK as u64,
        );
        record(
            stale(&self.stale, ports.stale, &mut keep),
            &counts.stale,
            STALE_PER_TICK as u64,
        );
        if tick % 5 == 1 {
            record(
                listener_closed(ports.listener_closed, &mut keep),
                &counts.listener_closed,
                LISTENER_CLOSED_QUEUED as u64,
            );
        }
        // The full listener closes after its time (its queued connections are reset then).
        if self
            .overflow
            .as_ref()
            .is_some_and(|(opened, _)| tick >= opened + OVERFLOW_TICKS)
        {
            self.overflow = None;
        }
        if tick % 10 == 2 && self.overflow.is_none() {
            let mut sockets = Vec::new();
            let result = overflow(ports.overflow, &mut sockets);
            if result.is_ok() {
                self.overflow = Some((tick, sockets));
            }
            record(result, &counts.overflow_syns, OVERFLOW_SYNS as u64);
        }
        let name = format!("rst-soak-{}-{tick}", std::process::id());
        if tick.is_multiple_of(2) {
            record(namespace(&name, ports.closed, None), &counts.namespaces, 1);
        } else {
            let scope = self
                .cgroup_parent
                .join(format!("docker-{}.scope", container_id(tick)));
            record(
                namespace(&name, ports.closed, Some(&scope)),
                &counts.cgroups,
                1,
            );
        }
        self.keep = keep;
    }
}

/// A 64-hex-digit id, as docker names a container's scope, different for every tick.
fn container_id(tick: u64) -> String {
    let pid = u64::from(std::process::id());
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        0x50a4_0000_0000_0000u64 | pid,
        tick,
        tick.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        pid.wrapping_mul(0xff51_afd7_ed55_8ccd)
    )
}

fn refused(port: u16) -> anyhow::Result<()> {
    for _ in 0..REFUSED_PER_TICK {
        match TcpStream::connect(loopback::addr(port)) {
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(error) => return Err(error).context("a connect to the closed port failed"),
            Ok(_) => bail!("127.0.0.1:{port} accepted a connection: the port is not closed"),
        }
    }
    Ok(())
}

/// bash's /dev/tcp: one refused connect from a process that lives a few milliseconds.
fn bash_connect(port: u16) -> String {
    format!("exec 3<>/dev/tcp/127.0.0.1/{port}")
}

fn processes(port: u16) -> anyhow::Result<()> {
    for _ in 0..PROCESSES_PER_TICK {
        let status = Command::new("bash")
            .args(["-c", &bash_connect(port)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("could not run bash")?;
        if status.success() {
            bail!("bash connected to 127.0.0.1:{port}: the port is not closed");
        }
    }
    Ok(())
}

/// Connects to `listener` and accepts the connection: the client's and the server's end.
fn pair(listener: &TcpListener, port: u16) -> anyhow::Result<(Socket, TcpStream)> {
    let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    client
        .connect(&loopback::addr(port).into())
        .with_context(|| format!("a connect to 127.0.0.1:{port} failed"))?;
    let (server, _) = listener
        .accept()
        .with_context(|| format!("the listener on {port} did not accept"))?;
    Ok((client, server))
}

/// S4: the client closes with SO_LINGER 0 (linger_abort; the server receives peer_abort).
fn linger(listener: &TcpListener, port: u16, keep: &mut Vec<TcpStream>) -> anyhow::Result<()> {
    for _ in 0..LINGER_PER_TICK {
        let (client, server) = pair(listener, port)?;
        client.set_linger(Some(Duration::ZERO))?;
        drop(client);
        keep.push(server);
    }
    Ok(())
}

/// S5: the server closes with the client's request unread (unread_data_close).
fn unread(listener: &TcpListener, port: u16, keep: &mut Vec<TcpStream>) -> anyhow::Result<()> {
    for _ in 0..UNREAD_PER_TICK {
        let (client, server) = pair(listener, port)?;
        let mut client: TcpStream = client.into();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
        // Loopback delivers before write returns; the wait covers a busy softirq.
        thread::sleep(Duration::from_millis(2));
        drop(server);
        keep.push(client);
    }
    Ok(())
}

/// S3: the server closes an idle connection, the client writes on it afterwards
/// (data_after_close sent, stale_connection_reuse received).
fn stale(listener: &TcpListener, port: u16, keep: &mut Vec<TcpStream>) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for _ in 0..STALE_PER_TICK {
        let (client, server) = pair(listener, port)?;
        drop(server);
        clients.push(TcpStream::from(client));
    }
    // The FINs have arrived; the clients are in CLOSE_WAIT.
    thread::sleep(Duration::from_millis(20));
    for mut client in clients {
        client.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
        keep.push(client);
    }
    Ok(())
}

/// S8: a listener closes with connections in its accept queue (listener_closed).
fn listener_closed(port: u16, keep: &mut Vec<TcpStream>) -> anyhow::Result<()> {
    let listener = loopback::listen(port, 8)?;
    for _ in 0..LISTENER_CLOSED_QUEUED {
        let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        client.connect(&loopback::addr(port).into())?;
        keep.push(client.into());
    }
    drop(listener);
    Ok(())
}

/// S6: a listener with backlog 1 that never accepts, filled, then SYNs it drops
/// (accept_queue_full, from the listener sampler). The sockets live until the caller drops them.
fn overflow(port: u16, sockets: &mut Vec<Socket>) -> anyhow::Result<()> {
    let listener = loopback::listen(port, 1)?;
    // Full at backlog + 1.
    for _ in 0..2 {
        let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        client
            .connect_timeout(&loopback::addr(port).into(), Duration::from_secs(2))
            .context("filling the accept queue")?;
        sockets.push(client);
    }
    for _ in 0..OVERFLOW_SYNS {
        let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        client.set_nonblocking(true)?;
        match client.connect(&loopback::addr(port).into()) {
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Ok(()) => {}
            Err(error) => return Err(error).context("a connect to the full listener failed"),
        }
        sockets.push(client);
    }
    sockets.push(listener);
    Ok(())
}

/// A network namespace that lives for one refused connect on its own loopback, then goes; with
/// `scope`, the connecting process first joins that cgroup (named as docker names a container's),
/// which is removed afterwards. A cgroup must be joined before entering the namespace: under
/// `ip netns exec` /sys is the namespace's.
fn namespace(name: &str, port: u16, scope: Option<&Path>) -> anyhow::Result<()> {
    run("ip", &["netns", "add", name])?;
    let result = (|| {
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        let connect = format!("ip netns exec {name} bash -c '{}'", bash_connect(port));
        let script = match scope {
            Some(scope) => {
                fs::create_dir(scope)
                    .with_context(|| format!("could not create cgroup {}", scope.display()))?;
                format!(
                    "echo $$ > {}/cgroup.procs && exec {connect}",
                    scope.display()
                )
            }
            None => format!("exec {connect}"),
        };
        // The connect is refused, so bash exits 1: only a failure to start counts.
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("could not run bash")?;
        Ok(())
    })();
    let removed = run("ip", &["netns", "del", name]);
    if let Some(scope) = scope {
        remove_cgroup(scope);
    }
    result.and(removed)
}

/// Removes an emptied cgroup; its last process may take a moment to leave it.
fn remove_cgroup(path: &Path) {
    for _ in 0..50 {
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
