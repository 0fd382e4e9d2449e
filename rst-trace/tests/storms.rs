//! Storms (issue 12), through the real binary against the real kernel: past `--fold-after` events
//! of one key a second the kernel counts instead of sending, and rst-trace reports each key's
//! count once a second as one folded event. These tests make real storms (refused connects on
//! loopback, a SYN flood from random source addresses inside a namespace of their own) and
//! check that nothing is lost or counted twice: folded counts plus single events equal the
//! connects made, or the namespace's own `TcpOutRsts`, exactly; and that the rare resets made
//! during a storm keep their own events and causes.

mod common;

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use common::{cgroup::TestCgroup, netns::TestNetns, *};
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};

/// `--fold-after` of these tests: the default.
const FOLD_AFTER: u64 = 20;
/// How long a storm lasts: long enough to span several of the kernel's one-second windows and
/// of the reader's takes, short enough for a test.
const STORM_MS: u32 = 2000;
/// A storm's cap on connects: it ends at STORM_MS long before this on any machine seen.
const STORM_MAX: u32 = 1_000_000;

/// Single events, and folded events with the counts they stand for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    single: u64,
    folded: u64,
    folded_lines: u64,
}

impl Tally {
    fn of<'a>(events: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut tally = Self::default();
        for event in events {
            match &event["folded"] {
                Value::Null => tally.single += 1,
                folded => {
                    tally.folded += folded["count"].as_u64().expect("folded count");
                    tally.folded_lines += 1;
                }
            }
        }
        tally
    }

    /// The resets these events stand for.
    fn total(&self) -> u64 {
        self.single + self.folded
    }
}

/// The exit line: `rst-trace: N events reported, L lost, F folded into K lines`.
#[derive(Debug, PartialEq, Eq)]
struct ExitLine {
    reported: u64,
    lost: u64,
    folded: u64,
    folded_lines: u64,
}

