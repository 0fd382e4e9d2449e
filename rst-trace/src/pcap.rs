//! `--pcap FILE`: the packets behind the events, for Wireshark and tshark.
//!
//! With `--pcap` the kernel programs copy the first bytes of the packet an event is about (the
//! segment a reset answered, the packet a queue dropped) behind its record;
//! [`CapturedPacket::from_kernel`] keeps the IP and TCP headers and up to [`PAYLOAD_BYTES`] of
//! payload of it. [`PcapFile`] writes each such event as a pcapng enhanced packet block, on an
//! interface block of its network namespace, with a comment that says what rst-trace said about
//! it: kind, cause, process, container and explanation.
//!
//! No packet is invented: a received reset, an active reset (SO_LINGER 0, a timer), a folded
//! event and a drop a listener sample found have no packet to write, and are not in the file.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};
use rst_trace_common::{PACKET_BYTES, Packet};

use crate::{escape, event::Event};

/// Payload bytes kept after the TCP header.
pub const PAYLOAD_BYTES: usize = 64;

const IPPROTO_TCP: u8 = 6;

/// The packet an event is about, from its IP header on: headers and at most [`PAYLOAD_BYTES`]
/// of payload, and the packet's whole length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    pub data: Vec<u8>,
    /// The IP packet's length, from its header.
    pub original_len: u32,
}

impl CapturedPacket {
    /// The packet in what a kernel program copied, trimmed to its IP and TCP headers and
    /// [`PAYLOAD_BYTES`] of payload, and to the bytes that were the packet's (its length, the
    /// skb's linear data). None when the bytes do not start with an IPv4 or IPv6 header.
    pub fn from_kernel(packet: &Packet) -> Option<Self> {
        let linear = (packet.linear_len as usize).min(PACKET_BYTES);
        let bytes = &packet.bytes[..linear];
        let byte = |at: usize| bytes.get(at).copied();
        let word = |at: usize| Some(u16::from_be_bytes([byte(at)?, byte(at + 1)?]));
        let (ip_header, ip_len, protocol) = match byte(0)? >> 4 {
            4 => {
                let ihl = usize::from(byte(0)? & 0x0f) * 4;
                if ihl < 20 {
                    return None;
                }
                (ihl, usize::from(word(2)?), byte(9)?)
            }
            // The fixed header; a segment behind extension headers keeps what was copied.
            6 => (40, 40 + usize::from(word(4)?), byte(6)?),
            _ => return None,
        };
        // A length below the header's own is a big (GSO) packet's: it has no length field.
        let ip_len = if ip_len < ip_header { linear } else { ip_len };
        let tcp_header = match byte(ip_header + 12) {
            Some(offset) if protocol == IPPROTO_TCP => usize::from(offset >> 4) * 4,
            _ => PACKET_BYTES,
        };
        let keep = (ip_header + tcp_header + PAYLOAD_BYTES)
            .min(linear)
            .min(ip_len);
        Some(Self {
            data: bytes[..keep].to_vec(),
            original_len: u32::try_from(ip_len).unwrap_or(u32::MAX),
        })
    }
}

/// The pcapng file of `--pcap`: a section header, then an interface block per network
/// namespace as its first packet comes, and a packet block per event that has a packet.
pub struct PcapFile {
    writer: PcapNgWriter<BufWriter<File>>,
    path: PathBuf,
    /// Network namespace inode (None: unknown) -> interface id.
    interfaces: HashMap<Option<u64>, u32>,
    /// Packets written.
    pub written: u64,
}

