//! `--pcap FILE` through the real binary, read back with the real tshark: in one run with
//! `--json`, every reset sent in answer to a segment (S1 on IPv4 and IPv6, S3, S9) and every
//! queue drop seen in `kfree_skb` is in the file as the segment it answered or dropped, with
//! the four-tuple of its JSON event and a comment naming its cause; nothing else is (received
//! resets and drops a listener sample found have no packet).

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;
use socket2::Socket;

/// A scratch file for one test's pcapng, removed when dropped.
struct ScratchFile(PathBuf);

impl ScratchFile {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("rst-trace-{name}-{}.pcapng", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8 here")
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One packet as tshark dissects it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    interface: String,
    src: (String, u64),
    dst: (String, u64),
    /// `tcp.flags`, e.g. `0x0002` for a SYN.
    flags: String,
    /// The packet's length (`frame.len`) and the bytes in the file (`frame.cap_len`).
    len: u64,
    cap_len: u64,
    /// The IP and TCP headers' lengths.
    headers: u64,
    /// TCP payload bytes in the packet (`tcp.len`, from the headers).
    payload_len: u64,
    comment: String,
}

/// Every frame of `path`, read by `tshark -T fields`.
fn tshark(path: &Path) -> Vec<Frame> {
    let fields = [
        "frame.interface_name",
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
        "tcp.flags",
        "frame.len",
        "frame.cap_len",
        "ip.hdr_len",
        "tcp.hdr_len",
        "tcp.len",
        "frame.comment",
    ];
    let mut command = Command::new("tshark");
    command.arg("-r").arg(path).args(["-T", "fields"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let output = command
        .output()
        .expect("tshark (cargo xtask setup --for test installs it)");
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("tshark prints UTF-8")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), fields.len(), "tshark line: {line}");
            let ip = |v4: &str, v6: &str| if v4.is_empty() { v6 } else { v4 }.to_string();
            let number = |text: &str| text.parse::<u64>().unwrap_or(u64::MAX);
            Frame {
                interface: f[0].to_string(),
                src: (ip(f[1], f[2]), number(f[3])),
                dst: (ip(f[4], f[5]), number(f[6])),
                flags: f[7].to_string(),
                len: number(f[8]),
                cap_len: number(f[9]),
                // IPv6 (no ip.hdr_len): the fixed header.
                headers: f[10].parse::<u64>().unwrap_or(40) + number(f[11]),
                payload_len: number(f[12]),
                comment: f[13].to_string(),
            }
        })
        .collect()
}

fn end(e: &Value, which: &str) -> (String, u64) {
    (
        e[which]["addr"].as_str().unwrap_or_default().to_string(),
        e[which]["port"].as_u64().unwrap_or_default(),
    )
}

/// What ties a frame to its JSON event: the segment came in from the event's remote end to its
/// local end, on its namespace's interface, and the comment starts with its kind and cause.
type Key = ((String, u64), (String, u64), String, String);

fn event_key(e: &Value) -> Key {
    (
        end(e, "remote"),
        end(e, "local"),
        format!("netns:{}", e["netns"]),
        format!("{} {}", kind(e), e["cause"].as_str().unwrap_or("?")),
    )
}

fn frame_key(f: &Frame) -> Key {
    let words: Vec<&str> = f.comment.splitn(3, [' ', ';']).take(2).collect();
    (
        f.src.clone(),
        f.dst.clone(),
        f.interface.clone(),
        words.join(" "),
    )
}

/// The frames of one JSON event (a retransmitted segment dropped again is one more).
fn frames_of<'a>(frames: &'a [Frame], e: &Value) -> Vec<&'a Frame> {
    frames
        .iter()
        .filter(|f| frame_key(f) == event_key(e))
        .collect()
}

/// The file holds what the kernel had of the packet: the whole headers, the payload only as
/// far as it was in the skb's linear data (data a local sender wrote is in page fragments, and
/// not copied), never more than the packet or 64 payload bytes.
fn assert_truthful(frame: &Frame) {
    assert_eq!(frame.len, frame.headers + frame.payload_len, "{frame:?}");
    assert!(
        frame.cap_len >= frame.headers && frame.cap_len <= frame.len.min(frame.headers + 64),
        "{frame:?}"
    );
}

/// A listener that holds handshakes back until data comes (TCP_DEFER_ACCEPT) and never
/// accepts: each client's first data segment then meets a full accept queue, and the kernel
/// drops it with TCP_LISTEN_OVERFLOW (the final ACKs are not what overflows: the SYNs of a
/// full queue are dropped before any skb is freed with a reason).
fn deferring_listener() -> (Socket, u16) {
    use std::os::fd::AsRawFd as _;
    let (socket, port) = listener("127.0.0.1", 1);
    let seconds: libc::c_int = 5;
    // SAFETY: setsockopt with a pointer to a local int.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        ret,
        0,
        "TCP_DEFER_ACCEPT: {}",
        std::io::Error::last_os_error()
    );
    (socket, port)
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const HELLO: &[u8] = b"hello from a client the queue had no room for";