fn exit_line(stderr: &str) -> ExitLine {
    let line = stderr
        .lines()
        .rev()
        .find(|line| line.contains(" events reported, ") && line.contains(" folded into "))
        .unwrap_or_else(|| panic!("no exit line in:\n{stderr}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 4, "{line}");
    ExitLine {
        reported: numbers[0],
        lost: numbers[1],
        folded: numbers[2],
        folded_lines: numbers[3],
    }
}

/// The exit line agrees with the events printed: single events reported, folded counts and
/// their lines, and nothing lost.
fn assert_exit_line_matches(stderr: &str, events: &[Value]) {
    let all = Tally::of(events);
    assert_eq!(
        exit_line(stderr),
        ExitLine {
            reported: all.single,
            lost: 0,
            folded: all.folded,
            folded_lines: all.folded_lines,
        },
        "{stderr}"
    );
}

/// Forks a client from a thread named `name`: the child's task name (`comm`) is the name of the
/// thread that forked it, so the events it causes name it.
fn fork_named(name: &str, port: u16, action: ClientAction) -> ForkedClient {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || ForkedClient::fork(port, action))
        .expect("spawn the forking thread")
        .join()
        .expect("fork")
}

/// Runs `f` in a thread named `name`: sockets it connects, accepts or closes are recorded with
/// that task name.
fn in_thread<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(scope, f)
            .expect("spawn")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A storm client: refused connects to `port` for STORM_MS, from a process named `storm`.
fn storm_client(port: u16) -> ForkedClient {
    fork_named(
        "storm",
        port,
        ClientAction::RefusedConnectsFor {
            max: STORM_MAX,
            millis: STORM_MS,
        },
    )
}

/// Lets a storm client go and runs `during` while it storms; returns the connects it made and
/// what `during` returned.
fn storm<T>(client: &ForkedClient, during: impl FnOnce() -> T) -> (u64, T) {
    let result = thread::scope(|scope| {
        let storming = scope.spawn(|| client.go_and_wait());
        let result = during();
        storming.join().expect("storm");
        result
    });
    (u64::from(client.connects()), result)
}

/// A connect to a closed loopback port from this process; it must be refused.
fn refused_connect(port: u16) {
    let error = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// The resets sent for the closed `port` (no socket, so no owner).
fn sent_for_closed(port: u16) -> impl Fn(&&Value) -> bool {
    move |e| kind(e) == "reset_sent" && e["local"]["port"] == port
}

/// The resets the refused connects of process `pid` to `port` received.
fn refused_in(pid: u32, port: u16) -> impl Fn(&&Value) -> bool {
    move |e| kind(e) == "reset_received" && e["remote"]["port"] == port && pid_of(e) == pid as u64
}

fn timestamp(value: &Value) -> jiff::Timestamp {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    // rst-trace's own form of RFC 3339: UTC, nine digits of fraction.
    assert!(
        text.len() == "2026-12-01T14:45:24.123456789Z".len() && text.ends_with('Z'),
        "{text}"
    );
    text.parse()
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {text}"))
}

/// A folded event's count and times: more than none, first no later than last.
fn assert_folded_fields(event: &Value) -> (u64, jiff::Timestamp, jiff::Timestamp) {
    let folded = &event["folded"];
    let count = folded["count"].as_u64().expect("count");
    assert!(count > 0, "{event}");
    let (first, last) = (timestamp(&folded["first"]), timestamp(&folded["last"]));
    assert!(first <= last, "{event}");
    (count, first, last)
}

/// When the events happened, from the earliest to the latest (folded ones span their first and
/// last).
fn span(events: &[&Value]) -> (jiff::Timestamp, jiff::Timestamp) {
    let times = events.iter().flat_map(|e| match &e["folded"] {
        Value::Null => vec![timestamp(&e["time"])],
        folded => vec![timestamp(&folded["first"]), timestamp(&folded["last"])],
    });
    let (mut earliest, mut latest) = (jiff::Timestamp::MAX, jiff::Timestamp::MIN);
    for time in times {
        earliest = earliest.min(time);
        latest = latest.max(time);
    }
    (earliest, latest)
}

/// The kernel's one-second windows a stretch of `elapsed` can touch.
fn windows(elapsed: Duration) -> u64 {
    elapsed.as_secs() + 2
}

/// CPUs online: the kernel counts new keys per CPU (not only those this process may run on).
fn cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(online).unwrap_or(1).max(1)
}

/// rst-trace in text or `--summary` mode (what [`Tracer`] cannot read), its output in files.
struct RawTracer {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// What a stopped [`RawTracer`] printed.
struct RawOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl RawTracer {
    fn start(tag: &str, args: &[&str]) -> Self {
        require_root();
        let stdout = scratch_file(&format!("{tag}.out"));
        let stderr = scratch_file(&format!("{tag}.err"));
        let child = Command::new(BINARY)
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn rst-trace");
        let mut tracer = Self {
            child,
            stdout,
            stderr,
        };
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(&tracer.stderr).unwrap_or_default();
            if text.contains("rst-trace: tracing ") {
                return tracer;
            }
            if let Ok(Some(status)) = tracer.child.try_wait() {
                panic!("rst-trace {args:?} exited ({status}) before tracing:\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "rst-trace {args:?} did not start tracing within 60 s:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then everything it printed.
    fn stop(mut self) -> RawOutput {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "rst-trace did not exit on SIGTERM"
            );
            thread::sleep(Duration::from_millis(10));
        };
        RawOutput {
            status,
            stdout: fs::read_to_string(&self.stdout).expect("stdout"),
            stderr: fs::read_to_string(&self.stderr).expect("stderr"),
        }
    }
}

impl Drop for RawTracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.stdout);
        let _ = fs::remove_file(&self.stderr);
    }
}

/// A file of this test process in the temporary directory, removed first if a killed earlier
/// run left it.
fn scratch_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("rst-trace-storms-{}-{name}", std::process::id()));
    let _ = fs::remove_file(&path);
    path
}

/// One row of a `--summary` table: `CAUSE DIR PROCESS PORT COUNT RATE/s` (the process is
/// `comm (pid)` or `-`).
#[derive(Debug, PartialEq, Eq)]
struct Row {
    cause: String,
    dir: String,
    process: String,
    port: String,
    count: u64,
}