impl PcapFile {
    /// Creates (or empties) `path`, readable by root only, and writes the section header.
    /// Refuses a symbolic link, as `--output` does: a user who can plant one where root
    /// writes would choose the file.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|error| match error.raw_os_error() {
                Some(libc::ELOOP) => anyhow::anyhow!(
                    "refusing to write --pcap to {}: it is a symbolic link; give the path of \
                     the file itself",
                    path.display()
                ),
                _ => anyhow::anyhow!("cannot open {} for --pcap: {error}", path.display()),
            })?;
        let writer = PcapNgWriter::new(BufWriter::new(file))
            .map_err(|error| anyhow::anyhow!("cannot write to {}: {error}", path.display()))?;
        Ok(Self {
            writer,
            path: path.to_path_buf(),
            interfaces: HashMap::new(),
            written: 0,
        })
    }

    /// Writes the event's packet, if it has one.
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        let Some(packet) = &event.packet else {
            return Ok(());
        };
        let interface_id = self.interface(event.netns)?;
        let since_epoch = u64::try_from(event.time.as_nanosecond()).unwrap_or(0);
        let block = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(since_epoch),
            original_len: packet.original_len,
            data: Cow::Borrowed(&packet.data),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment(event)))],
        };
        self.writer
            .write_pcapng_block(block)
            .map_err(|error| self.error(error))?;
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.get_mut().flush()
    }

    /// The interface id of a network namespace, its block written the first time.
    fn interface(&mut self, netns: Option<u64>) -> io::Result<u32> {
        if let Some(id) = self.interfaces.get(&netns) {
            return Ok(*id);
        }
        let id = self.interfaces.len() as u32;
        let (name, description) = match netns {
            Some(inode) => (
                format!("netns:{inode}"),
                format!(
                    "network namespace {inode} (as readlink /proc/PID/ns/net says net:[{inode}])"
                ),
            ),
            None => (
                "netns:unknown".to_string(),
                "packets whose network namespace was not read".to_string(),
            ),
        };
        let block = InterfaceDescriptionBlock {
            // IP packets without a link-layer header: what the kernel programs copy.
            linktype: DataLink::RAW,
            snaplen: PACKET_BYTES as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name)),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(description)),
                // pcap-file writes timestamps in nanoseconds; readers assume microseconds
                // unless the interface says otherwise.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.writer
            .write_pcapng_block(block)
            .map_err(|error| self.error(error))?;
        self.interfaces.insert(netns, id);
        Ok(id)
    }

    fn error(&self, error: pcap_file::PcapError) -> io::Error {
        io::Error::other(format!("writing --pcap {}: {error}", self.path.display()))
    }
}