#[test]
fn pcap_holds_the_segment_behind_every_reset_sent_and_drop_s1_s3_s9_s6() {
    let file = ScratchFile::new("pcap");
    let (closed_v4, closed_v6) = (closed_port("127.0.0.1"), closed_port("::1"));
    let (s3_listener, s3_port) = listener("127.0.0.1", 16);
    let (s9_listener, s9_port) = listener("127.0.0.1", 16);
    let (queue_listener, queue_port) = deferring_listener();
    let ports = [closed_v4, closed_v6, s3_port, s9_port, queue_port];
    let mut args = vec!["--pcap".to_string(), file.arg().to_string()];
    for port in ports {
        args.extend(["--port".to_string(), port.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tracer = Tracer::start(&args);

    // S1, both families: a SYN to a closed port.
    for (ip, port) in [("127.0.0.1", closed_v4), ("::1", closed_v6)] {
        let (client, _) = bound_client(ip);
        client
            .connect(&sockaddr(ip, port))
            .expect_err("nothing listens");
    }
    // S3: a request on a pooled connection the server closed.
    let (s3_client, _) = idle_connection_closed_by_server(s3_port, &s3_listener);
    std::thread::sleep(Duration::from_millis(300));
    (&s3_client).write_all(REQUEST).expect("send");
    // S9: a SYN for the time-wait connection.
    let (s9_client, s9_client_port) = idle_connection_closed_by_server(s9_port, &s9_listener);
    syn_into_time_wait(&s9_client, s9_client_port, s9_port);
    // A full accept queue drops data segments (kfree_skb, TCP_LISTEN_OVERFLOW).
    let clients: Vec<Socket> = (0..4)
        .map(|_| {
            let (client, _) = bound_client("127.0.0.1");
            client
                .connect(&sockaddr("127.0.0.1", queue_port))
                .expect("the handshake completes on the client's side");
            client
        })
        .collect();
    for client in &clients {
        (&*client).write_all(HELLO).expect("send");
    }

    for (what, port, cause) in [
        ("S1 IPv4", closed_v4, "port_closed"),
        ("S1 IPv6", closed_v6, "port_closed"),
        ("S3", s3_port, "data_after_close"),
        ("S9", s9_port, "timewait"),
    ] {
        tracer.wait_for(what, |e| {
            kind(e) == "reset_sent" && local_port_of(e) == u64::from(port) && e["cause"] == cause
        });
    }
    tracer.wait_for("a drop seen in kfree_skb", |e| {
        kind(e) == "queue_drop"
            && local_port_of(e) == u64::from(queue_port)
            && e["reason"] == "TCP_LISTEN_OVERFLOW"
    });
    drop(clients);
    drop(queue_listener);
    let finished = tracer.stop();
    let frames = tshark(&file.0);
    let ours = |e: &&Value| {
        ports
            .iter()
            .any(|port| [local_port_of(e), remote_port_of(e)].contains(&u64::from(*port)))
    };
    let events: Vec<&Value> = finished.events.iter().filter(ours).collect();

    // Every reset sent in answer to a segment and every drop from kfree_skb (they carry the
    // kernel's reason; a drop a listener sample found carries a counter instead) has its frame,
    // with its four-tuple and cause; nothing else has one. Closing the listener with two
    // connections queued sent a reset on each of its own accord (S8): no segment, no frame.
    let active = |e: &Value| kind(e) == "reset_sent" && e["cause"] == "listener_closed";
    let with_packet: Vec<&Value> = events
        .iter()
        .copied()
        .filter(|e| {
            (kind(e) == "reset_sent" && !active(e))
                || (kind(e) == "queue_drop" && e["reason"] != Value::Null)
        })
        .collect();
    for e in &with_packet {
        assert_eq!(
            e["folded"],
            Value::Null,
            "nothing folds at these rates: {e}"
        );
        assert!(
            e.get("packet").is_none(),
            "the JSON schema is unchanged: {e}"
        );
    }
    let mut expected: Vec<Key> = with_packet.iter().map(|e| event_key(e)).collect();
    let mut found: Vec<Key> = frames
        .iter()
        .filter(|f| ports.iter().any(|port| u64::from(*port) == f.dst.1))
        .map(frame_key)
        .collect();
    expected.sort();
    found.sort();
    assert_eq!(
        found, expected,
        "a frame per reset sent and kfree_skb drop, none for received resets or sampled drops"
    );
    assert!(
        events.iter().any(|e| kind(e) == "reset_received"),
        "received resets were seen, and have no frame"
    );
    assert_eq!(
        events.iter().filter(|e| active(e)).count(),
        2,
        "the listener's close reset its two queued connections: {events:#?}"
    );
    frames.iter().for_each(assert_truthful);

    let sent = |port: u16| -> Vec<&Value> {
        with_packet
            .iter()
            .copied()
            .filter(|e| kind(e) == "reset_sent" && local_port_of(e) == u64::from(port))
            .collect()
    };
    // S1: the SYN, bare, headers whole.
    for (port, addr) in [(closed_v4, "127.0.0.1"), (closed_v6, "::1")] {
        let events = sent(port);
        assert_eq!(events.len(), 1, "{events:?}");
        let frame = one(&frames, events[0]);
        assert_eq!(
            (frame.flags.as_str(), frame.payload_len),
            ("0x0002", 0),
            "{frame:?}"
        );
        assert_eq!(frame.cap_len, frame.len, "{frame:?}");
        assert_eq!(frame.dst, (addr.to_string(), u64::from(port)));
        assert!(frame.comment.contains("nothing listens on"), "{frame:?}");
    }
    // S3: the request itself, from the client's port, the server's closer named.
    let s3 = sent(s3_port);
    assert_eq!(s3.len(), 1, "{s3:?}");
    let frame = one(&frames, s3[0]);
    assert_eq!(frame.flags, "0x0018", "PSH, ACK: {frame:?}");
    assert_eq!(frame.payload_len, REQUEST.len() as u64, "{frame:?}");
    assert_eq!(frame.src.1, u64::from(local_port(&s3_client)));
    assert!(
        frame
            .comment
            .contains(&format!("(pid {})", std::process::id())),
        "the process that closed it: {frame:?}"
    );
    // S9: hping3's SYN.
    let s9 = sent(s9_port);
    assert_eq!(s9.len(), 1, "{s9:?}");
    let frame = one(&frames, s9[0]);
    assert_eq!(
        (frame.flags.as_str(), frame.payload_len),
        ("0x0002", 0),
        "{frame:?}"
    );
    assert_eq!(frame.src.1, u64::from(s9_client_port));
    // Drops: the data segments the full queue dropped (a retransmission dropped again is one
    // more event and one more frame; so is the FIN of a client that gave up).
    let drops: Vec<&Frame> = with_packet
        .iter()
        .filter(|e| kind(e) == "queue_drop")
        .flat_map(|e| frames_of(&frames, e))
        .collect();
    assert!(
        drops.iter().any(|f| f.payload_len == HELLO.len() as u64),
        "{drops:#?}"
    );
    for frame in drops {
        assert_eq!(frame.dst.1, u64::from(queue_port));
        assert!(frame.comment.contains("accept queue"), "{frame:?}");
    }
}

/// The one frame of an event.
fn one<'a>(frames: &'a [Frame], e: &Value) -> &'a Frame {
    let ours = frames_of(frames, e);
    assert_eq!(ours.len(), 1, "one frame for {e}: {frames:#?}");
    ours[0]
}

/// The classic tracepoint programs (what kernels without BTF tracepoints run) read the
/// segment with probe reads: the same packet.
#[test]
fn pcap_from_the_classic_programs_holds_the_refused_syn() {
    let file = ScratchFile::new("pcap-classic");
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&[
        "--pcap",
        file.arg(),
        "--port",
        &port.to_string(),
        "--classic-tracepoints",
    ]);
    let (client, client_port) = bound_client("127.0.0.1");
    client
        .connect(&sockaddr("127.0.0.1", port))
        .expect_err("nothing listens");
    let sent = tracer.wait_for("the reset", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    tracer.stop();
    let frames = tshark(&file.0);
    let frame = one(&frames, &sent);
    assert_eq!(frame.src, ("127.0.0.1".to_string(), u64::from(client_port)));
    assert_eq!(frame.flags, "0x0002");
    assert_eq!(
        frames.len(),
        1,
        "only the reset sent has a packet: {frames:?}"
    );
}

/// The same without tshark, for the 6.1 VM (which has none): there a SYN to a closed port is
/// seen by the kprobe on `tcp_v4_send_reset`, whose skb argument is the SYN. The file is read
/// with pcap-file's reader: the interface block of the namespace, the SYN's addresses and
/// ports in the raw IP bytes, and the comment.
#[test]
fn pcap_holds_the_refused_syn_on_any_kernel() {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption};

    let file = ScratchFile::new("pcap-any");
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&["--pcap", file.arg(), "--port", &port.to_string()]);
    let (client, client_port) = bound_client("127.0.0.1");
    client
        .connect(&sockaddr("127.0.0.1", port))
        .expect_err("nothing listens");
    let sent = tracer.wait_for("the reset", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(port)
    });
    tracer.stop();

    let bytes = std::fs::read(&file.0).expect("the pcapng file");
    let mut reader = PcapNgReader::new(&bytes[..]).expect("a pcapng section header");
    let (mut interfaces, mut packets) = (Vec::new(), Vec::new());
    while let Some(block) = reader.next_block() {
        match block.expect("a valid block") {
            Block::InterfaceDescription(idb) => interfaces.push(idb.into_owned()),
            Block::EnhancedPacket(epb) => packets.push(epb.into_owned()),
            other => panic!("unexpected block {other:?}"),
        }
    }
    assert_eq!(packets.len(), 1, "only the reset sent has a packet");
    let packet = &packets[0];
    let interface = &interfaces[packet.interface_id as usize];
    assert!(
        interface
            .options
            .contains(&InterfaceDescriptionOption::IfName(
                format!("netns:{}", sent["netns"]).into()
            ))
    );
    let ip = &packet.data;
    assert_eq!(
        ip.len(),
        60,
        "IPv4 and TCP headers with options, no payload"
    );
    assert_eq!(packet.original_len, 60);
    assert_eq!(ip[0] >> 4, 4);
    assert_eq!(&ip[12..20], &[127, 0, 0, 1, 127, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([ip[20], ip[21]]), client_port);
    assert_eq!(u16::from_be_bytes([ip[22], ip[23]]), port);
    assert_eq!(ip[33] & 0x12, 0x02, "a SYN");
    let comment = packet
        .options
        .iter()
        .find_map(|option| match option {
            EnhancedPacketOption::Comment(text) => Some(text.to_string()),
            _ => None,
        })
        .expect("a comment");
    assert!(
        comment.starts_with("reset_sent port_closed; no process; nothing listens on"),
        "{comment}"
    );
}