/// The totals table (printed at exit): its event count, and its rows.
fn summary_totals(stdout: &str) -> (u64, Vec<Row>) {
    let totals = stdout
        .split("rst-trace summary, totals: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no totals table in:\n{stdout}"));
    let events = totals
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event count in the totals:\n{totals}"));
    let rows = totals
        .lines()
        .skip(2) // the title and the column names
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| !line.starts_with("  ")) // "  ... N more rows"
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let n = columns.len();
            assert!(n >= 6, "not a row: {line}");
            Row {
                cause: columns[0].to_string(),
                dir: columns[1].to_string(),
                process: columns[2..n - 3].join(" "),
                port: columns[n - 3].to_string(),
                count: columns[n - 2].parse().expect("count"),
            }
        })
        .collect();
    (events, rows)
}

/// The sum of `rst_trace_resets_total` samples in direction `direction`.
fn resets_total(scrape: &str, direction: &str) -> u64 {
    let prefix = format!("rst_trace_resets_total{{direction=\"{direction}\",");
    scrape
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn storm_one_key_past_the_rate_folds_while_a_slow_key_beside_it_does_not() {
    let storm_port = closed_port("127.0.0.1");
    let slow_port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&[
        "--fold-after",
        &FOLD_AFTER.to_string(),
        "--port",
        &storm_port.to_string(),
        "--port",
        &slow_port.to_string(),
    ]);
    let client = storm_client(storm_port);
    let started = Instant::now();
    // The slow key: 5 connects a second, from this process, for as long as the storm lasts.
    let (storm_connects, slow_connects) = storm(&client, || {
        let mut made = 0u64;
        let storm_ends = started + Duration::from_millis(u64::from(STORM_MS));
        while made < 5 || Instant::now() < storm_ends {
            refused_connect(slow_port);
            made += 1;
            assert!(made < 100, "the storm outlasted 20 s");
            thread::sleep(Duration::from_millis(200));
        }
        made
    });
    let elapsed = started.elapsed();
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let events = &finished.events;

    let storm_sent: Vec<&Value> = events.iter().filter(sent_for_closed(storm_port)).collect();
    let storm_received: Vec<&Value> = events
        .iter()
        .filter(refused_in(client.pid as u32, storm_port))
        .collect();
    for (direction, ours) in [("sent", &storm_sent), ("received", &storm_received)] {
        let tally = Tally::of(ours.iter().copied());
        eprintln!("storm {direction}: {storm_connects} connects in {elapsed:?}, {tally:?}");
        assert_eq!(
            tally.total(),
            storm_connects,
            "{direction}: singles + folded = connects made ({tally:?})"
        );
        assert!(tally.folded_lines > 0, "{direction}: nothing folded");
        // The first FOLD_AFTER of each second go out one by one (twice that: CPUs racing on a
        // key's count may let a few more through).
        assert!(
            tally.single <= 2 * FOLD_AFTER * windows(elapsed),
            "{direction}: {tally:?} in {elapsed:?}"
        );
    }
    for event in &storm_sent {
        assert_eq!(event["cause"], "port_closed", "{event}");
        assert_eq!(event["process"], Value::Null, "{event}");
        assert_eq!(
            event["local"],
            json!({"addr": "127.0.0.1", "port": storm_port})
        );
        if event["folded"].is_null() {
            assert!(event["remote"]["port"].as_u64().is_some(), "{event}");
        } else {
            assert_folded_fields(event);
            // The clients' ports varied: the folded event names none.
            assert_eq!(event["remote"], json!({"addr": "127.0.0.1", "port": null}));
        }
    }
    for event in &storm_received {
        assert_eq!(event["cause"], "connection_refused", "{event}");
        assert_eq!(event["state"], "SYN_SENT", "{event}");
        assert_eq!(event["process"]["comm"], "storm", "{event}");
        assert_eq!(
            event["remote"],
            json!({"addr": "127.0.0.1", "port": storm_port})
        );
        if !event["folded"].is_null() {
            assert_folded_fields(event);
            assert_eq!(event["local"], json!({"addr": "127.0.0.1", "port": null}));
        }
    }

    // The slow key, in the same seconds, never folds.
    let slow_sent: Vec<&Value> = events.iter().filter(sent_for_closed(slow_port)).collect();
    let slow_received: Vec<&Value> = events
        .iter()
        .filter(refused_in(std::process::id(), slow_port))
        .collect();
    for (direction, ours) in [("sent", &slow_sent), ("received", &slow_received)] {
        assert_eq!(
            Tally::of(ours.iter().copied()),
            Tally {
                single: slow_connects,
                folded: 0,
                folded_lines: 0,
            },
            "{direction}: every slow connect is its own event"
        );
    }
    assert_exit_line_matches(&finished.stderr, events);
}

