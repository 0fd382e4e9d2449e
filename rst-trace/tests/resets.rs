//! Scenarios (docs/scenarios.md), proven against the running kernel: each test loads the real
//! programs (through the real binary), makes the scenario happen on loopback, and asserts the
//! fields of the events it caused.

mod common;

use std::{io::Write as _, net::Shutdown};

use common::*;
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};

/// The network namespace inode of this test process.
fn host_netns() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").expect("netns").ino()
}

/// The next sequence number `socket` will send, read in TCP_REPAIR mode (root only).
fn send_sequence(socket: &Socket) -> u32 {
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
fn idle_connection_closed_by_server(port: u16, listener: &Socket) -> (Socket, u16) {
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

/// The programs that serve the reset tracepoints: the BTF ones where the kernel takes them (here),
/// or the classic ones (`--classic-tracepoints`, what older kernels run). Both must report the
/// same fields.
#[derive(Clone, Copy)]
enum Programs {
    Btf,
    Classic,
}

fn tracer_on_port(port: u16, programs: Programs) -> Tracer {
    let port = port.to_string();
    match programs {
        Programs::Btf => Tracer::start(&["--port", &port]),
        Programs::Classic => Tracer::start(&["--port", &port, "--classic-tracepoints"]),
    }
}

fn s1_closed_port(ip: &str, family: &str, programs: Programs) {
    let port = closed_port(ip);
    let tracer = tracer_on_port(port, programs);
    let (client, client_port) = bound_client(ip);
    let error = client
        .connect(&sockaddr(ip, port))
        .expect_err("nothing listens");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);

    let sent = tracer.wait_for("the RST answering the SYN", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(sent["reason"], sent_reason("NO_SOCKET"));
    assert_eq!(sent["state"], Value::Null, "no socket matched the SYN");
    assert_eq!(sent["family"], family);
    assert_eq!(sent["local"], json!({"addr": ip, "port": port}));
    assert_eq!(sent["remote"], json!({"addr": ip, "port": client_port}));
    assert_eq!(sent["sock_cookie"], Value::Null);
    assert_eq!(sent["cause"], "port_closed");
    assert_eq!(sent["process"], Value::Null, "nothing owns a closed port");
    assert_eq!(sent["netns"], host_netns());

    let received = tracer.wait_for("the RST reaching the client", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(client_port)
    });
    assert_eq!(
        received["reason"],
        Value::Null,
        "tcp_receive_reset carries no reason"
    );
    assert_eq!(received["state"], "SYN_SENT");
    assert_eq!(received["family"], family);
    assert_eq!(received["local"], json!({"addr": ip, "port": client_port}));
    assert_eq!(received["remote"], json!({"addr": ip, "port": port}));
    assert!(
        received["sock_cookie"].as_u64().is_some_and(|c| c > 0),
        "{received}"
    );
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
}

#[test]
fn s1_connect_to_closed_port_ipv4_is_reset_with_no_socket() {
    s1_closed_port("127.0.0.1", "ipv4", Programs::Btf);
}

#[test]
fn s1_connect_to_closed_port_ipv6_is_reset_with_no_socket() {
    s1_closed_port("::1", "ipv6", Programs::Btf);
}

#[test]
fn s1_classic_tracepoint_programs_report_the_same_fields() {
    s1_closed_port("127.0.0.1", "ipv4", Programs::Classic);
    s1_closed_port("::1", "ipv6", Programs::Classic);
}

#[test]
fn s4_linger_zero_close_sends_reset_from_the_closing_process() {
    s4_linger_zero(Programs::Btf);
}

#[test]
fn s4_classic_tracepoint_programs_report_the_same_fields() {
    s4_linger_zero(Programs::Classic);
}

/// An established connection on loopback, with a tracer on its server's port started before
/// the connection was made (S4 and S5).
struct Connection {
    tracer: Tracer,
    client: Socket,
    server: Socket,
    port: u16,
    client_port: u16,
    _listener: Socket,
}

fn connection_on_loopback(programs: Programs) -> Connection {
    let (listener, port) = listener("127.0.0.1", 16);
    let tracer = tracer_on_port(port, programs);
    let (client, client_port) = bound_client("127.0.0.1");
    client
        .connect(&sockaddr("127.0.0.1", port))
        .expect("connect");
    let (server, _) = listener.accept().expect("accept");
    Connection {
        tracer,
        client,
        server,
        port,
        client_port,
        _listener: listener,
    }
}

fn s4_linger_zero(programs: Programs) {
    let Connection {
        tracer,
        client,
        server: _server,
        port,
        client_port,
        _listener,
    } = connection_on_loopback(programs);
    client
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("SO_LINGER");
    drop(client);

    let sent = tracer.wait_for("the client's abortive close", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(client_port)
    });
    assert_eq!(sent["reason"], sent_reason("TCP_STATE"));
    assert_eq!(sent["state"], "CLOSE");
    assert_eq!(remote_port_of(&sent), u64::from(port));
    assert_eq!(
        sent["process"]["pid"],
        std::process::id(),
        "fired in the closing process"
    );
    assert_eq!(sent["process"]["source"], "context");
    // The running task's name, as the kernel keeps it (15 bytes): this test's thread.
    let thread = std::thread::current();
    let name = thread.name().unwrap_or_default();
    assert_eq!(
        sent["process"]["comm"],
        name[..name.len().min(15)],
        "{sent}"
    );

    let received = tracer.wait_for("the server's side of it", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(received["state"], "ESTABLISHED");
    assert_eq!(remote_port_of(&received), u64::from(client_port));
    // Both ends are on this host: the received reset is explained by the sent one.
    assert_eq!(received["cause"], "linger_abort");
    assert_eq!(
        pid_of(&received),
        u64::from(std::process::id()),
        "the accepting process"
    );
    tracer.stop();
}

#[test]
fn s5_close_with_unread_data_sends_reset_from_the_server() {
    let Connection {
        tracer,
        client,
        server,
        port,
        client_port,
        _listener,
    } = connection_on_loopback(Programs::Btf);
    (&client)
        .write_all(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n\r\n")
        .expect("send");
    // Wait until the requests sit in the server's receive queue, then close without reading.
    let mut peek = [std::mem::MaybeUninit::<u8>::uninit(); 8];
    assert!(server.peek(&mut peek).expect("peek") > 0);
    drop(server);

    let sent = tracer.wait_for("the server's close with unread data", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(sent["reason"], sent_reason("TCP_ABORT_ON_CLOSE"));
    assert_eq!(sent["state"], "CLOSE");
    assert_eq!(remote_port_of(&sent), u64::from(client_port));
    assert_eq!(sent["process"]["pid"], std::process::id());
    assert_eq!(sent["cause"], "unread_data_close");

    let received = tracer.wait_for("the client seeing it", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(client_port)
    });
    assert_eq!(received["state"], "ESTABLISHED");
    assert_eq!(received["cause"], "unread_data_close");
    let _ = client.shutdown(Shutdown::Both);
    tracer.stop();
}

#[test]
fn s8_closing_a_listener_resets_every_queued_connection() {
    // The listener lives in a forked process of its own: this test binary runs tests in
    // parallel threads that fork and spawn, and a child that inherited the listener's
    // descriptor would hold it past our close(), so that the resets fired in that child.
    let owner = ForkedClient::fork(0, ClientAction::ListenAndClose { backlog: 8 });
    let port = owner.port();
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let clients: Vec<(Socket, u16)> = (0..3)
        .map(|_| {
            let (client, client_port) = bound_client("127.0.0.1");
            client
                .connect(&sockaddr("127.0.0.1", port))
                .expect("connect");
            (client, client_port)
        })
        .collect();
    // The handshakes completed in the kernel; nobody accepted. Closing the listener resets them.
    owner.go_and_wait();

    for (_, client_port) in &clients {
        let sent = tracer.wait_for("a queued connection's reset", |e| {
            kind(e) == "reset_sent"
                && local_port_of(e) == u64::from(port)
                && remote_port_of(e) == u64::from(*client_port)
        });
        assert_eq!(sent["reason"], sent_reason("TCP_STATE"));
        assert_eq!(sent["state"], "CLOSE");
        assert_eq!(
            sent["process"]["pid"], owner.pid,
            "fired in close() of the listener: {sent}"
        );
        let received = tracer.wait_for("the queued client's reset", |e| {
            kind(e) == "reset_received" && local_port_of(e) == u64::from(*client_port)
        });
        assert_eq!(received["state"], "ESTABLISHED");
        assert_eq!(received["cause"], "listener_closed");
    }
    let finished = tracer.stop();
    let sent = finished
        .events
        .iter()
        .filter(|e| kind(e) == "reset_sent")
        .count();
    assert_eq!(sent, clients.len(), "one reset per queued connection");
}

#[test]
fn pid_filter_keeps_one_process_and_drops_another() {
    let (listener, port) = listener("127.0.0.1", 16);
    let kept = ForkedClient::fork(port, ClientAction::LingerAbort);
    let dropped = ForkedClient::fork(port, ClientAction::LingerAbort);
    let (kept_port, dropped_port) = (kept.port(), dropped.port());
    let tracer = Tracer::start(&["--pid", &kept.pid.to_string()]);

    // The dropped client acts first; the ring buffer is ordered, so once the kept client's event
    // has arrived, any event of the dropped one would have arrived before it.
    dropped.go_and_wait();
    kept.go_and_wait();
    let sent = tracer.wait_for("the kept process's reset", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(kept_port)
    });
    assert_eq!(pid_of(&sent), kept.pid as u64);
    assert_eq!(remote_port_of(&sent), u64::from(port));
    let finished = tracer.stop();
    for event in &finished.events {
        assert_eq!(
            pid_of(event),
            kept.pid as u64,
            "only the kept process: {event}"
        );
        assert!(
            local_port_of(event) != u64::from(dropped_port)
                && remote_port_of(event) != u64::from(dropped_port),
            "the other process's reset leaked through: {event}"
        );
    }
    drop(listener);
}

#[test]
fn ipv4_traffic_on_a_dual_stack_socket_is_reported_as_ipv4() {
    // A v6 socket connecting to a v4-mapped address: the kernel records ::ffff:127.0.0.1.
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let client = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
    client.set_only_v6(false).expect("IPV6_V6ONLY off");
    let target = sockaddr("::ffff:127.0.0.1", port);
    assert!(client.connect(&target).is_err());
    let received = tracer.wait_for("the dual-stack client's reset", |e| {
        kind(e) == "reset_received" && remote_port_of(e) == u64::from(port)
    });
    assert_eq!(received["family"], "ipv4");
    assert_eq!(received["remote"]["addr"], "127.0.0.1");
    assert_eq!(received["local"]["addr"], "127.0.0.1");
    tracer.stop();
}

#[test]
fn s3_stale_keepalive_reuse_is_attributed_to_client_and_server() {
    let (listener, port) = listener("127.0.0.1", 16);
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let (client, client_port) = idle_connection_closed_by_server(port, &listener);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The pool hands out the stale connection: the request goes out, the reset comes back.
    (&client)
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");

    let sent = tracer.wait_for("the server-side time-wait reset", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(sent["reason"], sent_reason("TCP_TIMEWAIT_SOCKET"));
    assert_eq!(sent["state"], "TIME_WAIT");
    assert_eq!(sent["cause"], "data_after_close");
    assert_eq!(remote_port_of(&sent), u64::from(client_port));
    let closed_by = &sent["closed_by"];
    assert_eq!(
        closed_by["pid"],
        std::process::id(),
        "the server process closed it: {sent}"
    );
    let ago = closed_by["seconds_ago"].as_f64().expect("seconds_ago");
    assert!(
        (0.2..10.0).contains(&ago),
        "closed {ago} s before the reset"
    );
    assert!(
        sent["explanation"]
            .as_str()
            .unwrap_or_default()
            .contains("closed it"),
        "{sent}"
    );

    let received = tracer.wait_for("the client's reset", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(client_port)
    });
    assert_eq!(received["state"], "CLOSE_WAIT");
    assert_eq!(received["cause"], "stale_connection_reuse");
    assert_eq!(
        pid_of(&received),
        u64::from(std::process::id()),
        "the client process"
    );
    let explanation = received["explanation"].as_str().unwrap_or_default();
    assert!(
        explanation.contains("idle timeout shorter than the server's keep-alive timeout")
            && explanation.contains("retry idempotent requests"),
        "{explanation}"
    );
    tracer.stop();
}

#[test]
fn s9_syn_for_a_time_wait_connection_is_timewait_not_data_after_close() {
    let (listener, port) = listener("127.0.0.1", 16);
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let (client, client_port) = idle_connection_closed_by_server(port, &listener);
    // A new SYN on the same four-tuple reaches the time-wait socket (a real TIME_WAIT answers
    // everything with an ACK on 6.18, so the time-wait socket of the orphaned connection is the
    // one that resets). It resets a SYN inside its receive window, which starts at the client's
    // next sequence number: TCP_REPAIR reads it. hping3 crafts the SYN from the client's port.
    let seq = send_sequence(&client);
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

    let sent = tracer.wait_for("the time-wait socket's reset", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(sent["reason"], sent_reason("TCP_TIMEWAIT_SOCKET"));
    assert_eq!(sent["state"], "TIME_WAIT");
    assert_eq!(sent["cause"], "timewait");
    assert_eq!(remote_port_of(&sent), u64::from(client_port));
    tracer.stop();
}

#[test]
fn sockets_set_up_before_rst_trace_started_are_attributed_through_their_file() {
    let (listener, port) = listener("127.0.0.1", 16);
    // The connection exists before the tracer: no connect or accept for it will be seen.
    let client = ForkedClient::fork(port, ClientAction::LingerAbort);
    let client_port = client.port();
    let (_server, _) = listener.accept().expect("accept");
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    client.go_and_wait();

    let sent = tracer.wait_for("the client's abort", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(client_port)
    });
    assert_eq!(sent["cause"], "linger_abort");
    assert_eq!(
        pid_of(&sent),
        client.pid as u64,
        "fired in the closing client"
    );
    let received = tracer.wait_for("the server's reset", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(received["cause"], "linger_abort");
    assert_eq!(
        pid_of(&received),
        u64::from(std::process::id()),
        "the process holding the server socket: {received}"
    );
    assert_eq!(received["process"]["source"], "owner", "{received}");
    tracer.stop();
}
