//! Queue drops through the real binary: S6 (accept queue full), S7 (the same inside a container:
//! a real Docker container, and one built from namespaces and a cgroup scope named as docker
//! names it) and S12 (SYN flood with syncookies off). Each runs in a network namespace of its
//! own, so that the namespace's kernel counter moves only with this test's drops and the
//! reported drops can be compared with it.

mod common;

use std::{
    io::ErrorKind,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{container::Container, docker::Dockerd, netns::TestNetns, *};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// The tracer samples listeners every second; this covers one sample after the last drop.
const SAMPLE_SETTLE: Duration = Duration::from_millis(2500);

/// Non-blocking connects from inside the namespace; the sockets keep retransmitting SYNs until
/// they are dropped.
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

/// The accept_queue_full events of one listener, and the drops they stand for in all.
fn accept_queue_drops(events: &[Value], netns: u64, port: u16) -> (Vec<Value>, u64) {
    let ours: Vec<Value> = events
        .iter()
        .filter(|e| {
            kind(e) == "queue_drop"
                && e["cause"] == "accept_queue_full"
                && e["netns"] == netns
                && local_port_of(e) == u64::from(port)
        })
        .cloned()
        .collect();
    let drops = ours.iter().map(|e| e["drops"].as_u64().unwrap_or(0)).sum();
    (ours, drops)
}

/// Waits until the namespace counter has moved (drops happened), lets the clients go (no more
/// retransmitted SYNs), and waits for the tracer's next samples.
fn fill_and_settle(netns: &TestNetns, counter: &str, clients: Vec<Socket>) -> u64 {
    let started = Instant::now();
    while netns.tcp_ext(counter) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{counter} did not move"
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(clients);
    thread::sleep(SAMPLE_SETTLE);
    netns.tcp_ext(counter)
}

/// Overflows the accept queue of the listener on `port` in `netns` (which never accepts) while
/// `tracer` runs (S6, S7): waits for the tracer's baseline sample, connects six clients, lets the
/// drops settle and stops the tracer. Returns the listener's accept_queue_full events, after
/// checking that the drops they report equal the namespace's ListenOverflows.
fn overflow_accept_queue(netns: &TestNetns, port: u16, tracer: Tracer) -> Vec<Value> {
    // The tracer's first sample of the namespace (all counters 0) is its baseline.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(netns.tcp_ext("ListenOverflows"), 0);
    let clients = connect_many(netns, format!("127.0.0.1:{port}").parse().unwrap(), 6);
    let overflows = fill_and_settle(netns, "ListenOverflows", clients);

    let finished = tracer.stop();
    // Served by the listener iterator (6.18 and the 6.1 VM both take it), not by sampling.
    assert!(
        !finished.stderr.contains("listener iterator is off"),
        "{}",
        finished.stderr
    );
    let (events, drops) = accept_queue_drops(&finished.events, netns.inode(), port);
    assert!(
        !events.is_empty(),
        "no accept_queue_full event:\n{}",
        finished.stderr
    );
    assert_eq!(
        drops, overflows,
        "drops reported = the namespace's ListenOverflows: {events:?}"
    );
    events
}

#[test]
fn s6_accept_queue_full_names_the_listener_and_counts_every_drop() {
    require_root();
    let netns = TestNetns::new("s6");
    // Backlog 1, never accepting: the queue holds 2 connections, every later SYN is dropped.
    let (listener, port) = netns.run(|| listener("127.0.0.1", 1));
    let tracer = Tracer::start(&["--netns", &netns.inode().to_string()]);
    let events = overflow_accept_queue(&netns, port, tracer);
    let event = &events[0];
    assert_eq!(event["local"]["addr"], "127.0.0.1");
    assert_eq!(event["queue"]["max"], 1);
    assert_eq!(
        event["queue"]["len"], 2,
        "N + 1 connections before the kernel drops"
    );
    assert_eq!(
        pid_of(event),
        u64::from(std::process::id()),
        "the listener's owner: {event}"
    );
    drop(listener);
}

/// S6 with the listener opened after rst-trace started: no pass over open files ever saw it
/// (the first runs at start-up); the listener map, filled from its listen(), finds it.
#[test]
fn s6_a_listener_opened_after_start_is_found_through_the_listener_map() {
    require_root();
    let netns = TestNetns::new("s6late");
    let tracer = Tracer::start(&["--netns", &netns.inode().to_string()]);
    assert!(
        !tracer.stderr().contains("listener map iterator is off"),
        "{}",
        tracer.stderr()
    );
    // Past the first pass (over open files, at the first tick).
    thread::sleep(Duration::from_millis(1500));
    let (listener, port) = netns.run(|| listener("127.0.0.1", 1));
    let events = overflow_accept_queue(&netns, port, tracer);
    let event = &events[0];
    assert_eq!(
        (&event["queue"]["max"], &event["queue"]["len"]),
        (&1.into(), &2.into())
    );
    assert_eq!(
        pid_of(event),
        u64::from(std::process::id()),
        "the process that listened: {event}"
    );
    drop(listener);
}

#[test]
fn s7_accept_queue_full_in_a_container_names_the_container_and_its_pids() {
    require_root();
    let netns = TestNetns::new("s7");
    let port = 8080;
    let container = Container::start(&netns, port);
    let tracer = Tracer::start(&["--container", &container.id[..12]]);
    let events = overflow_accept_queue(&netns, port, tracer);
    let event = &events[0];
    assert_eq!(event["netns"], netns.inode());
    assert_eq!(event["container"]["id"], container.id.as_str());
    assert_eq!(event["container"]["runtime"], "docker");
    assert_eq!(
        event["cgroup"],
        format!("/system.slice/docker-{}.scope", container.id).as_str()
    );
    assert_eq!(
        event["queue"]["max"], 1,
        "busybox nc listens with backlog 1"
    );
    assert_eq!(
        pid_of(event),
        u64::from(container.listener_pid),
        "host pid: {event}"
    );
    assert_eq!(
        event["process"]["ns_pid"], 1,
        "pid 1 in its own PID namespace: {event}"
    );
    assert_eq!(event["process"]["comm"], "busybox");
}

/// S7 as it happens: a real Docker container (`--network none`, so its own network namespace)
/// whose listener has backlog 1 and never accepts, and clients started with `docker exec` in
/// the same container. The drops are named with the id `docker inspect` gives, the container's
/// name and image (from dockerd's own state under its data root), the host pid and pid 1.
#[test]
fn s7_accept_queue_full_in_a_real_docker_container_names_it() {
    let dockerd = Dockerd::start("s7");
    let port: u16 = 8080;
    let name = format!("rst-s7-shop-{}", std::process::id());
    let container = dockerd.run(
        &name,
        &["--network", "none"],
        &["/rsttest", "listen", &port.to_string(), "1"],
    );
    let netns = docker::netns_of(container.pid);
    let started = Instant::now();
    while !docker::listens(container.pid, port) {
        assert!(started.elapsed() < Duration::from_secs(10), "no listener");
        thread::sleep(Duration::from_millis(20));
    }
    let data_root = dockerd.data_root();
    let tracer = Tracer::start(&[
        "--docker-root",
        &data_root.to_string_lossy(),
        "--netns",
        &netns.to_string(),
    ]);
    // The tracer's first sample of the namespace (all counters 0) is its baseline.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(docker::tcp_ext_of(container.pid, "ListenOverflows"), 0);
    // Six clients held for 1.5 s: two fill the queue, the others' SYNs (and their
    // retransmissions) are dropped. `docker exec` returns when they are closed.
    dockerd.docker(&[
        "exec",
        &container.id,
        "/rsttest",
        "connect",
        &port.to_string(),
        "6",
        "1500",
    ]);
    assert!(docker::tcp_ext_of(container.pid, "ListenOverflows") >= 3);
    thread::sleep(SAMPLE_SETTLE);
    let overflows = docker::tcp_ext_of(container.pid, "ListenOverflows");

    let finished = tracer.stop();
    let (events, drops) = accept_queue_drops(&finished.events, netns, port);
    assert!(
        !events.is_empty(),
        "no accept_queue_full event:\n{}",
        finished.stderr
    );
    assert_eq!(
        drops, overflows,
        "drops reported = the container's ListenOverflows: {events:?}"
    );
    for event in &events {
        assert_eq!(
            event["container"],
            serde_json::json!({
                "id": container.id,
                "runtime": "docker",
                "name": name,
                "image": common::docker::IMAGE,
                "pod_uid": null,
                "pod": null,
                "namespace": null,
            }),
            "{event}"
        );
        assert_eq!(pid_of(event), u64::from(container.pid), "host pid: {event}");
        assert_eq!(event["process"]["ns_pid"], 1, "pid 1 inside: {event}");
        assert_eq!(event["process"]["comm"], "rsttest");
        assert_eq!(event["queue"]["max"], 1);
        assert_eq!(
            event["cgroup"],
            format!("/docker/{}", container.id).as_str(),
            "the cgroupfs driver's path"
        );
    }
}

#[test]
fn s12_syn_flood_without_syncookies_is_syn_queue_full() {
    require_root();
    let netns = TestNetns::new("s12");
    netns.sysctl("net.ipv4.tcp_syncookies", "0");
    // SYN-ACKs never reach a peer (dropped on the way out), so every half-open connection
    // stays in the SYN queue, as under a flood from spoofed addresses.
    netns.exec(&["nft", "add table inet rst_s12"]);
    netns.exec(&[
        "nft",
        "add chain inet rst_s12 out { type filter hook output priority 0; policy accept; }",
    ]);
    netns.exec(&[
        "nft",
        "add rule inet rst_s12 out tcp flags & (syn | ack) == syn | ack drop",
    ]);
    let (listener, port) = netns.run(|| listener("127.0.0.1", 4));
    let tracer = Tracer::start(&["--netns", &netns.inode().to_string()]);
    thread::sleep(Duration::from_millis(1500));
    // A bounded SYN flood: 200 SYNs, 1 ms apart, from changing source ports.
    // hping3 exits 1 when nothing answered, which is the point here.
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            "hping3",
            "-q",
            "-S",
            "-p",
            &port.to_string(),
        ])
        .args(["-c", "200", "-i", "u1000", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("hping3 (cargo xtask setup installs it)");
    assert!(status.code().is_some(), "hping3 was killed");
    let started = Instant::now();
    while netns.tcp_ext("TCPReqQFullDrop") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "TCPReqQFullDrop did not move"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(SAMPLE_SETTLE);
    let full_drops = netns.tcp_ext("TCPReqQFullDrop");

    let finished = tracer.stop();
    let ours: Vec<&Value> = finished
        .events
        .iter()
        .filter(|e| e["cause"] == "syn_queue_full" && local_port_of(e) == u64::from(port))
        .collect();
    assert!(
        !ours.is_empty(),
        "no syn_queue_full event:\n{}",
        finished.stderr
    );
    let drops: u64 = ours.iter().map(|e| e["drops"].as_u64().unwrap_or(0)).sum();
    assert_eq!(
        drops, full_drops,
        "drops reported = the namespace's TCPReqQFullDrop"
    );
    assert_eq!(ours[0]["netns"], netns.inode());
    assert_eq!(ours[0]["queue"]["max"], 4);
    assert_eq!(ours[0]["counter"]["name"], "TCPReqQFullDrop");
    assert_eq!(pid_of(ours[0]), u64::from(std::process::id()));
    drop(listener);
}