/// Two storms from two processes held on one CPU: the kernel counts each CPU's storm key in a
/// slot of its own and moves it to the count map when another key takes the slot in a later
/// second. Both processes' keys pass through the slot and the map in turn, within one epoch, and
/// every connect is still counted once, for the right process.
#[test]
fn storms_of_two_processes_on_one_cpu_are_each_counted_exactly() {
    let ports = [closed_port("127.0.0.1"), closed_port("127.0.0.1")];
    let tracer = Tracer::start(&[
        "--fold-after",
        &FOLD_AFTER.to_string(),
        "--port",
        &ports[0].to_string(),
        "--port",
        &ports[1].to_string(),
    ]);
    let clients = ports.map(storm_client);
    for client in &clients {
        pin_to_first_cpu(client.pid);
    }
    thread::scope(|scope| {
        let storming = clients
            .each_ref()
            .map(|client| scope.spawn(|| client.go_and_wait()));
        for storm in storming {
            storm.join().expect("storm");
        }
    });
    let connects = clients
        .each_ref()
        .map(|client| u64::from(client.connects()));
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let events = &finished.events;
    for ((client, port), made) in clients.iter().zip(ports).zip(connects) {
        let sent = Tally::of(events.iter().filter(sent_for_closed(port)));
        let received = Tally::of(events.iter().filter(refused_in(client.pid as u32, port)));
        eprintln!(
            "pid {}: {made} connects, sent {sent:?}, received {received:?}",
            client.pid
        );
        for (direction, tally) in [("sent", sent), ("received", received)] {
            assert!(tally.folded_lines > 0, "{direction}: nothing folded");
            assert_eq!(
                tally.total(),
                made,
                "{direction} for pid {}: singles + folded = connects made",
                client.pid
            );
        }
    }
    assert_exit_line_matches(&finished.stderr, events);
}

/// Holds a process on the first online CPU.
fn pin_to_first_cpu(pid: i32) {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity and sched_setaffinity read
    // and write exactly one set of that size.
    unsafe {
        let mut online: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut online),
            0,
            "sched_getaffinity"
        );
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|cpu| libc::CPU_ISSET(*cpu, &online))
            .expect("a CPU to run on");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        assert_eq!(
            libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &one),
            0,
            "sched_setaffinity({pid})"
        );
    }
}

/// The kernel's count of events the filters dropped: `rst-trace: N events filtered out in the
/// kernel`.
fn filtered_in_kernel(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|line| {
            line.strip_prefix("rst-trace: ")?
                .strip_suffix(" events filtered out in the kernel")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no filtered line in:\n{stderr}"))
}

/// `--cgroup` in the kernel: a storm from a process of another cgroup costs only the check (its
/// resets are counted as filtered out, none reaches userspace), while every refused connect of
/// the kept cgroup's process is reported one by one.
#[test]
fn storm_from_another_cgroup_is_filtered_out_in_the_kernel() {
    require_root();
    let (storming, kept) = (TestCgroup::new("storm"), TestCgroup::new("kept"));
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&["--fold-after", "0", "--cgroup", kept.name()]);
    let storm_client = storm_client(port);
    storming.join(storm_client.pid);
    let client = fork_named("kept", port, ClientAction::RefusedConnects(5));
    kept.join(client.pid);
    let (connects, ()) = storm(&storm_client, || client.go_and_wait());
    let finished = tracer.stop();
    let stderr = finished.stderr.clone();

    for event in &finished.events {
        assert_eq!(event["cgroup"], kept.name(), "{event}");
    }
    let refused: Vec<&Value> = finished
        .events
        .iter()
        .filter(refused_in(client.pid as u32, port))
        .collect();
    assert_eq!(refused.len(), 5, "{stderr}");
    for event in &refused {
        assert_eq!(event["cause"], "connection_refused", "{event}");
        assert_eq!(event["process"]["comm"], "kept", "{event}");
    }
    // Resets sent to a closed port belong to no process, so --cgroup never keeps them.
    assert_eq!(finished.events.len(), 5, "{stderr}");
    assert!(connects > 1000, "the storm made only {connects} connects");
    // Each storm connect: the reset sent (no owner, sent in the storm's own context) and the
    // one received (owned by the storm's process); other processes of the host add theirs.
    let filtered = filtered_in_kernel(&stderr);
    assert!(
        filtered >= 2 * connects,
        "{filtered} < 2 x {connects}: {stderr}"
    );
    let exit = exit_line(&stderr);
    assert_eq!(
        (exit.reported, exit.lost, exit.folded),
        (5, 0, 0),
        "{stderr}"
    );
}

