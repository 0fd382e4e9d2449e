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

/// `127.0.0.1:80`, `[::1]:80`.
fn endpoint(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
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
    assert_eq!(sent["last_listener"], Value::Null, "nothing listened there");
    assert_eq!(
        sent["explanation"],
        format!(
            "nothing listens on {}: the SYN from {} was refused (no process owns a closed port); \
             nothing has listened there since rst-trace started",
            endpoint(ip, port),
            endpoint(ip, client_port)
        )
    );

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

/// The `container` object rst-trace prints for a container of the test's dockerd.
fn docker_container(container: &docker::Container) -> Value {
    json!({
        "id": container.id,
        "runtime": "docker",
        "name": container.name,
        "image": docker::IMAGE,
        "pod_uid": null,
        "pod": null,
        "namespace": null,
    })
}

/// S4 between two real Docker containers: `shop` serves, `cart` connects and closes with
/// SO_LINGER {on, 0}. With `--network none` each container has only its own lo, so `cart` joins
/// `shop`'s network namespace (`--network container:shop`, as a Kubernetes pod's containers
/// share one): both ends are on 127.0.0.1 of that namespace, each in its own container (cgroup,
/// PID namespace, process). The reset sent names `cart`, the reset received `shop`; a second
/// tracer with `--container NAME` keeps only `cart`'s events.
#[test]
fn s4_between_two_real_docker_containers_names_both() {
    let dockerd = docker::Dockerd::start("s4");
    let port: u16 = 9400;
    let suffix = std::process::id();
    let (shop_name, cart_name) = (
        format!("rst-s4-shop-{suffix}"),
        format!("rst-s4-cart-{suffix}"),
    );
    let shop = dockerd.run(
        &shop_name,
        &["--network", "none"],
        &["/rsttest", "serve", &port.to_string()],
    );
    let started = std::time::Instant::now();
    while !docker::listens(shop.pid, port) {
        assert!(started.elapsed().as_secs() < 10, "shop does not listen");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let netns = docker::netns_of(shop.pid).to_string();
    let root = dockerd.data_root().to_string_lossy().into_owned();
    let all = Tracer::start(&["--docker-root", &root, "--netns", &netns]);
    let only_cart = Tracer::start(&["--docker-root", &root, "--container", &cart_name]);
    let cart = dockerd.run(
        &cart_name,
        &["--network", &format!("container:{shop_name}")],
        &["/rsttest", "linger", &port.to_string(), "1000"],
    );
    assert_eq!(docker::netns_of(cart.pid).to_string(), netns);

    let sent = all.wait_for("cart's abortive close", |e| {
        kind(e) == "reset_sent" && remote_port_of(e) == u64::from(port)
    });
    assert_eq!(sent["cause"], "linger_abort", "{sent}");
    assert_eq!(sent["container"], docker_container(&cart), "{sent}");
    assert_eq!(
        pid_of(&sent),
        u64::from(cart.pid),
        "cart's host pid: {sent}"
    );
    assert_eq!(sent["process"]["ns_pid"], 1, "{sent}");
    assert_eq!(sent["process"]["comm"], "rsttest");

    let received = all.wait_for("shop's side of it", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(received["cause"], "linger_abort", "paired: {received}");
    assert_eq!(received["container"], docker_container(&shop), "{received}");
    assert_eq!(pid_of(&received), u64::from(shop.pid), "{received}");
    assert_eq!(received["process"]["ns_pid"], 1, "{received}");
    assert_eq!(remote_port_of(&received), local_port_of(&sent));

    only_cart.wait_for("cart's reset through --container NAME", |e| {
        kind(e) == "reset_sent" && remote_port_of(e) == u64::from(port)
    });
    all.stop();
    let finished = only_cart.stop();
    assert!(
        finished
            .events
            .iter()
            .all(|e| e["container"]["name"] == cart_name.as_str()),
        "--container {cart_name} let others through: {:?}",
        finished.events
    );
}

/// A Kubernetes container without Kubernetes: a cgroup scope named as the kubelet names it in a
/// burstable pod's slice, and the runtime's state file for its id, under a scratch root.
struct FakePod {
    id: String,
    slice: std::path::PathBuf,
    scope: std::path::PathBuf,
}

impl FakePod {
    fn new(
        uid: &str,
        scope_prefix: &str,
        id: String,
        state_file: &std::path::Path,
        annotations: Value,
    ) -> Self {
        let slice = cgroup2_root().join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        ));
        let scope = slice.join(format!("{scope_prefix}-{id}.scope"));
        std::fs::create_dir_all(&scope).expect("the pod's cgroup scope");
        std::fs::create_dir_all(state_file.parent().expect("a parent")).expect("state dir");
        let spec = json!({"ociVersion": "1.0.2", "process": {"args": ["/app"]}, "annotations": annotations});
        std::fs::write(state_file, spec.to_string()).expect("the runtime's config.json");
        Self { id, slice, scope }
    }

    /// A refused connect to `port` from a process in this container; its pid.
    fn refused_connect(&self, port: u16) -> u32 {
        let client = ForkedClient::fork(port, ClientAction::RefusedConnects(1));
        std::fs::write(self.scope.join("cgroup.procs"), client.pid.to_string())
            .expect("move the client into the scope");
        client.go_and_wait();
        client.pid as u32
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.scope);
        let _ = std::fs::remove_dir(&self.slice);
    }
}

