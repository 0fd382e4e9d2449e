//! The DaemonSet as deployed: the real binary run with exactly the user, capabilities and
//! read-only host mounts that deploy/daemonset.yaml declares (read from the manifest; every other
//! capability dropped with `setpriv`, the mounts made read-only in a mount namespace of the
//! test's own). Under them, an accept-queue overflow in a container's network namespace is
//! reported with its container, a linger-0 reset by a non-root process in another namespace
//! names that process, and `check` passes.
//!
//! Test names start with `deploy_`, so that `cargo xtask test -- deploy` runs them with the
//! manifest's other tests.

mod common;

use std::{
    fs,
    io::ErrorKind,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{container::Container, netns::TestNetns, *};
use serde_json::Value;
use serde_norway::Value as Yaml;
use socket2::{Domain, Socket, Type};

/// The container spec of the DaemonSet.
fn manifest_container() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml");
    let text = fs::read_to_string(path).expect("deploy/daemonset.yaml");
    let daemonset = serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            <Yaml as serde::Deserialize>::deserialize(document).expect("daemonset.yaml is YAML")
        })
        .find(|document| document["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet in daemonset.yaml");
    daemonset["spec"]["template"]["spec"]["containers"][0].clone()
}

/// `unshare` + `setpriv` running `args` (the binary first) as the manifest's container would:
/// its user, only the capabilities it adds (bounding and inheritable sets; no new privileges),
/// and its read-only mounts read-only.
fn as_deployed(args: &[&str]) -> Command {
    let container = manifest_container();
    let security = &container["securityContext"];
    let uid = security["runAsUser"].as_u64().expect("runAsUser");
    assert_eq!(
        security["capabilities"]["drop"][0].as_str(),
        Some("ALL"),
        "the manifest drops every capability first"
    );
    let added: Vec<String> = security["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities to add")
        .iter()
        .map(|cap| format!("+{}", cap.as_str().expect("a name").to_lowercase()))
        .collect();
    let caps = format!("-all,{}", added.join(","));
    let mut script = String::from("set -e\n");
    for mount in container["volumeMounts"].as_sequence().expect("mounts") {
        if mount["readOnly"].as_bool() == Some(true) {
            let path = mount["mountPath"].as_str().expect("mountPath");
            script.push_str(&format!(
                "mount --bind {path} {path}\nmount -o remount,bind,ro {path}\n"
            ));
        }
    }
    script.push_str(&format!(
        "exec setpriv --reuid={uid} --regid={uid} --clear-groups --no-new-privs \
         --inh-caps={caps} --bounding-set={caps} \"$@\"\n"
    ));
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args(args);
    command
}

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