/// Root writes the file: like `--output`, `--pcap` refuses a symbolic link (whoever planted it
/// would choose the file root empties and writes), and creates the file readable by root only
/// (it holds other users' packets).
#[test]
fn pcap_refuses_a_symbolic_link_and_creates_its_file_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    require_root();
    let victim = ScratchFile::new("pcap-victim");
    std::fs::write(&victim.0, "keep me\n").expect("write victim");
    let link = ScratchFile::new("pcap-link");
    std::os::unix::fs::symlink(&victim.0, &link.0).expect("symlink");
    let out = Command::new(BINARY)
        .args(["--duration", "0.5", "--pcap", link.arg()])
        .output()
        .expect("run rst-trace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "rst-trace: refusing to write --pcap to {}: it is a symbolic link; give the path of \
             the file itself\n",
            link.arg()
        )
    );
    assert_eq!(
        std::fs::read_to_string(&victim.0).expect("victim"),
        "keep me\n"
    );

    let file = ScratchFile::new("pcap-mode");
    // A port nobody uses: other tests' resets stay out of the file.
    let port = closed_port("127.0.0.1").to_string();
    let out = Command::new(BINARY)
        .args(["--duration", "0.5", "--port", &port, "--pcap", file.arg()])
        .output()
        .expect("run rst-trace");
    assert!(out.status.success(), "{out:?}");
    let metadata = std::fs::metadata(&file.0).expect("created");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    // A section header even when no packet came: a file tshark reads.
    assert!(tshark(&file.0).is_empty());
}

