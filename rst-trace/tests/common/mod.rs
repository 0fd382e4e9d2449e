//! Shared harness of the integration tests: run the real rst-trace binary (which loads the real
//! kernel programs), make a scenario happen on loopback, and pick this test's events out of the
//! host-wide stream by their ports and pids.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod cgroup;
pub mod container;
pub mod docker;
pub mod netns;
pub mod prometheus;
use socket2::{Domain, Socket, Type};

pub const BINARY: &str = env!("CARGO_BIN_EXE_rst-trace");

/// Generous: a debug build parses the kernel's BTF and loads programs on a loaded 2-core CI box.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Integration tests load BPF programs: they need root, and fail (never skip) without it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load BPF programs: run them as root (cargo xtask test)"
    );
}

/// A running `rst-trace --json ...`.
pub struct Tracer {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a stopped tracer printed.
pub struct Finished {
    pub status: ExitStatus,
    pub events: Vec<Value>,
    pub stderr: String,
}

impl Tracer {
    /// Starts rst-trace with `--json` and `args`, and waits until its programs are attached.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(BINARY);
        command.arg("--json").args(args);
        Self::start_command(command)
    }

    /// Starts a prepared command line that runs rst-trace with `--json` (under `setpriv`, for
    /// example), and waits until its programs are attached.
    pub fn start_command(mut command: Command) -> Self {
        require_root();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rst-trace");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout_pipe = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let readers = vec![
            {
                let events = Arc::clone(&events);
                thread::spawn(move || {
                    for line in BufReader::new(stdout_pipe).lines() {
                        let Ok(line) = line else { break };
                        let value: Value = serde_json::from_str(&line)
                            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                        events.lock().unwrap().push(value);
                    }
                })
            },
            {
                let stderr = Arc::clone(&stderr);
                thread::spawn(move || {
                    for line in BufReader::new(stderr_pipe).lines() {
                        let Ok(line) = line else { break };
                        let mut text = stderr.lock().unwrap();
                        text.push_str(&line);
                        text.push('\n');
                    }
                })
            },
        ];
        let mut tracer = Self {
            child,
            events,
            stderr,
            readers,
        };
        let started = Instant::now();
        loop {
            if tracer.stderr().contains("rst-trace: tracing ") {
                return tracer;
            }
            if let Ok(Some(status)) = tracer.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "rst-trace exited ({status}) before tracing:\n{}",
                    tracer.stderr()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "rst-trace did not start tracing within {START_TIMEOUT:?}:\n{}",
                tracer.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits for the first event matching `matches`; `what` names it in the failure message.
    pub fn wait_for(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            if let Some(event) = self.events().into_iter().find(|e| matches(e)) {
                return event;
            }
            assert!(
                started.elapsed() < EVENT_TIMEOUT,
                "no event for {what} within {EVENT_TIMEOUT:?}; events seen:\n{}\nstderr:\n{}",
                self.events()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then everything it printed.
    pub fn stop(self) -> Finished {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.finish()
    }

    /// Waits for rst-trace to exit by itself (--count, --duration).
    pub fn finish(mut self) -> Finished {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = self.child.kill();
                panic!("rst-trace did not exit:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        Finished {
            status,
            events: self.events(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts).
pub fn cgroup2_root() -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| std::path::PathBuf::from(mount_point))
        })
        .expect("a cgroup2 mount (/sys/fs/cgroup or /sys/fs/cgroup/unified)")
}

/// A loopback port with nothing listening (bound once by us, then released).
pub fn closed_port(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// A listening socket on `ip` with `backlog`.
pub fn listener(ip: &str, backlog: i32) -> (Socket, u16) {
    let addr: SocketAddr = format!("{}:0", bracket(ip)).parse().expect("addr");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(backlog).expect("listen");
    let port = local_port(&socket);
    (socket, port)
}

/// A client socket bound to an ephemeral port on `ip` before connecting, so its port is known
/// even when the connect fails.
pub fn bound_client(ip: &str) -> (Socket, u16) {
    let addr: SocketAddr = format!("{}:0", bracket(ip)).parse().expect("addr");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    socket.bind(&addr.into()).expect("bind");
    let port = local_port(&socket);
    (socket, port)
}

pub fn sockaddr(ip: &str, port: u16) -> socket2::SockAddr {
    format!("{}:{port}", bracket(ip))
        .parse::<SocketAddr>()
        .expect("addr")
        .into()
}

pub fn local_port(socket: &Socket) -> u16 {
    socket
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet")
        .port()
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The running kernel's format file of a tracepoint (rst-trace mounts tracefs when it starts).
fn tracepoint_format(system: &str, event: &str) -> String {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|root| Path::new(root).join(format!("events/{system}/{event}/format")))
        .find_map(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_else(|| panic!("{system}:{event} format (is tracefs mounted?)"))
}

/// Whether the running kernel's skb:kfree_skb carries a drop reason (5.17+): before, rst-trace
/// reports listen overflows from its listener watcher only, and says that kfree_skb is off.
pub fn kfree_skb_has_reason() -> bool {
    tracepoint_format("skb", "kfree_skb").contains(" reason;")
}

/// Whether BPF tracing programs may ask for a socket's cookie on the running kernel (5.12+: the
/// helper's tracing variant, `bpf_get_socket_ptr_cookie`, is a kernel function). Before, the
/// classic program serves tcp:tcp_receive_reset, whose record carries the cookie.
pub fn tracing_can_ask_for_cookies() -> bool {
    let symbols = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
    symbols
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some("bpf_get_socket_ptr_cookie"))
}

/// The next sequence number `socket` will send, read in TCP_REPAIR mode (root only).
pub fn send_sequence(socket: &Socket) -> u32 {
    use std::os::fd::AsRawFd as _;
    const TCP_REPAIR: libc::c_int = 19;
    const TCP_REPAIR_QUEUE: libc::c_int = 20;
    const TCP_QUEUE_SEQ: libc::c_int = 21;
    const TCP_SEND_QUEUE: libc::c_int = 2;
    let fd = socket.as_raw_fd();
    let set = |option: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt with a pointer to a local int.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                option,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            ret,
            0,
            "setsockopt {option}: {}",
            std::io::Error::last_os_error()
        );
    };
    set(TCP_REPAIR, 1);
    set(TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
    let mut seq: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt into a local u32.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_QUEUE_SEQ,
            (&mut seq as *mut u32).cast(),
            &mut len,
        )
    };
    assert_eq!(ret, 0, "TCP_QUEUE_SEQ: {}", std::io::Error::last_os_error());
    set(TCP_REPAIR, 0);
    seq
}

