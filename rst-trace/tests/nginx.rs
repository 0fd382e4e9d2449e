//! Scenarios S2 and S13 (docs/scenarios.md) with a real nginx (the Debian package, installed by
//! `cargo xtask setup`): each test starts its own nginx on loopback (one master, one worker) with
//! a private prefix directory, makes the scenario happen, and asserts that rst-trace names the
//! nginx worker, not the master and not the client.

mod common;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

const NGINX: &str = "/usr/sbin/nginx";
const NGINX_START_TIMEOUT: Duration = Duration::from_secs(20);
const NGINX_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx (master in the foreground, one worker), stopped and cleaned up on drop, also
/// when an assertion failed.
struct Nginx {
    master: Child,
    worker: u32,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with `http_conf` inside its `http { ... }` block, in its own prefix directory.
    fn start(name: &str, http_conf: &str) -> Self {
        require_root();
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: `cargo xtask setup` installs nginx (Debian package)"
        );
        let dir =
            std::env::temp_dir().join(format!("rst-trace-nginx-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs")).expect("create the nginx prefix directory");
        let d = dir.display();
        let conf = format!(
            "master_process on;\n\
             worker_processes 1;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             access_log {d}/logs/access.log;\n\
             client_body_temp_path {d}/client_body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             {http_conf}\n\
             }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let master = Command::new(NGINX)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {NGINX}: {e} (`cargo xtask setup` installs nginx)"));
        let mut nginx = Self {
            master,
            worker: 0,
            dir,
        };
        nginx.worker = nginx.wait_for_worker();
        nginx
    }

    fn master_pid(&self) -> u32 {
        self.master.id()
    }

    fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }

    /// The one worker: the child of the master (found by scanning /proc/*/stat for its ppid).
    fn wait_for_worker(&mut self) -> u32 {
        let master = self.master_pid();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.master.try_wait() {
                panic!("nginx exited ({status}) at start:\n{}", self.error_log());
            }
            let workers = children_of(master);
            match workers.as_slice() {
                [worker] if comm_of(*worker).as_deref() == Some("nginx") => return *worker,
                [_, _, ..] => panic!("nginx master {master} has several children: {workers:?}"),
                _ => {}
            }
            assert!(
                started.elapsed() < NGINX_START_TIMEOUT,
                "nginx master {master} started no worker within {NGINX_START_TIMEOUT:?}:\n{}",
                self.error_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until nginx accepts connections on `port` (a clean connect and close: no reset).
    fn wait_until_listening(&self, port: u16) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < NGINX_START_TIMEOUT,
                "nginx did not listen on 127.0.0.1:{port} within {NGINX_START_TIMEOUT:?}:\n{}",
                self.error_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "nginx error log ({}):\n{}",
                self.dir.display(),
                self.error_log()
            );
        }
        // SIGTERM: fast shutdown of the master and its worker.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.master_pid() as i32, libc::SIGTERM) };
        let started = Instant::now();
        let exited = loop {
            match self.master.try_wait() {
                Ok(Some(_)) | Err(_) => break true,
                Ok(None) if started.elapsed() > NGINX_STOP_TIMEOUT => break false,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        };
        if !exited {
            let _ = self.master.kill();
            let _ = self.master.wait();
        }
        // A worker left behind by a killed master: end it by its pid, if it is still that worker.
        if self.worker != 0 && comm_of(self.worker).as_deref() == Some("nginx") {
            let deadline = Instant::now() + NGINX_STOP_TIMEOUT;
            while comm_of(self.worker).is_some() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if comm_of(self.worker).as_deref() == Some("nginx") {
                // SAFETY: kill(2) on the worker our nginx master forked.
                unsafe { libc::kill(self.worker as i32, libc::SIGKILL) };
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `(comm, ppid)` from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(String, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat[open + 1..close].to_string();
    // After the comm: state, ppid, ...
    let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

fn comm_of(pid: u32) -> Option<String> {
    stat_of(pid).map(|(comm, _)| comm)
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut children: Vec<u32> = fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_of(*pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect();
    children.sort_unstable();
    children
}

/// Sends one `GET /` to nginx and returns the whole response (nginx closes after it).
fn http_get_and_close(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("read timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read nginx's response");
    response
}

/// S2's set-up: nginx on a free loopback port proxying to `upstream_port` (nothing listens there
/// yet), and a tracer of both ports.
fn s2_proxy(name: &str) -> (Nginx, u16, u16, Tracer) {
    let upstream_port = closed_port("127.0.0.1");
    let port = closed_port("127.0.0.1");
    let nginx = Nginx::start(
        name,
        &format!(
            "upstream backend {{ server 127.0.0.1:{upstream_port}; }}\n\
             server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{ proxy_pass http://backend; }}\n\
             }}"
        ),
    );
    nginx.wait_until_listening(port);
    let tracer = Tracer::start(&[
        "--port",
        &upstream_port.to_string(),
        "--port",
        &port.to_string(),
    ]);
    (nginx, port, upstream_port, tracer)
}

#[test]
fn s2_nginx_502_upstream_down_is_attributed_to_the_nginx_worker() {
    let (nginx, port, upstream_port, tracer) = s2_proxy("s2");

    let response = http_get_and_close(port);
    assert!(
        response.starts_with("HTTP/1.1 502 "),
        "nginx should answer 502 Bad Gateway, got:\n{response}\nerror log:\n{}",
        nginx.error_log()
    );

    let sent = tracer.wait_for("the RST answering nginx's SYN to the dead upstream", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(upstream_port)
    });
    assert_eq!(sent["cause"], "port_closed", "{sent}");
    assert_eq!(sent["reason"], sent_reason("NO_SOCKET"), "{sent}");
    assert_eq!(
        sent["local"],
        json!({"addr": "127.0.0.1", "port": upstream_port})
    );

    let received = tracer.wait_for("the RST reaching nginx's upstream connect", |e| {
        kind(e) == "reset_received" && remote_port_of(e) == u64::from(upstream_port)
    });
    assert_eq!(received["cause"], "connection_refused", "{received}");
    assert_eq!(received["state"], "SYN_SENT", "{received}");
    assert_eq!(
        received["remote"],
        json!({"addr": "127.0.0.1", "port": upstream_port})
    );
    assert_eq!(
        remote_port_of(&sent),
        local_port_of(&received),
        "one connection"
    );
    assert_eq!(received["process"]["comm"], "nginx", "{received}");
    assert_ne!(
        pid_of(&received),
        u64::from(nginx.master_pid()),
        "the master never connects upstream: {received}"
    );
    assert_eq!(
        pid_of(&received),
        u64::from(nginx.worker),
        "the nginx worker connected upstream: {received}"
    );
    assert!(
        matches!(
            received["process"]["source"].as_str(),
            Some("owner" | "context")
        ),
        "{received}"
    );
    let explanation = received["explanation"].as_str().unwrap_or_default();
    assert!(
        explanation.contains(&format!("127.0.0.1:{upstream_port}")),
        "the explanation names the upstream address: {received}"
    );
    // No upstream ever listened there while rst-trace ran: said, and no listener named.
    for event in [&sent, &received] {
        assert_eq!(event["last_listener"], Value::Null, "{event}");
        let explanation = event["explanation"].as_str().unwrap_or_default();
        assert!(
            explanation.ends_with("; nothing has listened there since rst-trace started"),
            "{event}"
        );
    }

    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    for event in &finished.events {
        println!("s2 event: {event}");
    }
}

/// A real upstream: `python3 -m http.server` on 127.0.0.1:`port`, killed on drop.
struct Upstream {
    child: Child,
}

impl Upstream {
    fn start(port: u16) -> Self {
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 (the upstream): {e}"));
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < NGINX_START_TIMEOUT,
                "the upstream did not listen on 127.0.0.1:{port}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Self { child }
    }

    /// SIGTERM, and waits until it is gone: its listener closes as it exits.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s2_nginx_502_names_the_upstream_that_stopped_listening() {
    // The tracer starts before the upstream: its listen() and its close are both seen.
    let (nginx, port, upstream_port, tracer) = s2_proxy("s2-last");
    let mut upstream = Upstream::start(upstream_port);
    let upstream_pid = upstream.child.id();
    let response = http_get_and_close(port);
    assert!(
        response.starts_with("HTTP/1.1 200 "),
        "nginx proxies to the running upstream, got:\n{response}\nerror log:\n{}",
        nginx.error_log()
    );
    upstream.stop();
    let stopped = Instant::now();
    thread::sleep(Duration::from_millis(300));

    let response = http_get_and_close(port);
    let asked = stopped.elapsed().as_secs_f64();
    assert!(
        response.starts_with("HTTP/1.1 502 "),
        "nginx should answer 502 Bad Gateway, got:\n{response}\nerror log:\n{}",
        nginx.error_log()
    );

    // (The test's own connects while waiting for the upstream to listen were refused too.)
    let received = tracer.wait_for("the RST reaching nginx's upstream connect", |e| {
        kind(e) == "reset_received"
            && remote_port_of(e) == u64::from(upstream_port)
            && e["cause"] == "connection_refused"
            && pid_of(e) == u64::from(nginx.worker)
    });
    let sent = tracer.wait_for(
        "the RST answering nginx's SYN to the stopped upstream",
        |e| {
            kind(e) == "reset_sent"
                && local_port_of(e) == u64::from(upstream_port)
                && remote_port_of(e) == local_port_of(&received)
        },
    );
    assert_eq!(sent["cause"], "port_closed", "{sent}");
    for event in [&sent, &received] {
        let last = &event["last_listener"];
        assert_eq!(last["pid"], upstream_pid, "the stopped upstream: {event}");
        assert_eq!(last["comm"], "python3", "{event}");
        assert_eq!(last["container"], Value::Null, "{event}");
        let seconds_ago = last["seconds_ago"].as_f64().unwrap_or(-1.0);
        assert!(
            (0.25..=asked + 0.05).contains(&seconds_ago),
            "closed between 0.25 s and {asked:.3} s before the refused connect: {event}"
        );
        let explanation = event["explanation"].as_str().unwrap_or_default();
        assert!(
            explanation.contains(&format!(
                "nothing listens on 127.0.0.1:{upstream_port} since python3 (pid {upstream_pid}) \
                 closed its listener "
            )) || explanation.contains(&format!(
                "where nothing listens since python3 (pid {upstream_pid}) closed its listener "
            )),
            "{event}"
        );
    }

    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    for event in &finished.events {
        println!("s2 event: {event}");
    }
}

#[test]
fn s13_client_abort_after_response_is_explained_on_the_nginx_side() {
    let port = closed_port("127.0.0.1");
    let nginx = Nginx::start(
        "s13",
        &format!(
            "keepalive_timeout 60;\n\
             server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{ return 200 \"ok\\n\"; }}\n\
             }}"
        ),
    );
    nginx.wait_until_listening(port);
    // Started before the client connects: the worker becomes the socket's owner at accept.
    let tracer = Tracer::start(&["--port", &port.to_string()]);

    let (client, client_port) = bound_client("127.0.0.1");
    client
        .connect(&sockaddr("127.0.0.1", port))
        .expect("connect to nginx");
    client
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("read timeout");
    (&client)
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send the request");
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !response.ends_with(b"\r\n\r\nok\n") {
        let n = (&client).read(&mut buffer).expect("read the response");
        assert!(
            n > 0,
            "nginx closed before the whole response: {}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buffer[..n]);
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    // Let the ACK of the response reach nginx, then abort: SO_LINGER {on, 0} and close.
    thread::sleep(Duration::from_millis(100));
    client.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(client);

    let sent = tracer.wait_for("the client's abortive close", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(client_port)
    });
    assert_eq!(sent["cause"], "linger_abort", "{sent}");
    assert_eq!(remote_port_of(&sent), u64::from(port), "{sent}");
    assert_eq!(
        pid_of(&sent),
        u64::from(std::process::id()),
        "the test process closed it: {sent}"
    );

    let received = tracer.wait_for("nginx's side of the reset", |e| {
        kind(e) == "reset_received" && local_port_of(e) == u64::from(port)
    });
    assert_eq!(
        remote_port_of(&received),
        u64::from(client_port),
        "{received}"
    );
    assert_eq!(received["state"], "ESTABLISHED", "{received}");
    assert_eq!(received["process"]["comm"], "nginx", "{received}");
    assert_ne!(
        pid_of(&received),
        u64::from(nginx.master_pid()),
        "the master never owns client connections: {received}"
    );
    assert_eq!(
        pid_of(&received),
        u64::from(nginx.worker),
        "the nginx worker accepted the connection: {received}"
    );
    // Both ends are on this host and rst-trace pairs them: S4's linger_abort (peer_abort when the
    // client is elsewhere; docs/scenarios.md).
    assert_eq!(received["cause"], "linger_abort", "{received}");
    let explanation = received["explanation"].as_str().unwrap_or_default();
    assert!(
        explanation.contains("the exchange had completed"),
        "S13: the hint that the request completed (response sent and acknowledged): {received}"
    );

    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
}
