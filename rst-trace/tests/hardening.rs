//! Issue 14, through the real binary as root: hostile local users (process names with control
//! bytes, planted symlinks, floods of names and of idle metrics connections), bad numbers, a
//! full disk, and the capabilities rst-trace keeps once its programs are attached. Loopback and
//! test-made namespaces only.

mod common;

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use common::{netns::TestNetns, *};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// A process name that clears the screen and forges an event line when printed raw (14 bytes:
/// the kernel keeps 15).
const HOSTILE_NAME: &[u8] = b"a\x1b[2J\nSENT 1 s";
/// How rst-trace shows it on a terminal.
const HOSTILE_ESCAPED: &str = r"a\x1b[2J\nSENT 1 s";
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Raw forks (children that run syscalls only) take this, so that a socket a test hands to its
/// child is not also inherited by another test's child forked at the same moment.
static FORK: Mutex<()> = Mutex::new(());

/// A forked child named `name` that waits for [`Forked::go_and_wait`], then runs its body.
struct Forked {
    pid: i32,
    go: i32,
}

impl Forked {
    /// `body` runs in the child of a process with threads: syscalls only, no allocation or
    /// locks. Its return value is the child's exit status.
    fn new(name: &[u8], body: impl FnOnce() -> i32) -> Self {
        let mut comm = [0u8; 16];
        comm[..name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
        let mut go = [0i32; 2];
        // SAFETY: pipe(2) into a local array.
        assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
        // SAFETY: the child runs only syscalls on memory prepared before the fork, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: prctl, read and _exit on memory of this process.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
                let mut byte = 0u8;
                libc::read(go[0], (&mut byte as *mut u8).cast(), 1);
                let status = body();
                libc::_exit(status);
            }
        }
        // SAFETY: closing our copy of the child's end.
        unsafe { libc::close(go[0]) };
        Self { pid, go: go[1] }
    }

    fn go_and_wait(&self) {
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

impl Drop for Forked {
    fn drop(&mut self) {
        // SAFETY: closing our pipe end lets a waiting child exit; then it is reaped.
        unsafe {
            libc::close(self.go);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}

/// One connect to a closed port, in a forked child: true when it was refused.
fn refused_connect(addr: &libc::sockaddr_in) -> bool {
    // SAFETY: socket, connect and close with a sockaddr_in that lives across the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let refused = fd >= 0
            && libc::connect(
                fd,
                (addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0;
        libc::close(fd);
        refused
    }
}

/// A child named [`HOSTILE_NAME`] that connects once to the closed `port`.
fn hostile_client(port: u16) -> Forked {
    let addr = loopback(port);
    let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
    Forked::new(HOSTILE_NAME, move || i32::from(!refused_connect(&addr)))
}

/// rst-trace in text mode, its output collected as it comes.
struct Running {
    child: std::process::Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        require_root();
        let mut child = Command::new(BINARY)
            .args(args)
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rst-trace");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = |mut from: Box<dyn std::io::Read + Send>, into: Arc<Mutex<Vec<u8>>>| {
            thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut chunk) {
                    into.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            })
        };
        let readers = vec![
            pipe(
                Box::new(child.stdout.take().expect("stdout")),
                stdout.clone(),
            ),
            pipe(
                Box::new(child.stderr.take().expect("stderr")),
                stderr.clone(),
            ),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until `text` appears in what `output` (stdout or stderr) printed.
    fn wait_for(&self, text: &str, output: impl Fn(&Self) -> String) {
        let started = Instant::now();
        while !output(self).contains(text) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no {text:?} within 60 s:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_until_tracing(&self) {
        self.wait_for("rst-trace: tracing ", Self::stderr);
    }

    /// SIGINT, as Ctrl-C.
    fn interrupt(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// Waits for it to end by itself (--count, --duration): its raw stdout, and stderr.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<u8>, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("rst-trace did not exit:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("reader");
        }
        let stdout = self.stdout.lock().unwrap().clone();
        (status, stdout, self.stderr())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scratch directory under the temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rst-trace-{tag}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ndjson(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .expect("the --output file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("NDJSON"))
        .collect()
}

/// The received reset of the hostile client, from the --output file.
fn hostile_receive(events: &[Value], client: &Forked) -> Value {
    let event = events
        .iter()
        .find(|e| kind(e) == "reset_received" && pid_of(e) == client.pid as u64)
        .unwrap_or_else(|| panic!("no reset received by the client: {events:?}"))
        .clone();
    // JSON carries the raw name, correctly escaped by serde_json.
    assert_eq!(
        event["process"]["comm"],
        std::str::from_utf8(HOSTILE_NAME).expect("ASCII")
    );
    event
}

fn assert_no_raw_control_bytes(stdout: &[u8]) {
    let text = String::from_utf8_lossy(stdout);
    assert!(
        !stdout.contains(&0x1b),
        "a raw ESC reached stdout: {text:?}"
    );
    assert!(
        !text.lines().any(|line| line.starts_with("SENT 1 s")),
        "a forged line: {text:?}"
    );
}

#[test]
fn finding1_a_hostile_process_name_is_escaped_in_text_lines_and_explanations() {
    let port = closed_port("127.0.0.1");
    let scratch = Scratch::new("injection");
    let file = scratch.path("events.ndjson");
    let file_arg = file.to_str().expect("UTF-8 path");
    let port_arg = port.to_string();
    let client = hostile_client(port);
    let tracer = Running::start(&[
        "--port",
        &port_arg,
        "--count",
        "2",
        "--duration",
        "30",
        "--color",
        "never",
        "--output",
        file_arg,
    ]);
    tracer.wait_until_tracing();
    client.go_and_wait();
    let (status, stdout, stderr) = tracer.finish();
    assert!(status.success(), "{stderr}");
    assert_no_raw_control_bytes(&stdout);

    let event = hostile_receive(&ndjson(&file), &client);
    let time = &event["time"].as_str().expect("time")[11..26];
    let expected_line = format!(
        "{time:<15} {:<4} {:<7} {:<15} {:<23} {:<23} {:<11} {:<22} {}",
        "RECV",
        client.pid,
        HOSTILE_ESCAPED,
        format!("127.0.0.1:{}", local_port_of(&event)),
        format!("127.0.0.1:{port}"),
        "SYN_SENT",
        "-",
        "connection_refused"
    );
    let expected_explanation = format!(
        "    -> {HOSTILE_ESCAPED} (pid {}) connected to 127.0.0.1:{port}, where nothing listens \
         (connection refused); nothing has listened there since rst-trace started",
        client.pid
    );
    let text = String::from_utf8(stdout).expect("UTF-8 text");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|line| *line == expected_line)
        .unwrap_or_else(|| panic!("no line\n{expected_line}\nin:\n{text}"));
    assert_eq!(
        lines.get(at + 1),
        Some(&expected_explanation.as_str()),
        "{text}"
    );
}

#[test]
fn finding1_a_hostile_process_name_is_escaped_in_summary_rows() {
    let port = closed_port("127.0.0.1");
    let scratch = Scratch::new("injection-summary");
    let file = scratch.path("events.ndjson");
    let port_arg = port.to_string();
    let client = hostile_client(port);
    let tracer = Running::start(&[
        "--port",
        &port_arg,
        "--summary",
        "1",
        "--duration",
        "4",
        "--output",
        file.to_str().expect("UTF-8 path"),
    ]);
    tracer.wait_until_tracing();
    client.go_and_wait();
    let (status, stdout, stderr) = tracer.finish();
    assert!(status.success(), "{stderr}");
    assert_no_raw_control_bytes(&stdout);

    // The event reached the file too, with the name intact.
    let _event = hostile_receive(&ndjson(&file), &client);
    let text = String::from_utf8(stdout).expect("UTF-8 text");
    let totals = text
        .split("rst-trace summary, totals:")
        .nth(1)
        .unwrap_or_else(|| panic!("no totals: {text}"));
    // Rows are by the service end's port: the closed port connected to.
    let expected = format!(
        "{:<24} {:<4} {:<28} {:>6} {:>9} ",
        "connection_refused",
        "RECV",
        format!("{HOSTILE_ESCAPED} ({})", client.pid),
        port,
        1
    );
    assert!(
        totals.lines().any(|line| line.starts_with(&expected)),
        "no row starting\n{expected}\nin:\n{totals}"
    );
}

/// Non-blocking connects from inside the namespace that keep retransmitting SYNs.
fn connect_many(netns: &TestNetns, to: SocketAddr, count: usize) -> Vec<Socket> {
    netns.run(|| {
        (0..count)
            .map(|_| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                socket.set_nonblocking(true).expect("nonblocking");
                match socket.connect(&to.into()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("connect: {e}"),
                }
                socket
            })
            .collect()
    })
}

#[test]
fn finding1_a_hostile_listener_owner_is_escaped_in_backlog_rows() {
    require_root();
    let netns = TestNetns::new("hostile");
    // The listener is handed to a child with the hostile name, which never accepts; the test
    // closes its own copy so that the child is the only owner.
    let (child, port) = {
        let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
        let (listener, port) = netns.run(|| listener("127.0.0.1", 1));
        let child = Forked::new(HOSTILE_NAME, || 0);
        drop(listener);
        (child, port)
    };
    let inode = netns.inode().to_string();
    let backlog = Running::start(&[
        "backlog",
        "--interval",
        "1",
        "--duration",
        "6",
        "--netns",
        &inode,
    ]);
    backlog.wait_for("rst-trace backlog: reading every listener", Running::stdout);
    // The first sample is the baseline.
    thread::sleep(Duration::from_millis(1500));
    let clients = connect_many(
        &netns,
        format!("127.0.0.1:{port}").parse().expect("addr"),
        6,
    );
    let started = Instant::now();
    while netns.tcp_ext("ListenOverflows") < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "no overflow");
        thread::sleep(Duration::from_millis(50));
    }
    drop(clients);
    let (status, stdout, stderr) = backlog.finish();
    child.go_and_wait();
    assert!(status.success(), "{stderr}");
    assert_no_raw_control_bytes(&stdout);
    let expected = format!(
        " no container netns {inode} listen 127.0.0.1:{port} {HOSTILE_ESCAPED} (pid {}): ",
        child.pid
    );
    let text = String::from_utf8(stdout).expect("UTF-8 text");
    assert!(text.contains(&expected), "no\n{expected}\nin:\n{text}");
}

#[test]
fn finding2_output_refuses_a_symlink_planted_by_another_user() {
    require_root();
    let scratch = Scratch::new("symlink");
    let victim = scratch.path("victim.sh");
    fs::write(&victim, "#!/bin/sh\necho safe\n").expect("write victim");
    // A directory another user owns (not sticky: the kernel's protected_symlinks does not help).
    let planted = scratch.path("planted");
    fs::create_dir(&planted).expect("mkdir");
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).expect("chown");
    let link = planted.join("events.ndjson");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "ln",
            "-s",
        ])
        .arg(&victim)
        .arg(&link)
        .output()
        .expect("setpriv (util-linux)");
    assert!(out.status.success(), "{out:?}");

    let out = Command::new(BINARY)
        .args(["--duration", "1", "--output"])
        .arg(&link)
        .output()
        .expect("run rst-trace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "rst-trace: refusing to write --output to {}: it is a symbolic link; give the path \
             of the file itself\n",
            link.display()
        )
    );
    assert_eq!(
        fs::read_to_string(&victim).expect("victim"),
        "#!/bin/sh\necho safe\n"
    );
}