/// S3 and S9 start alike: the server closed an idle keep-alive connection (its orphaned
/// FIN_WAIT2 connection now lives on as a time-wait socket) while the client, which only ACKed
/// the FIN, sits in CLOSE_WAIT holding the connection in its pool.
pub fn idle_connection_closed_by_server(port: u16, listener: &Socket) -> (Socket, u16) {
    let (client, client_port) = bound_client("127.0.0.1");
    client
        .connect(&sockaddr("127.0.0.1", port))
        .expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop(server);
    // The client reads the FIN (EOF) once it has arrived.
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    assert_eq!(client.recv(&mut buf).expect("the server's FIN"), 0);
    (client, client_port)
}

/// S9: a new SYN on the four-tuple of a connection the server closed (see
/// [`idle_connection_closed_by_server`]) reaches the time-wait socket (a real TIME_WAIT answers
/// everything with an ACK on 6.18, so the time-wait socket of the orphaned connection is the
/// one that resets). It resets a SYN inside its receive window, which starts at the client's
/// next sequence number: TCP_REPAIR reads it. hping3 crafts the SYN from the client's port.
pub fn syn_into_time_wait(client: &Socket, client_port: u16, port: u16) {
    let seq = send_sequence(client);
    let status = std::process::Command::new("hping3")
        .args(["-q", "-S", "-c", "1", "-k", "-M", &seq.to_string()])
        .args([
            "-s",
            &client_port.to_string(),
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("hping3 (cargo xtask setup installs it)");
    assert!(status.code().is_some(), "hping3 did not run");
}

/// The reason name rst-trace reports for resets sent: the kernel's name on 6.10+, null on older
/// kernels whose tcp_send_reset has no reason field.
pub fn sent_reason(name: &str) -> Value {
    if tracepoint_format("tcp", "tcp_send_reset").contains(" reason;") {
        Value::from(name)
    } else {
        Value::Null
    }
}

/// Field accessors that read like the schema.
pub fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or_default()
}

pub fn local_port_of(e: &Value) -> u64 {
    e["local"]["port"].as_u64().unwrap_or_default()
}

pub fn remote_port_of(e: &Value) -> u64 {
    e["remote"]["port"].as_u64().unwrap_or_default()
}

pub fn pid_of(e: &Value) -> u64 {
    e["process"]["pid"].as_u64().unwrap_or_default()
}

/// Parses the closing line `rst-trace: N events reported, M lost`.
pub fn closing_counts(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .rev()
        .find(|line| line.contains(" events reported, "))
        .unwrap_or_else(|| panic!("no closing line in:\n{stderr}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// What a forked client does once told to go.
#[derive(Clone, Copy)]
pub enum ClientAction {
    /// Close its established connection with SO_LINGER {on, 0}: a RST from its own context.
    LingerAbort,
    /// Connect this many times to the (closed) port: a RST sent and one received each time.
    RefusedConnects(u32),
    /// A storm: connect to the (closed) port over and over, `max` times or for `millis`
    /// milliseconds, whichever ends first; [`ForkedClient::connects`] then says how many.
    RefusedConnectsFor { max: u32, millis: u32 },
    /// Listen on 127.0.0.1 (an ephemeral port, reported like [`ClientAction::LingerAbort`]'s)
    /// with this backlog, never accept, and close the listener on go: the resets of whatever
    /// connections are queued then fire in this process, the listener's only holder.
    ListenAndClose { backlog: i32 },
}

/// A forked client process that runs only async-signal-safe syscalls (the test process has
/// threads), and waits for [`ForkedClient::go_and_wait`] before it acts.
pub struct ForkedClient {
    pub pid: i32,
    go: i32,
    report: i32,
}

impl ForkedClient {
    /// Forks a client of 127.0.0.1:`port`. For [`ClientAction::LingerAbort`] it connects first
    /// and reports its local port ([`ForkedClient::port`]); for [`ClientAction::ListenAndClose`]
    /// `port` is unused and the port reported is the listener's.
    pub fn fork(port: u16, action: ClientAction) -> Self {
        let mut go = [0i32; 2];
        let mut report = [0i32; 2];
        // SAFETY: pipe(2) into local arrays.
        assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
        assert_eq!(unsafe { libc::pipe(report.as_mut_ptr()) }, 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the child calls only syscalls on memory prepared before fork, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe { client_child(action, go[0], report[1], &addr) };
        }
        // SAFETY: closing our copies of the child's pipe ends.
        unsafe {
            libc::close(go[0]);
            libc::close(report[1]);
        }
        Self {
            pid,
            go: go[1],
            report: report[0],
        }
    }

    /// The local port the child connected from.
    pub fn port(&self) -> u16 {
        let mut bytes = [0u8; 2];
        // SAFETY: read(2) into a local buffer.
        let n = unsafe { libc::read(self.report, bytes.as_mut_ptr().cast(), 2) };
        assert_eq!(n, 2, "child did not report its port");
        u16::from_ne_bytes(bytes)
    }

    /// How many refused connects a [`ClientAction::RefusedConnectsFor`] child made (after
    /// [`ForkedClient::go_and_wait`]).
    pub fn connects(&self) -> u32 {
        let mut bytes = [0u8; 4];
        // SAFETY: read(2) into a local buffer.
        let n = unsafe { libc::read(self.report, bytes.as_mut_ptr().cast(), 4) };
        assert_eq!(n, 4, "child did not report its connects");
        u32::from_ne_bytes(bytes)
    }

    /// Lets the child act, and waits for it to exit.
    pub fn go_and_wait(&self) {
        // SAFETY: write(2) and waitpid(2) on our own pipe and child.
        unsafe {
            assert_eq!(libc::write(self.go, [1u8].as_ptr().cast(), 1), 1);
            let mut status = 0;
            assert_eq!(libc::waitpid(self.pid, &mut status, 0), self.pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child failed with status {status}"
            );
        }
    }
}

impl Drop for ForkedClient {
    fn drop(&mut self) {
        // SAFETY: closing our pipe ends; reaping the child if a failed test left it behind.
        unsafe {
            libc::close(self.go);
            libc::close(self.report);
            libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
}

/// Body of the forked child: syscalls only.
unsafe fn client_child(action: ClientAction, go: i32, report: i32, addr: &libc::sockaddr_in) -> ! {
    unsafe {
        // The child inherited every descriptor of the test process, other tests' sockets among
        // them: holding one would move that socket's final close, and the resets it sends, into
        // this process. Only the two pipe ends are kept.
        let (low, high) = (go.min(report) as u32, go.max(report) as u32);
        libc::syscall(libc::SYS_close_range, 3u32, low - 1, 0u32);
        libc::syscall(libc::SYS_close_range, low + 1, high - 1, 0u32);
        libc::syscall(libc::SYS_close_range, high + 1, u32::MAX, 0u32);
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let connect = || {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let ok =
                fd >= 0 && libc::connect(fd, (addr as *const libc::sockaddr_in).cast(), len) == 0;
            (fd, ok)
        };
        let wait_for_go = || {
            let mut byte = 0u8;
            libc::read(go, (&mut byte as *mut u8).cast(), 1);
        };
        match action {
            ClientAction::LingerAbort => {
                let (fd, ok) = connect();
                if !ok {
                    libc::_exit(2);
                }
                let mut local: libc::sockaddr_in = std::mem::zeroed();
                let mut local_len = len;
                libc::getsockname(
                    fd,
                    (&mut local as *mut libc::sockaddr_in).cast(),
                    &mut local_len,
                );
                let port = u16::from_be(local.sin_port).to_ne_bytes();
                libc::write(report, port.as_ptr().cast(), 2);
                wait_for_go();
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    size_of::<libc::linger>() as libc::socklen_t,
                );
                libc::close(fd);
            }
            ClientAction::RefusedConnects(count) => {
                wait_for_go();
                for _ in 0..count {
                    let (fd, ok) = connect();
                    if ok {
                        libc::_exit(3);
                    }
                    libc::close(fd);
                }
            }
            ClientAction::RefusedConnectsFor { max, millis } => {
                // CLOCK_MONOTONIC through the vDSO: async-signal-safe, and cheap beside a connect.
                let now_ms = || {
                    let mut now: libc::timespec = std::mem::zeroed();
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
                    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
                };
                wait_for_go();
                let end = now_ms() + u64::from(millis);
                let mut made: u32 = 0;
                while made < max && now_ms() < end {
                    let (fd, ok) = connect();
                    if ok {
                        libc::_exit(3);
                    }
                    // Only a refused connect made a reset each way: anything else would make
                    // the count wrong, so the child fails instead.
                    if fd < 0 || *libc::__errno_location() != libc::ECONNREFUSED {
                        libc::_exit(4);
                    }
                    made += 1;
                    libc::close(fd);
                }
                libc::write(report, made.to_ne_bytes().as_ptr().cast(), 4);
            }
            ClientAction::ListenAndClose { backlog } => {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let mut local = *addr;
                local.sin_port = 0;
                if fd < 0
                    || libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
                    || libc::listen(fd, backlog) != 0
                {
                    libc::_exit(5);
                }
                let mut bound: libc::sockaddr_in = std::mem::zeroed();
                let mut bound_len = len;
                libc::getsockname(
                    fd,
                    (&mut bound as *mut libc::sockaddr_in).cast(),
                    &mut bound_len,
                );
                let port = u16::from_be(bound.sin_port).to_ne_bytes();
                libc::write(report, port.as_ptr().cast(), 2);
                wait_for_go();
                libc::close(fd);
            }
        }
        libc::_exit(0)
    }
}