/// What rst-trace said about the event, on one line: `reset_sent port_closed; process curl
/// (pid 4242); container docker shop (0123456789ab...); nothing listens on 127.0.0.1:9 ...`. Escaped as
/// the text output is: process and container names are other users' choice.
pub fn comment(event: &Event) -> String {
    let kind = match event.kind {
        crate::event::EventKind::ResetSent => "reset_sent",
        crate::event::EventKind::ResetReceived => "reset_received",
        crate::event::EventKind::QueueDrop => "queue_drop",
    };
    let cause = event.cause.map_or("unknown", |cause| cause.id());
    let mut text = format!("{kind} {cause}");
    match &event.process {
        Some(process) => {
            text.push_str(&format!("; process {} (pid {})", process.comm, process.pid))
        }
        None => text.push_str("; no process"),
    }
    if let Some(container) = &event.container {
        // The name the text output shows, and the id, which is what the runtime's tools take.
        let label = container.label();
        if label == container.short_id() {
            text.push_str(&format!(
                "; container {} {}",
                container.runtime, container.id
            ));
        } else {
            text.push_str(&format!(
                "; container {} {label} ({})",
                container.runtime, container.id
            ));
        }
    }
    if let Some(explanation) = &event.explanation {
        text.push_str("; ");
        text.push_str(explanation);
    }
    escape::for_terminal(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cause::Cause,
        container::Container,
        event::{EventKind, Process, ProcessSource},
    };

    /// An IPv4 SYN from 127.0.0.1:40000 to 127.0.0.1:9 with a 20-byte TCP header and
    /// `payload` bytes, as the kernel copies it: `linear` bytes of it are the packet's.
    fn ipv4_segment(payload: usize, linear: usize) -> Packet {
        let mut bytes = [0xeeu8; PACKET_BYTES];
        let total = (20 + 20 + payload) as u16;
        bytes[..20].copy_from_slice(&[
            0x45,
            0,
            0,
            0,
            0,
            0,
            0x40,
            0,
            64,
            IPPROTO_TCP,
            0,
            0,
            127,
            0,
            0,
            1,
            127,
            0,
            0,
            1,
        ]);
        bytes[2..4].copy_from_slice(&total.to_be_bytes());
        bytes[20..24].copy_from_slice(&[0x9c, 0x40, 0, 9]);
        bytes[32] = 5 << 4;
        bytes[33] = 0x02;
        Packet {
            linear_len: linear as u32,
            _pad: 0,
            bytes,
        }
    }

    #[test]
    fn keeps_headers_and_at_most_64_payload_bytes() {
        // A bare SYN: 40 bytes; what follows in the buffer is not the packet's.
        let syn = CapturedPacket::from_kernel(&ipv4_segment(0, 120)).unwrap();
        assert_eq!((syn.data.len(), syn.original_len), (40, 40));
        // 100 bytes of payload: the headers and 64 of them.
        let data = CapturedPacket::from_kernel(&ipv4_segment(100, 184)).unwrap();
        assert_eq!((data.data.len(), data.original_len), (40 + 64, 140));
        // Payload in page fragments: only the linear part is the packet's bytes.
        let paged = CapturedPacket::from_kernel(&ipv4_segment(1000, 52)).unwrap();
        assert_eq!((paged.data.len(), paged.original_len), (52, 1040));
    }

    #[test]
    fn ipv6_and_garbage() {
        let mut bytes = [0u8; PACKET_BYTES];
        bytes[0] = 0x60;
        bytes[4..6].copy_from_slice(&20u16.to_be_bytes());
        bytes[6] = IPPROTO_TCP;
        bytes[40 + 12] = 5 << 4;
        let packet = Packet {
            linear_len: 184,
            _pad: 0,
            bytes,
        };
        let captured = CapturedPacket::from_kernel(&packet).unwrap();
        assert_eq!((captured.data.len(), captured.original_len), (60, 60));
        // Not an IP header, or nothing linear: no packet.
        let garbage = Packet {
            linear_len: 184,
            _pad: 0,
            bytes: [0; PACKET_BYTES],
        };
        assert_eq!(CapturedPacket::from_kernel(&garbage), None);
        assert_eq!(CapturedPacket::from_kernel(&ipv4_segment(0, 0)), None);
    }

    #[test]
    fn comment_says_kind_cause_process_and_escapes_names() {
        let event = Event {
            cause: Some(Cause::DataAfterClose),
            process: Some(Process {
                pid: 42,
                tid: 42,
                comm: "evil\x1b[2Jname".to_string(),
                source: ProcessSource::Owner,
                ns_pid: None,
            }),
            explanation: Some("the server closed it 2.0 s before".to_string()),
            ..Event::for_test(EventKind::ResetSent)
        };
        assert_eq!(
            comment(&event),
            "reset_sent data_after_close; process evil\\x1b[2Jname (pid 42); the server closed \
             it 2.0 s before"
        );
    }

    #[test]
    fn comment_names_the_container_and_keeps_its_id() {
        let id = "3d8e21122ae42bd58abc96c80d19b8ff7cbd4b6151ba60eb698e54ff50bc88d9";
        let mut named = Container::new(id, "docker");
        named.name = Some("sh\x07op".to_string());
        let event = Event {
            cause: Some(Cause::AcceptQueueFull),
            container: Some(named),
            ..Event::for_test(EventKind::QueueDrop)
        };
        assert_eq!(
            comment(&event),
            format!("queue_drop accept_queue_full; no process; container docker sh\\x07op ({id})")
        );
        let event = Event {
            cause: Some(Cause::AcceptQueueFull),
            container: Some(Container::new(id, "docker")),
            ..Event::for_test(EventKind::QueueDrop)
        };
        assert_eq!(
            comment(&event),
            format!("queue_drop accept_queue_full; no process; container docker {id}")
        );
    }

    #[test]
    fn writes_a_section_an_interface_and_a_packet_block() {
        let dir = std::env::temp_dir().join(format!("rst-trace-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("unit.pcapng");
        let mut file = PcapFile::create(&path).unwrap();
        let event = Event {
            netns: Some(4026531840),
            packet: CapturedPacket::from_kernel(&ipv4_segment(0, 40)),
            ..Event::for_test(EventKind::ResetSent)
        };
        file.write(&event).unwrap();
        file.write(&Event::for_test(EventKind::ResetReceived))
            .unwrap();
        file.flush().unwrap();
        assert_eq!(file.written, 1);
        let bytes = std::fs::read(&path).unwrap();
        // Section header, interface block, packet block.
        let block_types: Vec<u32> = {
            let mut types = Vec::new();
            let mut at = 0;
            while at + 8 <= bytes.len() {
                let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
                types.push(word(at));
                at += word(at + 4) as usize;
            }
            types
        };
        assert_eq!(block_types, vec![0x0a0d0d0a, 1, 6]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
