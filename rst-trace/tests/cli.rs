//! The binary's behaviour at its edges, as root against the running kernel: `check`, bad input,
//! hostile environments, the limits that end a run, and lost events.

mod common;

use std::{
    process::{Command, Output},
    time::Duration,
};

use common::*;

fn rst_trace(args: &[&str]) -> Output {
    require_root();
    Command::new(BINARY)
        .args(args)
        .output()
        .expect("run rst-trace")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_lists_each_source_and_attaches_it() {
    let out = rst_trace(&["check"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("tcp:tcp_send_reset: on (resets sent by this host)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tcp:tcp_receive_reset: on (resets received by this host)"),
        "{stdout}"
    );
    for source in [
        "sock:inet_sock_set_state: on",
        "tcp:tcp_destroy_sock: on",
        "syscalls:sys_exit_accept4: on",
        "syscalls:sys_exit_accept: on",
    ] {
        assert!(stdout.contains(source), "{source}: {stdout}");
    }
    // Before 5.17 kfree_skb has no drop reason: check says so and what still reports.
    let (queue_drops, attached) = if kfree_skb_has_reason() {
        ("skb:kfree_skb: on", 7)
    } else {
        (
            "skb:kfree_skb: off, packets dropped from full queues (accept queue, backlog, receive \
             buffer) not available: this kernel's kfree_skb has no drop reason (5.17+), so a full \
             queue cannot be told from any other freed packet; listen overflows are still \
             reported, once a second, from each listener's queues and drop count",
            6,
        )
    };
    assert!(stdout.contains(queue_drops), "{queue_drops}: {stdout}");
    // Every source that is on was loaded and attached for real (kernels before 6.10 add
    // kprobes for resets sent without a socket).
    let lines: Vec<&str> = stdout.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        if line.contains(": on (") {
            let status = lines.get(index + 1).map(|l| l.trim());
            // These are served by their BTF programs here (5.5+ with BTF), tcp_receive_reset
            // only where its BTF program can make the socket's cookie (5.12+).
            let expected = if line.starts_with("tcp:tcp_receive_reset:")
                && !tracing_can_ask_for_cookies()
            {
                "loaded and attached (classic tracepoint; the BTF tracepoint could not be used: \
                 this kernel does not let tracing programs ask for a socket's cookie \
                 (bpf_get_socket_cookie, 5.12+), which the classic record carries)"
            } else if [
                "tcp:tcp_send_reset:",
                "tcp:tcp_receive_reset:",
                "sock:inet_sock_set_state:",
                "tcp:tcp_destroy_sock:",
            ]
            .iter()
            .any(|source| line.starts_with(source))
            {
                "loaded and attached (BTF tracepoint)"
            } else {
                "loaded and attached"
            };
            assert_eq!(status, Some(expected), "{line}");
        }
    }
    assert!(
        stdout.matches("loaded and attached").count() >= attached,
        "{stdout}"
    );
    assert!(stdout.contains("BTF: /sys/kernel/btf/vmlinux"), "{stdout}");
    // Listener drops: both iterators load and run a pass (6.18 here, 6.1 in the VM stage).
    for (iterator, status) in [
        ("iter:task_file (", "loaded, and a pass read every listener"),
        (
            "iter:bpf_map_elem (",
            "loaded, and a pass read the listener map: after the first pass over every open file, \
             each second's pass walks only the listeners",
        ),
    ] {
        let index = lines
            .iter()
            .position(|line| line.starts_with(iterator))
            .unwrap_or_else(|| panic!("{iterator} not listed: {stdout}"));
        assert_eq!(
            lines.get(index + 1).map(|l| l.trim()),
            Some(status),
            "{stdout}"
        );
    }
}

#[test]
fn without_privileges_it_says_what_it_needs_and_exits_1() {
    require_root();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(["--bounding-set=-all", BINARY, "--duration", "1"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_pid_that_does_not_exist_is_an_error() {
    let mut gone = Command::new("true").spawn().expect("spawn");
    let pid = gone.id();
    gone.wait().expect("wait");
    let out = rst_trace(&["--pid", &pid.to_string(), "--duration", "1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no process with pid {pid} is running")),
        "{stderr}"
    );
}

#[test]
fn invalid_flags_get_clap_errors() {
    for args in [
        &["--port", "0"][..],
        &["--duration", "soon"],
        &["--ring-buffer-kib", "5"],
    ] {
        let out = rst_trace(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).starts_with("error: invalid value"),
            "{args:?}"
        );
    }
}

#[test]
fn tracefs_is_mounted_when_it_is_not() {
    require_root();
    // A private mount namespace, so that unmounting tracefs does not touch the host.
    let script = format!(
        "umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; \
         exec {BINARY} --duration 0.5"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rst-trace: tracefs was not mounted; mounted it at /sys/kernel/tracing"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rst-trace: tracing tcp:tcp_send_reset"),
        "{stderr}"
    );
}

#[test]
fn count_ends_the_run_after_n_events() {
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&["--port", &port.to_string(), "--count", "3"]);
    for _ in 0..4 {
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    }
    let finished = tracer.finish();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(finished.events.len(), 3);
    assert_eq!(closing_counts(&finished.stderr).0, 3);
}