#[test]
fn storm_fold_after_zero_reports_every_reset_one_by_one() {
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&["--fold-after", "0", "--port", &port.to_string()]);
    // Small enough for the ring buffer to hold all of it even if the reader got no CPU.
    let client = fork_named(
        "storm",
        port,
        ClientAction::RefusedConnectsFor {
            max: 3000,
            millis: STORM_MS,
        },
    );
    let (connects, ()) = storm(&client, || ());
    assert!(
        connects > 2 * FOLD_AFTER,
        "{connects} connects: not a storm that would fold"
    );
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let events = &finished.events;
    let sent: Vec<&Value> = events.iter().filter(sent_for_closed(port)).collect();
    let received: Vec<&Value> = events
        .iter()
        .filter(refused_in(client.pid as u32, port))
        .collect();
    for ours in [&sent, &received] {
        assert_eq!(
            Tally::of(ours.iter().copied()),
            Tally {
                single: connects,
                folded: 0,
                folded_lines: 0,
            }
        );
    }
    let exit = exit_line(&finished.stderr);
    assert_eq!(
        (exit.folded, exit.folded_lines),
        (0, 0),
        "{}",
        finished.stderr
    );
    assert_exit_line_matches(&finished.stderr, events);
}

#[test]
fn storm_totals_in_json_text_summary_and_metrics_equal_the_namespaces_out_rsts() {
    let netns = TestNetns::new("storm");
    let inode = netns.inode().to_string();
    let port = netns.run(|| closed_port("127.0.0.1"));
    let metrics: SocketAddr = format!("127.0.0.1:{}", closed_port("127.0.0.1"))
        .parse()
        .expect("addr");
    let json_file = scratch_file("events.json");
    // Text on stdout, the same events as JSON in a file, and metrics: one tracer; the summary
    // replaces the text, so it takes another.
    let text = RawTracer::start(
        "text",
        &[
            "--netns",
            &inode,
            "--metrics",
            &metrics.to_string(),
            "--output",
            json_file.to_str().expect("path"),
        ],
    );
    let summary = RawTracer::start("summary", &["--netns", &inode, "--summary", "1"]);

    let before = netns.tcp("OutRsts");
    let client = netns.run(|| storm_client(port));
    let (connects, ()) = storm(&client, || ());
    let out_rsts = netns.tcp("OutRsts") - before;
    assert_eq!(out_rsts, connects, "one reset per refused connect");

    // The last second's folded counts reach the metrics at the next take.
    let started = Instant::now();
    loop {
        let scrape = http_get(metrics).unwrap_or_default();
        let counted = (
            resets_total(&scrape, "sent"),
            resets_total(&scrape, "received"),
        );
        if counted == (out_rsts, connects) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "rst_trace_resets_total (sent, received) = {counted:?}, the namespace's OutRsts \
             {out_rsts}, connects {connects}:\n{scrape}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    let text = text.stop();
    assert!(text.status.success(), "{}", text.stderr);
    let summary = summary.stop();
    assert!(summary.status.success(), "{}", summary.stderr);
    let events: Vec<Value> = fs::read_to_string(&json_file)
        .expect("--output file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let _ = fs::remove_file(&json_file);

    // Everything is this namespace's (--netns), and is the storm.
    let sent: Vec<&Value> = events.iter().filter(sent_for_closed(port)).collect();
    let received: Vec<&Value> = events
        .iter()
        .filter(refused_in(client.pid as u32, port))
        .collect();
    assert_eq!(sent.len() + received.len(), events.len(), "{events:?}");
    assert_eq!(Tally::of(sent.iter().copied()).total(), out_rsts);
    assert_eq!(Tally::of(received.iter().copied()).total(), connects);
    assert_exit_line_matches(&text.stderr, &events);

    // Each folded event, in JSON and as its text line.
    let folded: Vec<&Value> = events.iter().filter(|e| !e["folded"].is_null()).collect();
    assert!(!folded.is_empty(), "nothing folded");
    for event in &folded {
        let (count, first, last) = assert_folded_fields(event);
        assert_eq!(event["netns"], netns.inode(), "{event}");
        let (cause, local, remote) = if kind(event) == "reset_sent" {
            assert_eq!(event["remote"]["port"], Value::Null, "{event}");
            (
                "port_closed",
                format!("127.0.0.1:{port}"),
                "127.0.0.1:*".to_string(),
            )
        } else {
            assert_eq!(event["local"]["port"], Value::Null, "{event}");
            (
                "connection_refused",
                "127.0.0.1:*".to_string(),
                format!("127.0.0.1:{port}"),
            )
        };
        let secs = last.duration_since(first).as_secs_f64();
        let tail = format!("{cause} x{count} in {secs:.1} s (folded)");
        assert!(
            text.stdout.lines().any(|line| line.ends_with(&tail)
                && line.contains(&local)
                && line.contains(&remote)),
            "no text line ending in {tail:?} for {event}:\n{}",
            text.stdout
        );
    }
    // Event lines start with their time; explanations are indented under them.
    let text_lines = text
        .stdout
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(
        text_lines,
        events.len(),
        "a text line per event:\n{}",
        text.stdout
    );

    // The summary counts folded events in full.
    let (total, rows) = summary_totals(&summary.stdout);
    assert_eq!(total, out_rsts + connects, "{}", summary.stdout);
    let sent_rows: u64 = rows
        .iter()
        .filter(|row| row.dir == "SENT")
        .map(|row| row.count)
        .sum();
    assert_eq!(sent_rows, out_rsts, "{}", summary.stdout);
}

/// `GET /metrics` from rst-trace's metrics endpoint.
fn http_get(addr: SocketAddr) -> Option<String> {
    match common::prometheus::http_get(addr, "/metrics") {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

#[test]
fn storm_from_random_source_addresses_folds_on_the_coarse_key() {
    let netns = TestNetns::new("flood");
    let port = netns.run(|| closed_port("127.0.0.1"));
    let tracer = Tracer::start(&["--netns", &netns.inode().to_string()]);
    let before = netns.tcp("OutRsts");
    // SYNs from random addresses to a closed port on the namespace's lo: the resets go nowhere
    // (the namespace has no route but lo's), so no packet leaves it. hping3 ends by timeout.
    let started = Instant::now();
    let status = Command::new("ip")
        .args(["netns", "exec", &netns.name, "timeout", "2"])
        .args(["hping3", "--rand-source", "-S", "--flood", "-q"])
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ip netns exec ... hping3 (cargo xtask setup installs both)");
    assert_eq!(
        status.code(),
        Some(124),
        "hping3 ran until timeout stopped it"
    );
    let elapsed = started.elapsed();
    let out_rsts = netns.tcp("OutRsts") - before;
    assert!(out_rsts > 1000, "only {out_rsts} resets: not a flood");
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let events = &finished.events;
    assert_exit_line_matches(&finished.stderr, events);

    for event in events {
        assert_eq!(kind(event), "reset_sent", "{event}");
        assert_eq!(event["cause"], "port_closed", "{event}");
        assert_eq!(event["local"], json!({"addr": "127.0.0.1", "port": port}));
    }
    let tally = Tally::of(events);
    eprintln!("flood: OutRsts +{out_rsts} in {elapsed:?}, {tally:?}");
    assert_eq!(
        tally.total(),
        out_rsts,
        "singles + folded = the namespace's OutRsts: {tally:?}"
    );
    // One key for the whole flood (no remote address): a folded line per take at most.
    let folded: Vec<&Value> = events.iter().filter(|e| !e["folded"].is_null()).collect();
    assert!(
        !folded.is_empty() && tally.folded_lines <= windows(elapsed),
        "{tally:?} in {elapsed:?}"
    );
    for event in &folded {
        assert_folded_fields(event);
        assert_eq!(
            event["remote"],
            json!({"addr": "0.0.0.0", "port": null}),
            "the remote address varied: the unspecified address stands for all"
        );
    }
    // One by one: the first COARSE_AFTER (64) new keys per CPU a second, and the first
    // FOLD_AFTER of the coarse key (with room for CPUs racing on its count).
    assert!(
        tally.single <= (64 + 2 * FOLD_AFTER) * cpus() * windows(elapsed),
        "{tally:?} in {elapsed:?}"
    );
    assert!(
        tally.folded > 10 * tally.single,
        "the flood is folded, not printed: {tally:?}"
    );
}

/// A listener on 127.0.0.1 at a port below `ip_local_port_range`, where services listen. The
/// fold key and the summary take the end whose port is not ephemeral as the service end; with
/// both ends ephemeral (a listener on the port `bind(0)` picks) the rule can only take the
/// smaller port, which may be the client's.
fn service_listener() -> (Socket, u16) {
    let range =
        fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("ip_local_port_range");
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|port| port.parse().ok())
        .expect("ip_local_port_range's low end");
    const FIRST: u16 = 10_000;
    assert!(low > FIRST, "ip_local_port_range starts at {low}");
    let ports = u32::from(low - FIRST);
    // Start somewhere else in each test process and call; step by a prime past ports taken.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(31) + CALLS.fetch_add(1, Ordering::Relaxed) * 101;
    for attempt in 0..1000u32 {
        let port = FIRST + ((seed.wrapping_add(attempt * 7919)) % ports) as u16;
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        if socket.bind(&sockaddr("127.0.0.1", port)).is_ok() {
            socket.listen(16).expect("listen");
            return (socket, port);
        }
    }
    panic!("no free port between {FIRST} and {low}");
}

/// An established loopback connection to a listener on `port`, connected from a thread named
/// `client` and accepted in one named `server`.
fn connection(listener: &Socket, port: u16, client: &str, server: &str) -> (Socket, Socket) {
    let client = in_thread(client, || {
        let (socket, _) = bound_client("127.0.0.1");
        socket
            .connect(&sockaddr("127.0.0.1", port))
            .expect("connect");
        socket
    });
    let (server, _) = in_thread(server, || listener.accept().expect("accept"));
    (client, server)
}

#[test]
fn storm_leaves_a_linger_abort_and_an_unread_data_close_their_causes_on_both_ends() {
    let storm_port = closed_port("127.0.0.1");
    let (linger_listener, linger_port) = service_listener();
    let (unread_listener, unread_port) = service_listener();
    let tracer = Tracer::start(&[
        "--port",
        &storm_port.to_string(),
        "--port",
        &linger_port.to_string(),
        "--port",
        &unread_port.to_string(),
    ]);
    // Forked first: a child keeps copies of the parent's sockets, and a copy of the unread-data
    // server's would hold its close (and the reset) back until the storm ends.
    let client = storm_client(storm_port);
    // S4: a client process that closes with SO_LINGER 0; the server end is this process's.
    let linger = fork_named("linger-client", linger_port, ClientAction::LingerAbort);
    let linger_client_port = linger.port();
    let (_linger_server, _) = in_thread("linger-server", || {
        linger_listener.accept().expect("accept")
    });
    // S5: a server that closes with two requests unread.
    let (unread_client, unread_server) = connection(
        &unread_listener,
        unread_port,
        "unread-client",
        "unread-server",
    );
    let unread_client_port = local_port(&unread_client);
    use std::io::Write as _;
    (&unread_client)
        .write_all(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n\r\n")
        .expect("send");
    let mut peek = [std::mem::MaybeUninit::<u8>::uninit(); 8];
    assert!(unread_server.peek(&mut peek).expect("peek") > 0);

    let (_, ()) = storm(&client, || {
        // Well inside the storm's STORM_MS (checked below from the events' times).
        thread::sleep(Duration::from_millis(300));
        linger.go_and_wait();
        in_thread("unread-server", move || drop(unread_server));
    });
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let events = &finished.events;
    let storm_events: Vec<&Value> = events
        .iter()
        .filter(|e| sent_for_closed(storm_port)(e) || refused_in(client.pid as u32, storm_port)(e))
        .collect();
    assert!(
        storm_events.iter().any(|e| !e["folded"].is_null()),
        "the storm folded"
    );
    let (storm_began, storm_ended) = span(&storm_events);

    let one = |what: &str, matches: &dyn Fn(&Value) -> bool| -> Value {
        let found: Vec<&Value> = events.iter().filter(|e| matches(e)).collect();
        assert_eq!(found.len(), 1, "one event for {what}: {found:?}");
        let event = found[0].clone();
        assert_eq!(event["folded"], Value::Null, "{what} is its own event");
        let time = timestamp(&event["time"]);
        assert!(
            storm_began < time && time < storm_ended,
            "{what} at {time}, during the storm ({storm_began} .. {storm_ended})"
        );
        event
    };
    let me = u64::from(std::process::id());

    let sent = one("the linger-0 abort", &|e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(linger_client_port)
    });
    assert_eq!(sent["cause"], "linger_abort", "{sent}");
    assert_eq!(
        sent["remote"],
        json!({"addr": "127.0.0.1", "port": linger_port})
    );
    assert_eq!(pid_of(&sent), linger.pid as u64, "{sent}");
    assert_eq!(sent["process"]["comm"], "linger-client", "{sent}");
    let received = one("the abort reaching the server", &|e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(linger_port)
    });
    assert_eq!(received["cause"], "linger_abort", "{received}");
    assert_eq!(
        received["remote"],
        json!({"addr": "127.0.0.1", "port": linger_client_port})
    );
    assert_eq!(pid_of(&received), me, "{received}");
    assert_eq!(received["process"]["comm"], "linger-server", "{received}");

    let sent = one("the close with unread data", &|e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(unread_port)
    });
    assert_eq!(sent["cause"], "unread_data_close", "{sent}");
    assert_eq!(
        sent["remote"],
        json!({"addr": "127.0.0.1", "port": unread_client_port})
    );
    assert_eq!(pid_of(&sent), me, "{sent}");
    assert_eq!(sent["process"]["comm"], "unread-server", "{sent}");
    let received = one("the close reaching the client", &|e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(unread_client_port)
    });
    assert_eq!(received["cause"], "unread_data_close", "{received}");
    assert_eq!(pid_of(&received), me, "{received}");
    assert_eq!(received["process"]["comm"], "unread-client", "{received}");
    assert_exit_line_matches(&finished.stderr, events);
}