/// Pods named from containerd's and CRI-O's own state: rst-trace is pointed at scratch roots
/// (`--containerd-state`, `--crio-root`) holding a config.json for each container, with the
/// annotations each runtime writes; a process in each container's cgroup connects to a closed
/// port, and its received reset names the pod, namespace, container and image.
#[test]
fn pods_are_named_from_containerd_and_crio_state() {
    require_root();
    let pid = std::process::id();
    let scratch = std::path::PathBuf::from(format!("/tmp/rst-trace-pods-{pid}"));
    let containerd_state = scratch.join("containerd");
    let crio_root = scratch.join("storage");
    let (web_uid, api_uid) = (
        format!("0b3d5f7a-1c2e-4a6b-8d9f-{pid:012x}"),
        format!("7e9a0c1d-3b5f-4d7e-9a1c-{pid:012x}"),
    );
    let web_id = format!("{:064x}", (u128::from(pid) << 8) | 1);
    let api_id = format!("{:064x}", (u128::from(pid) << 8) | 2);
    let web = FakePod::new(
        &web_uid,
        "cri-containerd",
        web_id.clone(),
        &containerd_state.join(format!(
            "io.containerd.runtime.v2.task/k8s.io/{web_id}/config.json"
        )),
        json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "web",
            "io.kubernetes.cri.image-name": "registry.example/shop/web:1.4",
            "io.kubernetes.cri.sandbox-name": "web-7d4f9c-x2x8q",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-uid": web_uid,
        }),
    );
    let api = FakePod::new(
        &api_uid,
        "crio",
        api_id.clone(),
        &crio_root.join(format!("overlay-containers/{api_id}/userdata/config.json")),
        json!({
            "io.kubernetes.container.name": "api",
            "io.kubernetes.cri-o.ImageName": "quay.io/acme/api:2",
            "io.kubernetes.pod.name": "billing-0",
            "io.kubernetes.pod.namespace": "pay",
            "io.kubernetes.pod.uid": api_uid,
        }),
    );
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--containerd-state",
        &containerd_state.to_string_lossy(),
        "--crio-root",
        &crio_root.to_string_lossy(),
    ]);
    for (pod, expected) in [
        (
            &web,
            json!({"id": web_id, "runtime": "containerd", "name": "web",
                   "image": "registry.example/shop/web:1.4", "pod_uid": web_uid,
                   "pod": "web-7d4f9c-x2x8q", "namespace": "shop"}),
        ),
        (
            &api,
            json!({"id": api_id, "runtime": "cri-o", "name": "api",
                   "image": "quay.io/acme/api:2", "pod_uid": api_uid,
                   "pod": "billing-0", "namespace": "pay"}),
        ),
    ] {
        let client = pod.refused_connect(port);
        let received = tracer.wait_for(&format!("{}'s refused connect", pod.id), |e| {
            kind(e) == "reset_received" && pid_of(e) == u64::from(client)
        });
        assert_eq!(received["container"], expected, "{received}");
        assert_eq!(received["cause"], "connection_refused");
    }
    tracer.stop();
    drop((web, api));
    let _ = std::fs::remove_dir_all(&scratch);
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
    syn_into_time_wait(&client, client_port, port);

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

/// A listener in a process of its own (`python3`), bound to `0.0.0.0:port` with a backlog of
/// 8, that never accepts; killed on drop.
struct IdleListener {
    child: std::process::Child,
}

impl IdleListener {
    fn start(port: u16) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import socket, time\n\
                     s = socket.socket()\n\
                     s.bind(('0.0.0.0', {port}))\n\
                     s.listen(8)\n\
                     print('listening', flush=True)\n\
                     time.sleep(60)\n"
                ),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn python3 (the listener)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the listener says it listens");
        assert_eq!(line.trim(), "listening");
        Self { child }
    }
}

impl Drop for IdleListener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_reset_on_a_connection_nobody_accepted_yet_names_the_listener() {
    let port = closed_port("0.0.0.0");
    // Started first: the listener's listen() is what names it.
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let listener = IdleListener::start(port);
    let (client, client_port) = bound_client("127.0.0.1");
    client
        .connect(&sockaddr("127.0.0.1", port))
        .expect("connect: the kernel completes the handshake");
    // Queued, never accepted: abort it from the client.
    client
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("SO_LINGER");
    drop(client);