/// A non-root process (uid 65534) in `netns` accepts a connection and closes it with SO_LINGER
/// 0, which sends a reset; returns its pid.
fn linger_zero_reset_as_nobody(netns: &TestNetns, port: u16) -> u32 {
    let script = format!(
        "import os, socket, struct, time\n\
         l = socket.socket(); l.bind(('127.0.0.1', {port})); l.listen(4)\n\
         c = socket.create_connection(('127.0.0.1', {port}))\n\
         a, _ = l.accept()\n\
         a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         print(os.getpid(), flush=True)\n\
         a.close()\n\
         time.sleep(0.5)\n"
    );
    let output = Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args(["/usr/bin/python3", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("ip netns exec setpriv python3");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the closing process's pid")
}

#[test]
fn deploy_as_deployed_reports_container_overflows_and_non_root_resets_in_other_namespaces() {
    require_root();
    let overflow_ns = TestNetns::new("dso");
    let port = 8080;
    let container = Container::start(&overflow_ns, port);
    let reset_ns = TestNetns::new("dsr");
    let tracer = Tracer::start_command(as_deployed(&[BINARY, "--json"]));
    // The first pass of the listener iterator is the baseline.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(overflow_ns.tcp_ext("ListenOverflows"), 0);
    let clients = connect_many(
        &overflow_ns,
        format!("127.0.0.1:{port}").parse().expect("addr"),
        6,
    );
    let started = Instant::now();
    while overflow_ns.tcp_ext("ListenOverflows") < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ListenOverflows did not move"
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(clients);
    let closer = linger_zero_reset_as_nobody(&reset_ns, 9091);
    thread::sleep(Duration::from_millis(2500));
    let overflows = overflow_ns.tcp_ext("ListenOverflows");
    let finished = tracer.stop();

    let drops: Vec<&Value> = finished
        .events
        .iter()
        .filter(|e| e["cause"] == "accept_queue_full" && e["netns"] == overflow_ns.inode())
        .collect();
    assert!(
        !drops.is_empty(),
        "no accept_queue_full:\n{}",
        finished.stderr
    );
    let reported: u64 = drops.iter().map(|e| e["drops"].as_u64().unwrap_or(0)).sum();
    assert_eq!(reported, overflows, "drops = ListenOverflows: {drops:?}");
    let event = drops[0];
    assert_eq!(event["container"]["id"], container.id.as_str(), "{event}");
    assert_eq!(event["container"]["runtime"], "docker");
    assert_eq!(event["counter"]["name"], "ListenOverflows");
    assert_eq!(pid_of(event), u64::from(container.listener_pid), "{event}");
    assert_eq!(event["process"]["comm"], "busybox");

    let reset = finished
        .events
        .iter()
        .find(|e| {
            kind(e) == "reset_sent" && e["netns"] == reset_ns.inode() && local_port_of(e) == 9091
        })
        .unwrap_or_else(|| panic!("no reset on port 9091:\n{}", finished.stderr));
    assert_eq!(pid_of(reset), u64::from(closer), "{reset}");
    assert_eq!(reset["process"]["comm"], "python3");
    assert!(
        !finished.stderr.contains("listener iterator is off"),
        "{}",
        finished.stderr
    );
}

#[test]
fn deploy_as_deployed_check_passes_and_names_the_listener_iterator() {
    require_root();
    let output = as_deployed(&[BINARY, "check"])
        .stdin(Stdio::null())
        .output()
        .expect("rst-trace check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check failed under the manifest's privileges:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("privileges: ok"), "{stdout}");
    let iterator = stdout
        .split_once("iter:task_file")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("check lists the listener iterator:\n{stdout}"));
    assert!(
        iterator.contains("loaded, and a pass read every listener"),
        "{stdout}"
    );
}

#[test]
fn deploy_as_deployed_backlog_reports_a_containers_full_accept_queue() {
    require_root();
    let netns = TestNetns::new("dsb");
    let port = 8080;
    let container = Container::start(&netns, port);
    let backlog = as_deployed(&[
        BINARY,
        "backlog",
        "--json",
        "--interval",
        "1",
        "--duration",
        "6",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("rst-trace backlog");
    // Its first pass is the baseline; a debug build takes a while to load.
    thread::sleep(Duration::from_millis(2500));
    let clients = connect_many(
        &netns,
        format!("127.0.0.1:{port}").parse().expect("addr"),
        6,
    );
    let output = backlog.wait_with_output().expect("backlog ran");
    drop(clients);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let rows: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .filter(|row: &Value| row["netns"] == netns.inode())
        .collect();
    let row = rows
        .first()
        .unwrap_or_else(|| panic!("no row for the container's listener:\n{stdout}\n{stderr}"));
    assert_eq!(row["cause"], "accept_queue_full", "{row}");
    assert_eq!(row["container"]["id"], container.id.as_str(), "{row}");
    // busybox nc listens dual-stack.
    assert_eq!(row["listen"], format!("[::]:{port}").as_str(), "{row}");
    assert_eq!(row["counter"], "ListenOverflows", "{row}");
    assert_eq!(row["process"]["pid"], container.listener_pid, "{row}");
}