#[test]
fn storm_summary_is_one_row_per_direction_beside_a_linger_abort_row() {
    let storm_port = closed_port("127.0.0.1");
    let (linger_listener, linger_port) = service_listener();
    let tracer = RawTracer::start(
        "summary-rows",
        &[
            "--summary",
            "1",
            "--port",
            &storm_port.to_string(),
            "--port",
            &linger_port.to_string(),
        ],
    );
    // Forked first, so that it holds no copy of the sockets below.
    let client = storm_client(storm_port);
    let linger = fork_named("linger-client", linger_port, ClientAction::LingerAbort);
    let (_linger_server, _) = in_thread("linger-server", || {
        linger_listener.accept().expect("accept")
    });
    let (connects, ()) = storm(&client, || {
        thread::sleep(Duration::from_millis(300));
        linger.go_and_wait();
    });
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let (total, rows) = summary_totals(&finished.stdout);
    assert_eq!(total, 2 * connects + 2, "{}", finished.stdout);
    let storm_comm = format!("storm ({})", client.pid);
    let linger_comm = format!("linger-client ({})", linger.pid);
    let me = format!("linger-server ({})", std::process::id());
    // Rows by service port (the port listened on or connected to): the storm is one row per
    // direction whatever ports its clients used.
    let expected = [
        ("port_closed", "SENT", "-", storm_port, connects),
        (
            "connection_refused",
            "RECV",
            storm_comm.as_str(),
            storm_port,
            connects,
        ),
        ("linger_abort", "SENT", linger_comm.as_str(), linger_port, 1),
        ("linger_abort", "RECV", me.as_str(), linger_port, 1),
    ];
    for (cause, dir, process, port, count) in expected {
        let found: Vec<&Row> = rows
            .iter()
            .filter(|row| row.cause == cause && row.dir == dir)
            .collect();
        assert_eq!(
            found,
            [&Row {
                cause: cause.to_string(),
                dir: dir.to_string(),
                process: process.to_string(),
                port: port.to_string(),
                count,
            }],
            "{cause} {dir}:\n{}",
            finished.stdout
        );
    }
    assert_eq!(rows.len(), expected.len(), "{}", finished.stdout);
}
