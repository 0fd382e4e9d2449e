//! Scenarios (docs/scenarios.md) that need a peer in another network namespace: each test builds
//! two namespaces of its own joined by a veth pair (addresses that exist only there), opens the
//! server's sockets in one and the client's in the other from threads of this process, changes
//! what the server's namespace lets through with nftables, and asserts the events.

mod common;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{netns::TestNetns, *};
use serde_json::{Value, json};
use socket2::{Socket, TcpKeepalive};

/// Bound on every external command (ip, nft).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a command (with `stdin` fed to it), fails the test unless it succeeds.
fn run(args: &[&str], stdin: Option<&str>) {
    let output = run_quiet(args, stdin);
    assert!(
        output.as_ref().is_ok_and(|(ok, _)| *ok),
        "{args:?} failed: {output:?}"
    );
}

/// Runs a command within [`COMMAND_TIMEOUT`]; Ok((succeeded, stderr)).
fn run_quiet(args: &[&str], stdin: Option<&str>) -> Result<(bool, String), String> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("stdin: {e}"))?;
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            break status;
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {COMMAND_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    Ok((status.success(), stderr))
}

/// A server namespace and a client namespace ([`TestNetns`]) joined by a veth pair on
/// 10.231.`subnet`.0/30; dropping it deletes both namespaces and the veth pair, also when an
/// assertion failed.
struct Peers {
    server: TestNetns,
    client: TestNetns,
    server_link: String,
    client_link: String,
    server_ip: String,
    client_ip: String,
}

impl Peers {
    fn new(tag: &str, subnet: u8) -> Self {
        let pid = std::process::id();
        // The guard exists before the veth pair is created, so a failed step still cleans up.
        let peers = Self {
            server: TestNetns::new(&format!("{tag}-srv")),
            client: TestNetns::new(&format!("{tag}-cli")),
            // Interface names: at most 15 bytes ("r" + 3 + 1 + a pid of at most 7 digits).
            server_link: format!("r{tag}s{pid}"),
            client_link: format!("r{tag}c{pid}"),
            server_ip: format!("10.231.{subnet}.1"),
            client_ip: format!("10.231.{subnet}.2"),
        };
        // Both ends are created inside the namespaces: nothing of this appears on the host.
        run(
            &[
                "ip",
                "link",
                "add",
                &peers.server_link,
                "netns",
                &peers.server.name,
                "type",
                "veth",
                "peer",
                "name",
                &peers.client_link,
                "netns",
                &peers.client.name,
            ],
            None,
        );
        for (ns, link, ip) in [
            (&peers.server.name, &peers.server_link, &peers.server_ip),
            (&peers.client.name, &peers.client_link, &peers.client_ip),
        ] {
            run(
                &[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{ip}/30"),
                    "dev",
                    link,
                ],
                None,
            );
            run(&["ip", "-n", ns, "link", "set", link, "up"], None);
        }
        peers
    }

    /// Loads an nftables script into the server's namespace.
    fn server_nft(&self, script: &str) {
        run(
            &["ip", "netns", "exec", &self.server.name, "nft", "-f", "-"],
            Some(script),
        );
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        // Deleting a namespace (when `server` and `client` drop, after this) destroys the veth
        // end in it and so the pair; the link deletions only matter if a failed step left an
        // end on the host.
        for link in [&self.server_link, &self.client_link] {
            if std::path::Path::new("/sys/class/net").join(link).exists() {
                let _ = run_quiet(&["ip", "link", "del", link], None);
            }
        }
    }
}

/// From the client namespace: a connected client of `server_ip:port`, and its port.
fn connect_from(peers: &Peers, port: u16) -> (Socket, u16) {
    peers.client.run(|| {
        let (client, client_port) = bound_client(&peers.client_ip);
        client
            .connect_timeout(&sockaddr(&peers.server_ip, port), Duration::from_secs(5))
            .expect("connect across the veth pair");
        (client, client_port)
    })
}

fn addr_of(e: &Value, end: &str) -> String {
    e[end]["addr"].as_str().unwrap_or_default().to_string()
}

/// A connection across the veth pair whose client sends keep-alive probes (after 1 s, every 1 s,
/// 2 retries) while the server's namespace drops everything: the client's kernel gives up with
/// a reset from its timer (S10, and the softirq test).
struct KeepaliveToAVanishedPeer {
    peers: Peers,
    tracer: Tracer,
    port: u16,
    client_port: u16,
    _client: Socket,
    _server: Socket,
    _listener: Socket,
}

impl KeepaliveToAVanishedPeer {
    fn new(tag: &str, subnet: u8) -> Self {
        let peers = Peers::new(tag, subnet);
        let (listener, port) = peers.server.run(|| listener(&peers.server_ip, 4));
        let tracer = Tracer::start(&["--port", &port.to_string()]);
        let (client, client_port) = connect_from(&peers, port);
        let (server, _) = listener.accept().expect("accept");
        let keepalive = TcpKeepalive::new()
            .with_time(Duration::from_secs(1))
            .with_interval(Duration::from_secs(1))
            .with_retries(2);
        client.set_tcp_keepalive(&keepalive).expect("keep-alive");
        // The server's namespace vanishes from the network: probes go unanswered.
        peers.server_nft(&format!(
            "table inet rst_{tag} {{
               chain in {{ type filter hook input priority 0; policy drop; }}
               chain out {{ type filter hook output priority 0; policy drop; }}
             }}"
        ));
        Self {
            peers,
            tracer,
            port,
            client_port,
            _client: client,
            _server: server,
            _listener: listener,
        }
    }
}

