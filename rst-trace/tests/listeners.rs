//! S6 and S12 in network namespaces of their own: a listener's accept queue (S6) or SYN queue
//! (S12) fills up, further SYNs are dropped without any tracepoint event, and the drops are
//! pinned on the listener by sampling its queues and the namespace's counters
//! (`rst_trace::listeners`). Traffic stays on each namespace's loopback.

mod common;

use std::{
    io::ErrorKind,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use common::netns::TestNetns;
use rst_trace::listeners::*;
use socket2::{Domain, Socket, Type};

fn listen(local: &str, backlog: i32, defer_accept: bool) -> (Socket, SocketAddr) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&local.parse::<SocketAddr>().unwrap().into())
        .unwrap();
    if defer_accept {
        // A final ACK without data leaves the connection in the SYN queue (socket2 has no
        // setter for this option).
        let seconds: libc::c_int = 30;
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw const seconds).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "TCP_DEFER_ACCEPT: {}",
            std::io::Error::last_os_error()
        );
    }
    listener.listen(backlog).unwrap();
    let local = listener.local_addr().unwrap().as_socket().unwrap();
    (listener, local)
}

/// Non-blocking connects, so that clients whose SYNs are dropped do not hold up the test.
fn connect(to: SocketAddr, count: usize) -> Vec<Socket> {
    (0..count)
        .map(|_| {
            let client = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            client.set_nonblocking(true).unwrap();
            match client.connect(&to.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("connect to {to} failed: {e}"),
            }
            client
        })
        .collect()
}

fn our_listener(sample: &Sample, local: SocketAddr) -> ListenerQueue {
    sample
        .listeners
        .iter()
        .find(|l| l.local == local)
        .unwrap_or_else(|| panic!("listener {local} not in {sample:#?}"))
        .clone()
}