/// A storm folds in the kernel: the events past `--fold-after` each second are only counted, so
/// they have no packet; each event reported one by one has its frame.
#[test]
fn pcap_has_a_frame_per_single_event_and_none_for_folded_ones() {
    let file = ScratchFile::new("pcap-storm");
    let port = closed_port("127.0.0.1");
    let tracer = Tracer::start(&[
        "--pcap",
        file.arg(),
        "--port",
        &port.to_string(),
        "--fold-after",
        "3",
    ]);
    let connects = 200;
    for _ in 0..connects {
        let (client, _) = bound_client("127.0.0.1");
        client
            .connect(&sockaddr("127.0.0.1", port))
            .expect_err("nothing listens");
    }
    tracer.wait_for("a folded line", |e| {
        kind(e) == "reset_sent" && e["folded"] != Value::Null
    });
    let finished = tracer.stop();
    let sent: Vec<&Value> = finished
        .events
        .iter()
        .filter(|e| kind(e) == "reset_sent" && local_port_of(e) == u64::from(port))
        .collect();
    let single = sent.iter().filter(|e| e["folded"] == Value::Null).count();
    let folded: u64 = sent
        .iter()
        .filter_map(|e| e["folded"]["count"].as_u64())
        .sum();
    assert_eq!(single as u64 + folded, connects, "{sent:#?}");
    assert!(
        folded > 0 && single >= 3,
        "{single} single, {folded} folded"
    );
    let frames = tshark(&file.0);
    assert_eq!(
        frames.len(),
        single,
        "a frame per single event, none for folded ones"
    );
    for e in sent.iter().filter(|e| e["folded"] == Value::Null) {
        one(&frames, e);
    }
}