#[test]
fn finding2_output_files_are_created_readable_by_root_only() {
    require_root();
    let scratch = Scratch::new("mode");
    let file = scratch.path("events.ndjson");
    let out = Command::new(BINARY)
        .args(["--duration", "0.5", "--output"])
        .arg(&file)
        .output()
        .expect("run rst-trace");
    assert!(out.status.success(), "{out:?}");
    let mode = fs::metadata(&file).expect("created").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

/// A plain HTTP/1.0 GET: (status, body).
fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The address rst-trace said it serves metrics on.
fn metrics_address(stderr: &str) -> SocketAddr {
    let line = stderr
        .lines()
        .find_map(|line| line.strip_prefix("rst-trace: serving metrics at http://"))
        .unwrap_or_else(|| panic!("no metrics address in:\n{stderr}"));
    line.strip_suffix("/metrics")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {line}"))
}

/// A loopback address for --metrics (a port bound once, then released). Tests of other findings
/// choose their port, so that they do not depend on finding 10's printed address.
fn free_loopback_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], closed_port("127.0.0.1")))
}

/// The value of the sample line that starts with `series` (name and labels).
fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn finding3_a_flood_of_process_names_does_not_take_a_later_process_series() {
    let port = closed_port("127.0.0.1");
    let metrics = free_loopback_address();
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--metrics",
        &metrics.to_string(),
        // One process's resets at one port fold together past 20 a second under the first
        // name; the flood must reach the metrics name by name.
        "--fold-after",
        "0",
    ]);
    // More names than the cap on reset series (500), one process renaming itself.
    let names: Vec<[u8; 16]> = (0..560)
        .map(|n| {
            let mut name = [0u8; 16];
            let text = format!("junk{n}");
            name[..text.len()].copy_from_slice(text.as_bytes());
            name
        })
        .collect();
    let addr = loopback(port);
    let flood = {
        let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
        Forked::new(b"junk", || {
            for name in &names {
                // SAFETY: prctl with a NUL-terminated name made before the fork.
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
                if !refused_connect(&addr) {
                    return 1;
                }
            }
            0
        })
    };
    flood.go_and_wait();
    tracer.wait_for("the last flooded name", |e| {
        kind(e) == "reset_received" && e["process"]["comm"] == "junk559"
    });
    let real = {
        let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
        Forked::new(b"webapp", move || i32::from(!refused_connect(&addr)))
    };
    real.go_and_wait();
    tracer.wait_for("the real process's reset", |e| {
        kind(e) == "reset_received" && e["process"]["comm"] == "webapp"
    });
    let (status, body) = http_get(metrics, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sample(
            &body,
            r#"rst_trace_resets_total{direction="received",cause="connection_refused",reason="none",comm="webapp",container="none"}"#
        ),
        Some(1),
        "{body}"
    );
    let merged = sample(&body, "rst_trace_series_merged_total").unwrap_or(0);
    assert!(merged >= 60, "{merged} series merged:\n{body}");
    let other = sample(
        &body,
        r#"rst_trace_resets_total{direction="received",cause="connection_refused",reason="none",comm="other",container="other"}"#,
    )
    .unwrap_or(0);
    assert!(other >= 60, "{other} counted under other:\n{body}");
    tracer.stop();
}