/// Samples until `ready` holds for our listener (handshakes on loopback take microseconds,
/// but they run in softirq after connect() returns).
fn sample_when(netns: &Netns, local: SocketAddr, ready: impl Fn(&ListenerQueue) -> bool) -> Sample {
    let started = Instant::now();
    loop {
        let sample = sample(netns).unwrap();
        if ready(&our_listener(&sample, local)) || started.elapsed() > Duration::from_secs(2) {
            return sample;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn s6_accept_queue_full_in_a_namespace_is_pinned_on_the_listener() {
    let test_netns = TestNetns::new("lq");
    // somaxconn is per namespace: a value the host does not have proves the sample read this one.
    test_netns.sysctl("net.core.somaxconn", "77");
    let inode = test_netns.netns().inode;
    let found = network_namespaces();
    let netns = found
        .iter()
        .find(|n| n.inode == inode)
        .unwrap_or_else(|| panic!("namespace {inode} not in {found:?}"));

    let (listener, local) = test_netns.run(|| listen("127.0.0.1:0", 1, false));
    // Backlog 1 holds 2 connections: both handshakes complete and nobody accepts them.
    let mut clients = test_netns.run(|| connect(local, 2));
    let before = sample_when(netns, local, |l| l.accept_len == 2);
    let full = our_listener(&before, local);
    assert_eq!((full.accept_len, full.accept_max), (2, 1), "{full:?}");
    assert_eq!(full.netns, inode);
    assert_eq!(before.netns, inode);
    assert_eq!(before.somaxconn, Some(77));
    assert_eq!(before.syncookies, Some(1));

    let mut watcher = Watcher::new();
    assert_eq!(
        watcher.observe(before.clone()),
        [],
        "the first sample is the baseline"
    );

    // These SYNs find the accept queue full and are dropped.
    clients.extend(test_netns.run(|| connect(local, 3)));
    thread::sleep(Duration::from_millis(100));
    let after = sample(netns).unwrap();
    let delta = after.counters.listen_overflows - before.counters.listen_overflows;
    assert!(
        delta > 0,
        "ListenOverflows did not rise: {before:?} {after:?}"
    );
    // One count per dropped SYN (the clients' SYN retransmits, after 1 s, count again).
    assert_eq!(delta, 3, "{:?} -> {:?}", before.counters, after.counters);
    assert_eq!(
        after.counters.listen_drops - before.counters.listen_drops,
        3
    );

    let drops = watcher.observe(after);
    let [report] = drops.as_slice() else {
        panic!("expected one drop report: {drops:#?}");
    };
    assert_eq!(report.kind, DropKind::AcceptQueueFull);
    assert_eq!(report.listener.local, local);
    assert_eq!(report.listener.inode, full.inode);
    assert_eq!(report.drops, delta);
    assert_eq!(report.counter, "ListenOverflows");
    assert_eq!(report.counter_delta, delta);
    assert_eq!(report.note, None);
    drop((clients, listener));
}

#[test]
fn s12_syn_queue_full_without_syncookies_is_pinned_on_the_listener() {
    let test_netns = TestNetns::new("lq-syn");
    test_netns.sysctl("net.ipv4.tcp_syncookies", "0");
    let netns = test_netns.netns();

    // A wildcard listener: request sockets carry the address the SYN was sent to.
    let (listener, local) = test_netns.run(|| listen("0.0.0.0:0", 3, true));
    let target = SocketAddr::from(([127, 0, 0, 1], local.port()));
    // On 6.18 the SYN queue of a listener with backlog 3 holds 4 requests.
    let mut clients = test_netns.run(|| connect(target, 4));
    let before = sample_when(&netns, local, |l| l.syn_queue == 4);
    let full = our_listener(&before, local);
    assert_eq!(
        (full.syn_queue, full.accept_len, full.accept_max),
        (4, 0, 3)
    );
    assert_eq!(before.syncookies, Some(0));

    let mut watcher = Watcher::new();
    assert_eq!(watcher.observe(before.clone()), []);
    clients.extend(test_netns.run(|| connect(target, 3)));
    thread::sleep(Duration::from_millis(100));
    let after = sample(&netns).unwrap();
    let delta = after.counters.req_q_full_drop - before.counters.req_q_full_drop;
    assert_eq!(delta, 3, "{:?} -> {:?}", before.counters, after.counters);
    assert_eq!(
        after.counters.listen_overflows,
        before.counters.listen_overflows
    );

    let drops = watcher.observe(after);
    let [report] = drops.as_slice() else {
        panic!("expected one drop report: {drops:#?}");
    };
    assert_eq!(report.kind, DropKind::SynQueueFull);
    assert_eq!(report.listener.local, local);
    assert_eq!(report.listener.syn_queue, 4);
    assert_eq!((report.drops, report.counter_delta), (delta, delta));
    assert_eq!(report.counter, "TCPReqQFullDrop");
    assert_eq!(report.note, None);
    drop((clients, listener));
}

/// The sampling fallback's cheap path: a namespace whose counters did not move is not dumped;
/// when `TCPReqQFullDrop` moves, its request sockets are, and the drops add up to the counter.
#[test]
fn s12_sampler_dumps_only_when_a_counter_moved() {
    let test_netns = TestNetns::new("lq-cheap");
    test_netns.sysctl("net.ipv4.tcp_syncookies", "0");
    let netns = test_netns.netns();
    let (listener, local) = test_netns.run(|| listen("0.0.0.0:0", 3, true));
    let target = SocketAddr::from(([127, 0, 0, 1], local.port()));
    let mut clients = test_netns.run(|| connect(target, 4));
    // The sampler enters namespaces on the thread it lives on: a thread of its own here.
    let (baseline, unchanged, after) = thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut sampler = Sampler::new().unwrap();
                // The handshakes run in softirq after connect() returns.
                thread::sleep(Duration::from_millis(100));
                let baseline = sampler.sample(&netns, true).unwrap();
                let unchanged = sampler.sample(&netns, false).unwrap();
                clients.extend(test_netns.run(|| connect(target, 3)));
                thread::sleep(Duration::from_millis(100));
                let after = sampler.sample(&netns, false).unwrap();
                (baseline, unchanged, after)
            })
            .join()
            .unwrap()
    });
    let baseline = baseline.expect("a new namespace is sampled");
    let ours = our_listener(&baseline, local);
    assert_eq!(
        ours.syn_queue, 0,
        "the baseline dumps listeners only, not request sockets: {ours:?}"
    );
    assert_eq!(unchanged, None, "no counter moved, so nothing was dumped");
    let after = after.expect("TCPReqQFullDrop moved");
    let delta = after.counters.req_q_full_drop - baseline.counters.req_q_full_drop;
    assert_eq!(delta, 3, "{:?} -> {:?}", baseline.counters, after.counters);
    assert_eq!(
        our_listener(&after, local).syn_queue,
        4,
        "request sockets dumped once the counter moved"
    );
    let mut watcher = Watcher::new();
    assert_eq!(watcher.observe(baseline), []);
    let drops = watcher.observe(after);
    let [report] = drops.as_slice() else {
        panic!("expected one drop report: {drops:#?}");
    };
    assert_eq!(report.kind, DropKind::SynQueueFull);
    assert_eq!(report.listener.local, local);
    assert_eq!((report.drops, report.counter_delta), (3, 3));
    drop((clients, listener));
}