#[test]
fn duration_ends_the_run_and_text_output_has_a_header() {
    let port = closed_port("127.0.0.1");
    require_root();
    let (out, elapsed) = run_against_closed_port(port, &["--duration", "3"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        elapsed >= Duration::from_secs(3),
        "ended early: {elapsed:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].ends_with("REASON                 CAUSE"),
        "{stdout}"
    );
    let sent = lines
        .iter()
        .find(|line| line.contains(" SENT ") && line.contains(&format!("127.0.0.1:{port} ")))
        .unwrap_or_else(|| panic!("no SENT line for port {port}:\n{stdout}"));
    let expected = sent_reason("NO_SOCKET");
    assert!(
        sent.contains(&format!(" {} ", expected.as_str().unwrap_or("-"))),
        "{sent}"
    );
    assert!(sent.ends_with(" port_closed"), "{sent}");
    let explanation = stdout
        .lines()
        .skip_while(|line| line != sent)
        .nth(1)
        .unwrap_or_default();
    assert_eq!(
        explanation.trim(),
        format!(
            "-> nothing listens on 127.0.0.1:{port}: the SYN from {} was refused (no process \
             owns a closed port); nothing has listened there since rst-trace started",
            sent.split_whitespace().nth(5).unwrap_or_default()
        )
    );
}

#[test]
fn a_full_ring_buffer_counts_and_reports_every_lost_event() {
    let port = closed_port("127.0.0.1");
    let storm = ForkedClient::fork(port, ClientAction::RefusedConnects(300));
    // 4 KiB holds about two dozen records; stop the reader so that the storm overflows it.
    // Unfolded: folding would count most of the storm in the kernel, and nothing would be lost.
    let tracer = Tracer::start(&[
        "--pid",
        &storm.pid.to_string(),
        "--ring-buffer-kib",
        "4",
        "--fold-after",
        "0",
    ]);
    // SAFETY: signals to our own child.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    storm.go_and_wait();
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    // Let the once-a-second check see the loss before stopping.
    std::thread::sleep(Duration::from_millis(1500));
    let finished = tracer.stop();
    let (reported, lost) = closing_counts(&finished.stderr);
    assert!(lost > 0, "nothing lost:\n{}", finished.stderr);
    assert!(reported > 0 && reported < 600, "{reported} reported");
    assert_eq!(reported, finished.events.len() as u64);
    let warned: u64 = finished
        .stderr
        .lines()
        .filter(|line| line.contains("events lost: the ring buffer was full"))
        .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        warned, lost,
        "every lost event is reported while running:\n{}",
        finished.stderr
    );
}

#[test]
fn stack_names_the_kernel_functions_that_sent_the_reset() {
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&["--port", &port.to_string(), "--stack"]);
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let sent = tracer.wait_for("the closed port's reset", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    let frames: Vec<&str> = sent["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack: {sent}"))
        .iter()
        .filter_map(|frame| frame.as_str())
        .collect();
    assert!(
        frames
            .iter()
            .any(|frame| frame.starts_with("tcp_v4_send_reset+0x")),
        "the reset is sent from tcp_v4_send_reset: {frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|frame| frame.starts_with("tcp_v4_rcv+0x")),
        "{frames:?}"
    );
    tracer.stop();
}

#[test]
fn output_file_gets_ndjson_and_color_always_colours_the_text() {
    require_root();
    let port = closed_port("127.0.0.1");
    let file = std::env::temp_dir().join(format!("rst-trace-output-{}.ndjson", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let file_arg = file.to_str().expect("a UTF-8 temporary path");
    let (out, _) = run_against_closed_port(
        port,
        &[
            "--count",
            "2",
            "--duration",
            "20",
            "--color",
            "always",
            "--output",
            file_arg,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\x1b[31mSENT"), "SENT in red: {stdout:?}");
    assert!(
        stdout.contains("\x1b[1mport_closed"),
        "causes in bold: {stdout:?}"
    );
    let written = std::fs::read_to_string(&file).expect("the output file");
    let events: Vec<serde_json::Value> = written
        .lines()
        .map(|line| serde_json::from_str(line).expect("NDJSON"))
        .collect();
    assert_eq!(events.len(), 2, "{written}");
    assert!(events.iter().all(|e| e["cause"].is_string()));
    std::fs::remove_file(&file).expect("remove");
}

#[test]
fn summary_prints_a_table_per_interval_and_the_totals() {
    require_root();
    let port = closed_port("127.0.0.1");
    let (out, _) = run_against_closed_port(port, &["--summary", "1", "--duration", "4"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Not a terminal: one block per interval, then the totals; no per-event lines.
    assert!(
        stdout.matches("rst-trace summary, ").count() >= 3,
        "{stdout}"
    );
    assert!(!stdout.contains("TIME            DIR"), "{stdout}");
    let totals = stdout
        .split("rst-trace summary, totals:")
        .nth(1)
        .expect("totals");
    let row = totals
        .lines()
        .find(|line| line.starts_with("port_closed"))
        .unwrap_or_else(|| panic!("no port_closed row: {totals}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (columns[1], columns[3]),
        ("SENT", port.to_string().as_str()),
        "{row}"
    );
    let count: u64 = columns[4].parse().expect("count");
    assert!(count >= 3, "{row}");
}

/// Refused connects to `port` until rst-trace ends by itself (--duration, --count); the first
/// ones may come before its programs are attached.
/// Runs rst-trace with `--port PORT` and `args`, connecting to that closed port every 100 ms
/// until rst-trace exits by itself (at most 30 s); its output, and how long it ran.
fn run_against_closed_port(port: u16, args: &[&str]) -> (std::process::Output, Duration) {
    let mut child = Command::new(BINARY)
        .args(["--port", &port.to_string()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rst-trace did not stop"
        );
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    (out, started.elapsed())
}