#[test]
fn finding4_hundreds_of_idle_connections_do_not_starve_scrapes_or_the_tracer() {
    let port = closed_port("127.0.0.1");
    let metrics = free_loopback_address();
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--metrics",
        &metrics.to_string(),
    ]);
    // The reviewer's setting: 200 file descriptors for everything rst-trace does.
    let limit = libc::rlimit {
        rlim_cur: 200,
        rlim_max: 200,
    };
    // SAFETY: prlimit(2) on our own child with a local struct.
    let rc = unsafe {
        libc::prlimit(
            tracer.pid() as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    // A server that cannot accept leaves later connects waiting in its backlog: they are
    // given up on, and the scrapes below say what that costs.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&metrics, HTTP_TIMEOUT).ok())
        .collect();
    thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let scrape = http_get(metrics, "/metrics");
        assert!(
            matches!(&scrape, Ok((200, body)) if body.contains("rst_trace_lost_events_total")),
            "{scrape:?} with {} idle connections\n{}",
            idle.len(),
            tracer.stderr()
        );
    }
    assert_eq!(idle.len(), 300, "every idle connection was accepted");
    // The tracer still traces, and its namespace sampling still opens what it needs.
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    tracer.wait_for("a reset after the idle connections", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    thread::sleep(Duration::from_millis(2500));
    drop(idle);
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        !finished.stderr.contains("Too many open files") && !finished.stderr.contains("EMFILE"),
        "{}",
        finished.stderr
    );
}