    let received = tracer.wait_for("the queued connection's reset", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(received["state"], "ESTABLISHED", "{received}");
    assert_eq!(
        received["remote"],
        json!({"addr": "127.0.0.1", "port": client_port})
    );
    assert_eq!(received["cause"], "linger_abort", "{received}");
    assert_eq!(
        received["process"],
        json!({
            "pid": listener.child.id(),
            "tid": listener.child.id(),
            "comm": "python3",
            "source": "listener",
            "ns_pid": null
        }),
        "bound to 0.0.0.0, listening where 127.0.0.1:{port} was reached: {received}"
    );
    tracer.stop();
}

#[test]
fn a_short_lived_process_in_its_own_pid_namespace_keeps_its_ns_pid() {
    short_lived_process_in_a_pid_namespace(Programs::Btf);
    short_lived_process_in_a_pid_namespace(Programs::Classic);
}

fn short_lived_process_in_a_pid_namespace(programs: Programs) {
    let port = closed_port("127.0.0.1");
    let tracer = tracer_on_port(port, programs);
    // bash is pid 1 of a new PID namespace; its connect is refused and it exits at once.
    let status = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("unshare (util-linux) and bash");
    assert!(!status.success(), "the connect is refused");

    let received = tracer.wait_for("the refused connect's reset", |e| {
        kind(e) == "reset_received" && remote_port_of(e) == u64::from(port)
    });
    assert_eq!(received["cause"], "connection_refused", "{received}");
    assert_eq!(received["process"]["comm"], "bash", "{received}");
    assert_eq!(
        received["process"]["ns_pid"], 1,
        "read by the kernel at connect(), not from /proc: {received}"
    );
    let pid = pid_of(&received);
    assert!(pid > 1, "{received}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the process is gone: {received}"
    );
    tracer.stop();
}

#[test]
fn a_refused_connect_names_the_listener_that_closed_there() {
    let port = closed_port("127.0.0.1");
    let tracer = tracer_on_port(port, Programs::Btf);
    let listen_on_any_ipv6 = |only_v6: bool| {
        let addr: std::net::SocketAddr = format!("[::]:{port}").parse().expect("addr");
        let listener = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
        listener.set_only_v6(only_v6).expect("IPV6_V6ONLY");
        listener.set_reuse_address(true).expect("SO_REUSEADDR");
        listener.bind(&addr.into()).expect("bind");
        listener.listen(8).expect("listen");
        listener
    };
    // An IPv6-only listener on [::]:port never took IPv4 connections: when it has closed, a
    // refused connect to 127.0.0.1:port names no listener.
    drop(listen_on_any_ipv6(true));
    let (client, client_port) = bound_client("127.0.0.1");
    client
        .connect(&sockaddr("127.0.0.1", port))
        .expect_err("nothing listens");
    let sent = tracer.wait_for("the RST answering the first SYN", |e| {
        kind(e) == "reset_sent" && remote_port_of(e) == u64::from(client_port)
    });
    assert_eq!(sent["last_listener"], Value::Null, "{sent}");

    // A dual-stack listener on [::]:port takes IPv4 connections too; it closes, then
    // 127.0.0.1:port is refused.
    drop(listen_on_any_ipv6(false));
    let closed = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (client, client_port) = bound_client("127.0.0.1");
    client
        .connect(&sockaddr("127.0.0.1", port))
        .expect_err("nothing listens any more");
    let asked = closed.elapsed().as_secs_f64();

    // The thread that closed the listener, as the kernel names it.
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).expect("comm");
    let sent = tracer.wait_for("the RST answering the SYN", |e| {
        kind(e) == "reset_sent" && remote_port_of(e) == u64::from(client_port)
    });
    let received = tracer.wait_for("the RST reaching the client", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(client_port)
    });
    assert_eq!(sent["cause"], "port_closed", "{sent}");
    assert_eq!(received["cause"], "connection_refused", "{received}");
    for event in [&sent, &received] {
        let last = &event["last_listener"];
        assert_eq!(last["pid"], std::process::id(), "{event}");
        assert_eq!(last["comm"], comm.trim_end(), "{event}");
        assert_eq!(last["container"], Value::Null, "{event}");
        let seconds_ago = last["seconds_ago"].as_f64().unwrap_or(-1.0);
        assert!(
            (0.15..=asked + 0.05).contains(&seconds_ago),
            "closed 0.2 s to {asked:.3} s before: {event}"
        );
    }
    let explanation = sent["explanation"].as_str().unwrap_or_default();
    let (since, ago) = explanation.split_once(" ms ago: ").unwrap_or_default();
    assert_eq!(
        since.rsplit_once(' ').map(|(text, _)| text),
        Some(
            format!(
                "nothing listens on 127.0.0.1:{port} since {} (pid {}) closed its listener",
                comm.trim_end(),
                std::process::id()
            )
            .as_str()
        ),
        "{sent}"
    );
    assert_eq!(
        ago,
        format!("the SYN from 127.0.0.1:{client_port} was refused (no process owns a closed port)"),
        "{sent}"
    );
    tracer.stop();
}