#[test]
fn s10_keepalive_timeout_is_attributed_to_the_socket_owner() {
    require_root();
    // Every part bound to a name: a part left to `..` would be dropped here.
    let KeepaliveToAVanishedPeer {
        peers,
        tracer,
        port,
        client_port,
        _client,
        _server,
        _listener,
    } = KeepaliveToAVanishedPeer::new("s10", 10);

    let sent = tracer.wait_for("the client's keep-alive giving up", |e| {
        kind(e) == "reset_sent"
            && local_port_of(e) == u64::from(client_port)
            && addr_of(e, "local") == peers.client_ip
    });
    eprintln!("s10 reset_sent: {sent}");
    assert_eq!(
        sent["reason"],
        sent_reason("TCP_KEEPALIVE_TIMEOUT"),
        "{sent}"
    );
    assert_eq!(sent["state"], "ESTABLISHED", "{sent}");
    assert_eq!(sent["cause"], "keepalive_timeout", "{sent}");
    assert_eq!(
        sent["local"],
        json!({"addr": peers.client_ip, "port": client_port})
    );
    assert_eq!(
        sent["remote"],
        json!({"addr": peers.server_ip, "port": port})
    );
    assert_eq!(
        sent["process"]["pid"],
        std::process::id(),
        "the socket's owner, not the task the timer interrupted: {sent}"
    );
    assert!(
        ["owner", "context"].contains(&sent["process"]["source"].as_str().unwrap_or_default()),
        "{sent}"
    );
    assert_eq!(
        sent["netns"],
        peers.client.inode(),
        "the client's namespace: {sent}"
    );
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
}

#[test]
fn s11_segment_for_a_forgotten_connection_is_half_open() {
    require_root();
    let peers = Peers::new("s11", 11);
    let (listener, port) = peers.server.run(|| listener(&peers.server_ip, 4));
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let (client, client_port) = connect_from(&peers, port);
    let (server, _) = listener.accept().expect("accept");

    // The server forgets the connection without telling the client: its abortive close sends a
    // RST that never leaves the namespace. With the listener gone too, nothing is left on the
    // port for the client's next segment to match.
    peers.server_nft(
        "table inet rst_s11 {
           chain out {
             type filter hook output priority 0; policy accept;
             tcp flags & (rst | fin) != 0 drop;
           }
         }",
    );
    server.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(server);
    drop(listener);
    peers.server_nft("delete table inet rst_s11");
    (&client)
        .write_all(b"are you still there?")
        .expect("send on the half-open connection");

    let sent = tracer.wait_for("the server's RST from no socket", |e| {
        kind(e) == "reset_sent"
            && local_port_of(e) == u64::from(port)
            && remote_port_of(e) == u64::from(client_port)
            && e["state"].is_null()
    });
    assert_eq!(sent["reason"], sent_reason("NO_SOCKET"), "{sent}");
    assert_eq!(
        sent["cause"], "half_open",
        "a data segment, not a SYN: {sent}"
    );
    assert_eq!(
        sent["local"],
        json!({"addr": peers.server_ip, "port": port})
    );
    assert_eq!(
        sent["remote"],
        json!({"addr": peers.client_ip, "port": client_port})
    );
    assert_eq!(sent["sock_cookie"], Value::Null, "{sent}");
    assert_eq!(
        sent["netns"],
        peers.server.inode(),
        "the server's namespace: {sent}"
    );

    let received = tracer.wait_for("the client's reset", |e| {
        kind(e) == "reset_received"
            && local_port_of(e) == u64::from(client_port)
            && addr_of(e, "local") == peers.client_ip
    });
    // Everything so far, the server's dropped linger_abort RST included, for the failure report.
    for event in tracer.events() {
        eprintln!("s11 event: {event}");
    }
    assert_eq!(received["state"], "ESTABLISHED", "{received}");
    assert_eq!(received["cause"], "peer_abort", "{received}");
    assert_eq!(
        received["remote"],
        json!({"addr": peers.server_ip, "port": port})
    );
    assert_eq!(received["process"]["pid"], std::process::id(), "{received}");
    assert_eq!(
        received["netns"],
        peers.client.inode(),
        "the client's namespace: {received}"
    );

    // The client's application sees it as well.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let error = (&client)
        .read(&mut [0u8; 16])
        .expect_err("the connection was reset");
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);

    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
}

/// Busy loops on every CPU, so that a timer softirq interrupts one of them.
struct BusyLoops(Vec<std::process::Child>);

impl BusyLoops {
    fn on_every_cpu() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let loops = (0..cpus)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("spawn a busy loop")
            })
            .collect();
        Self(loops)
    }

    fn pids(&self) -> Vec<u64> {
        self.0.iter().map(|child| u64::from(child.id())).collect()
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn softirq_reset_names_the_owner_not_the_interrupted_task() {
    require_root();
    let KeepaliveToAVanishedPeer {
        peers: _peers,
        tracer,
        port: _,
        client_port,
        _client,
        _server,
        _listener,
    } = KeepaliveToAVanishedPeer::new("sirq", 12);
    // While every CPU runs a busy loop, the keep-alive timer fires in softirq and interrupts
    // whatever runs there; the test process itself sleeps in wait_for.
    let busy = BusyLoops::on_every_cpu();
    let sent = tracer.wait_for("the keep-alive reset from the timer", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(client_port)
    });
    assert_eq!(sent["cause"], "keepalive_timeout", "{sent}");
    assert_eq!(
        sent["process"]["pid"],
        std::process::id(),
        "the socket's owner: {sent}"
    );
    assert!(
        !busy.pids().contains(&pid_of(&sent)),
        "not an interrupted busy loop: {sent}"
    );
    assert_eq!(
        sent["process"]["source"], "owner",
        "the timer did not run in the owner: {sent}"
    );
    drop(busy);
    tracer.stop();
}