#[test]
fn finding5_numbers_out_of_range_are_one_sentence_and_exit_2() {
    require_root();
    for (args, range) in [
        (
            &["--duration", "1e300"][..],
            "from 0.001 to 315360000 seconds",
        ),
        (&["--duration", "1e19"], "from 0.001 to 315360000 seconds"),
        (&["--duration", "1e-10"], "from 0.001 to 315360000 seconds"),
        (&["--summary", "1e300"], "from 0.1 to 86400 seconds"),
        (&["--summary", "1e-10"], "from 0.1 to 86400 seconds"),
        (
            &["backlog", "--interval", "1e300"],
            "from 0.1 to 86400 seconds",
        ),
        (
            &["backlog", "--interval", "1e-10"],
            "from 0.1 to 86400 seconds",
        ),
        (
            &["backlog", "--duration", "1e19"],
            "from 0.001 to 315360000 seconds",
        ),
    ] {
        let out: Output = Command::new(BINARY).args(args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let value = args[args.len() - 1];
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("error: invalid value '{value}' for '"))
                && first.ends_with(&format!("`{value}` seconds is out of range: give {range}")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn finding6_summary_rows_of_many_ports_are_bounded_and_the_merge_is_said() {
    // Rows are kept per cause, direction, process and service port (a client's ephemeral ports
    // no longer make rows): a scan of this many closed ports makes well over 4096 rows. In a
    // namespace of its own, so that the totals are the scan's alone; not folded, so that every
    // connect is a row's event.
    const PORTS: u16 = 2200;
    const CONNECTS: u64 = PORTS as u64;
    let netns = TestNetns::new("rows");
    let inode = netns.inode().to_string();
    let tracer = Running::start(&["--netns", &inode, "--summary", "1", "--fold-after", "0"]);
    tracer.wait_until_tracing();
    let refused = netns.run(|| {
        (20000..20000 + PORTS)
            .filter(|port| refused_connect(&loopback(*port)))
            .count()
    });
    assert_eq!(refused, usize::from(PORTS));
    thread::sleep(Duration::from_millis(1500));
    tracer.interrupt();
    let (status, stdout, stderr) = tracer.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(
            format!(
                "rst-trace: {} events reported, 0 lost, 0 folded into 0 lines",
                2 * CONNECTS
            )
            .as_str()
        ),
        "{stderr}"
    );
    let text = String::from_utf8(stdout).expect("UTF-8 text");
    let totals = text
        .split("rst-trace summary, totals: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no totals: {text}"));
    assert!(
        totals.starts_with(&format!("{} events in ", 2 * CONNECTS)),
        "{totals}"
    );
    // More than 4096 rows merge all but 2048: at least 2049 rows of one event each.
    let merged: u64 = totals
        .lines()
        .find_map(|line| {
            line.strip_prefix("  ")?
                .strip_suffix(" rows with the fewest events were merged into \"(merged rows)\" rows to bound memory")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no merge line: {totals}"));
    assert!(merged >= 2049, "{totals}");
    let merged_events: u64 = totals
        .lines()
        .filter(|line| line.contains(" (merged rows) "))
        .filter_map(|row| row.split_whitespace().rev().nth(1)?.parse::<u64>().ok())
        .sum();
    assert!(
        merged_events >= merged,
        "each merged row had an event: {totals}"
    );
    // Nothing is lost by merging: the rows shown and the rest add up to every event.
    let shown: u64 = totals
        .lines()
        .skip(2)
        .filter(|line| !line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().rev().nth(1)?.parse::<u64>().ok())
        .sum();
    let rest: u64 = totals
        .lines()
        .find_map(|line| {
            let (_, events) = line.strip_prefix("  ... ")?.split_once(" more rows, ")?;
            events.strip_suffix(" events")?.parse().ok()
        })
        .unwrap_or(0);
    assert_eq!(shown + rest, 2 * CONNECTS, "{totals}");
}

#[test]
fn finding7_a_full_disk_keeps_tracing_warns_once_and_counts_what_it_could_not_write() {
    let port = closed_port("127.0.0.1");
    let metrics = free_loopback_address();
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--output",
        "/dev/full",
        "--metrics",
        &metrics.to_string(),
    ]);
    for round in 1..=2 {
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        let started = Instant::now();
        while tracer
            .events()
            .iter()
            .filter(|e| kind(e) == "reset_sent")
            .count()
            < 2 * round
        {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "tracing stopped:\n{}",
                tracer.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
        // Let a flush fail, and the once-a-second metrics update see it.
        thread::sleep(Duration::from_millis(1500));
    }
    let reported = tracer.events().len() as u64;
    let (status, body) = http_get(metrics, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&body, "rst_trace_unwritten_events_total"),
        Some(reported),
        "{body}"
    );
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(finished.events.len() as u64, reported);
    let warnings: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|line| line.contains("cannot write to /dev/full"))
        .collect();
    assert_eq!(
        warnings,
        [
            "rst-trace: warn: cannot write to /dev/full (No space left on device (os error 28)): \
          tracing and metrics go on, and the events not written are counted (said once)"
        ],
        "{}",
        finished.stderr
    );
    assert_eq!(
        finished.stderr.lines().last(),
        Some(
            format!(
                "rst-trace: {reported} events reported, 0 lost, 0 folded into 0 lines, {reported} \
                 not written to /dev/full"
            )
            .as_str()
        ),
        "{}",
        finished.stderr
    );
}

/// CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21) and CAP_BPF (39), as
/// /proc/PID/status shows a capability set.
const KEPT_CAPS: &str = "0000008000280004";

#[test]
fn finding8_after_attaching_every_thread_keeps_only_what_it_still_needs() {
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let tasks: Vec<PathBuf> = fs::read_dir(format!("/proc/{}/task", tracer.pid()))
        .expect("tasks")
        .map(|entry| entry.expect("task").path())
        .collect();
    assert!(tasks.len() >= 2, "the main thread and the listener sampler");
    for task in &tasks {
        // A listener sampling thread may have ended since the listing.
        let Ok(status) = fs::read_to_string(task.join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .to_string()
        };
        assert_eq!(
            (
                field("CapEff:"),
                field("CapPrm:"),
                field("CapBnd:"),
                field("CapInh:"),
                field("CapAmb:"),
                field("NoNewPrivs:")
            ),
            (
                KEPT_CAPS.to_string(),
                KEPT_CAPS.to_string(),
                KEPT_CAPS.to_string(),
                "0000000000000000".to_string(),
                "0000000000000000".to_string(),
                "1".to_string()
            ),
            "{}",
            task.display()
        );
    }
    // Still tracing with them.
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    tracer.wait_for("a reset after dropping capabilities", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    tracer.stop();
}

#[test]
fn finding8_check_says_which_capabilities_a_trace_keeps() {
    require_root();
    let out = Command::new(BINARY).arg("check").output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("privileges while tracing: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.starts_with("privileges while tracing: once attached, keeps only CAP_BPF (")
            && line.contains(", CAP_SYS_ADMIN (")
            && line.contains(", CAP_SYS_PTRACE (")
            && line.contains(", CAP_DAC_READ_SEARCH (")
            && line.ends_with("; drops every other capability and sets no_new_privs"),
        "{line}"
    );
}

#[test]
fn finding9_names_that_are_not_utf8_stay_distinct_in_json() {
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let addr = loopback(port);
    // Both would be "x\u{fffd}" with a lossy conversion; the third spells the escape in ASCII.
    let names: [(&[u8], &str); 3] = [
        (b"x\xff", r"x\xff"),
        (b"x\xfe", r"x\xfe"),
        (br"x\xff", r"x\\xff"),
    ];
    for (name, shown) in names {
        let child = {
            let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
            Forked::new(name, move || i32::from(!refused_connect(&addr)))
        };
        child.go_and_wait();
        let event = tracer.wait_for("the child's reset", |e| {
            kind(e) == "reset_received" && pid_of(e) == child.pid as u64
        });
        assert_eq!(event["process"]["comm"], shown, "{event}");
    }
    tracer.stop();
}

#[test]
fn finding10_metrics_on_port_0_says_the_port_it_got() {
    for arg in ["0", ":0"] {
        let tracer = Tracer::start(&["--metrics", arg, "--port", "9"]);
        let addr = metrics_address(&tracer.stderr());
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        let scrape = http_get(addr, "/metrics");
        assert!(matches!(&scrape, Ok((200, _))), "{scrape:?}");
        tracer.stop();
    }
}
