//! Raw ring buffer records -> [`Decoded`]: what the kernel said, nothing more.
//!
//! Reads the common header, dispatches on its kind, reads the tracepoint fields with the layout of
//! the running kernel and turns reasons and states into the running kernel's variants
//! ([`crate::kernel_enums`]). Attribution (which process owns the socket, which container, what
//! the cause is) is the next stage, and builds the printed event.

use std::mem::size_of;

use anyhow::{Context as _, bail};
use std::time::Duration;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rst_trace_common::{
    Abort, ArgsRecord, COMM_LEN, Endpoints, NO_SK_STATE, Owner, RAW_LEN, RawTracepoint, RecordKind,
    RecordWithPacket, facts,
};

use crate::{
    decoded::{Decoded, KernelFacts, PeerAbort, Segment, Task},
    event::{ClosedBy, EventKind, Queue},
    kernel_enums::Reason,
    layout::{self, RecordFields, ResetLayout},
    names::KernelNames,
    pcap::CapturedPacket,
    tracefs::EventFormat,
};

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> anyhow::Result<Self> {
        let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
        let realtime = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
        let ns = |t: nix::sys::time::TimeSpec| {
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        Ok(Self {
            offset_ns: ns(realtime) - ns(monotonic),
        })
    }

    /// A clock whose wall time equals the monotonic time plus `offset_ns` (for tests).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn wall_time(&self, ktime_ns: u64) -> jiff::Timestamp {
        let ns = self.offset_ns + i128::from(ktime_ns);
        jiff::Timestamp::from_nanosecond(ns).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

pub struct Decoder {
    pub send_reset: Option<ResetLayout>,
    pub receive_reset: Option<ResetLayout>,
    /// Offset of `reason` in skb:kfree_skb's record.
    pub drop_reason: Option<usize>,
    pub names: KernelNames,
    pub clock: WallClock,
}

impl Decoder {
    /// A decoder for a kernel known only by its tracefs format files, without its BTF (names
    /// come from the formats' `print fmt` tables alone): the fuzz target builds one from each
    /// captured kernel's fixtures.
    pub fn from_formats(
        send_reset: Option<&EventFormat>,
        receive_reset: Option<&EventFormat>,
        set_state: Option<&EventFormat>,
        kfree_skb: Option<&EventFormat>,
        clock: WallClock,
    ) -> Self {
        let reset_layout =
            |format: Option<&EventFormat>| format.and_then(|f| ResetLayout::from_format(f).ok());
        let mut names = KernelNames::from_kernel(send_reset, set_state, None);
        names.add_drop_reasons(kfree_skb, None);
        Self {
            send_reset: reset_layout(send_reset),
            receive_reset: reset_layout(receive_reset),
            drop_reason: kfree_skb.and_then(layout::drop_reason_offset),
            names,
            clock,
        }
    }

    pub fn decode(&self, bytes: &[u8]) -> anyhow::Result<Decoded> {
        // With --pcap, a record about a packet is followed by it (a whole RecordWithPacket).
        let packet = if bytes.len() >= size_of::<RecordWithPacket>() {
            // SAFETY: plain old data, length checked, read unaligned as below.
            let with = unsafe { bytes.as_ptr().cast::<RecordWithPacket>().read_unaligned() };
            CapturedPacket::from_kernel(&with.packet)
        } else {
            None
        };
        // BTF tracepoint programs send records without the raw part (ArgsRecord); they are read
        // as a whole record with that part zeroed.
        let record = if bytes.len() >= size_of::<RawTracepoint>() {
            // SAFETY: RawTracepoint is plain old data and the length was checked; the ring
            // buffer gives no alignment guarantee beyond 8, so read unaligned.
            unsafe { bytes.as_ptr().cast::<RawTracepoint>().read_unaligned() }
        } else if bytes.len() >= size_of::<ArgsRecord>() {
            // SAFETY: as above, for the prefix both records share.
            let args = unsafe { bytes.as_ptr().cast::<ArgsRecord>().read_unaligned() };
            if args.facts.flags & facts::FROM_ARGS == 0 {
                bail!("short ring buffer record: {} bytes", bytes.len());
            }
            RawTracepoint {
                header: args.header,
                facts: args.facts,
                raw: [0; RAW_LEN],
            }
        } else {
            bail!("short ring buffer record: {} bytes", bytes.len());
        };
        let header = record.header;
        let facts = record.facts;
        let reset = |kind: EventKind, layout: Option<&ResetLayout>| {
            if facts.flags & facts::FROM_ARGS != 0 {
                // From a BTF tracepoint: no raw record; the program read it all from the socket
                // and the segment.
                let (local, remote) = segment_ends(&facts.endpoints);
                let fields = RecordFields {
                    skaddr: facts.sk,
                    state: None,
                    reason: (facts.flags & facts::REASON != 0).then_some(facts.reason),
                    sock_cookie: None,
                    local,
                    remote,
                };
                return anyhow::Ok((kind, fields));
            }
            let layout =
                layout.with_context(|| format!("{kind:?} record from a detached source"))?;
            anyhow::Ok((kind, layout.decode(&record.raw)))
        };
        let (kind, fields) = match RecordKind::from_u8(header.kind) {
            Some(RecordKind::ResetSent) => {
                let (kind, mut fields) = reset(EventKind::ResetSent, self.send_reset.as_ref())?;
                // A listener resetting a stray segment has no peer: the segment's source is.
                if fields
                    .remote
                    .is_none_or(|addr| addr.ip().is_unspecified() && addr.port() == 0)
                    && let (_, Some(remote)) = segment_ends(&facts.endpoints)
                {
                    fields.remote = Some(remote);
                }
                (kind, fields)
            }
            Some(RecordKind::ResetReceived) => {
                reset(EventKind::ResetReceived, self.receive_reset.as_ref())?
            }
            Some(RecordKind::ResetSentNoSocket) => {
                // From a probe: the segment's ends are all there is; no reason before 6.10.
                let (local, remote) = segment_ends(&facts.endpoints);
                let fields = RecordFields {
                    skaddr: 0,
                    state: None,
                    reason: None,
                    sock_cookie: None,
                    local,
                    remote,
                };
                (EventKind::ResetSent, fields)
            }
            Some(RecordKind::QueueDrop) => {
                let offset = self
                    .drop_reason
                    .context("queue drop record from a detached source")?;
                let mut reason = [0u8; 4];
                reason.copy_from_slice(&record.raw[offset..offset + 4]);
                let (local, remote) = segment_ends(&facts.endpoints);
                let fields = RecordFields {
                    skaddr: 0,
                    state: None,
                    reason: Some(u32::from_ne_bytes(reason)),
                    sock_cookie: None,
                    local,
                    remote,
                };
                (EventKind::QueueDrop, fields)
            }
            None => bail!("unknown record kind {}", header.kind),
        };

        // The record's own state (tcp_send_reset) is 0 when no socket matched; otherwise fall back
        // to what the program read from the socket.
        let state = match fields.state {
            Some(0) => None,
            Some(state) => Some(u64::from(state)),
            None => (facts.sk_state != NO_SK_STATE).then_some(u64::from(facts.sk_state)),
        };
        let sock_cookie = fields
            .sock_cookie
            .or(Some(facts.sk_cookie))
            .filter(|cookie| *cookie != 0);
        let tgid = (header.pid_tgid >> 32) as u32;
        // rst-trace itself is never the process behind a reset it reports: when the running
        // task, or the one that closed the connection, is rst-trace, the kernel released the
        // socket in our context (the listener iterator held the file at the moment its process
        // closed it) or a softirq interrupted us. Its own sockets (the metrics server's) carry
        // their owner, which is kept.
        let own_pid = own_pid();
        let context = (tgid != 0 && tgid != own_pid).then(|| Task {
            pid: tgid,
            tid: header.pid_tgid as u32,
            comm: comm(&header.comm),
            cgroup_id: header.cgroup_id,
            // The header has no room for it; the owner's, when the owner is running.
            ns_pid: (facts.owner.tgid == tgid && facts.owner.ns_tgid != 0)
                .then_some(facts.owner.ns_tgid),
        });
        let task = Task::from_owner;
        let not_us = |owner: &Owner| {
            if owner.tgid == own_pid {
                None
            } else {
                task(owner)
            }
        };
        let closed_by = not_us(&facts.closed.closer).map(|closer| ClosedBy {
            ago: Duration::from_nanos(header.ktime_ns.saturating_sub(facts.closed.closed_ns)),
            closer,
        });
        let segment = (facts.flags & facts::SEGMENT != 0).then_some(Segment(facts.tcp_flags));
        let tw_substate =
            (facts.tw_substate != 0).then(|| self.names.tcp_state(u64::from(facts.tw_substate)));
        let reason = fields.reason.map(|value| match kind {
            EventKind::QueueDrop => Reason::Drop(self.names.drop_reason(u64::from(value))),
            _ => Reason::Reset(self.names.reset_reason(u64::from(value))),
        });

        Ok(Decoded {
            kind,
            time: self.clock.wall_time(header.ktime_ns),
            ktime_ns: header.ktime_ns,
            reason,
            state: state.map(|s| self.names.tcp_state(s)),
            local: fields.local.map(Into::into),
            remote: fields.remote.map(Into::into),
            netns: (facts.netns != 0).then_some(u64::from(facts.netns)),
            sock_cookie,
            queue: (kind == EventKind::QueueDrop && facts.queue_max != 0).then_some(Queue {
                len: facts.queue_len,
                max: facts.queue_max,
            }),
            drops: (kind == EventKind::QueueDrop).then_some(1),
            counter: None,
            sampled_cause: None,
            stack_id: u32::try_from(facts.stack_id).ok(),
            kernel: KernelFacts {
                context,
                owner: task(&facts.owner),
                closed_by,
                segment,
                tw_substate,
                linger_zero: facts.flags & facts::LINGER_ZERO != 0,
                full_socket: facts.flags & facts::FULL_SOCKET != 0,
                has_socket_file: facts.flags & facts::HAS_SOCKET_FILE != 0,
                all_sent_acked: facts.flags & facts::ALL_SENT_ACKED != 0,
                bytes_acked: facts.bytes_acked,
                bytes_received: facts.bytes_received,
                socket_ino: (facts.socket_ino != 0).then_some(facts.socket_ino),
                packet,
                peer_abort: peer_abort(&facts.peer_abort, header.ktime_ns).and_then(
                    |(abort, flags)| {
                        Some(PeerAbort {
                            closer: not_us(&abort.closer)?,
                            linger_zero: flags & facts::LINGER_ZERO != 0,
                            has_socket_file: flags & facts::HAS_SOCKET_FILE != 0,
                        })
                    },
                ),
            },
        })
    }
}

/// How long before a received reset the other end's abort may have been recorded to be its
/// cause: the abort's state change fires just before its reset is sent.
const PEER_ABORT_WINDOW: Duration = Duration::from_secs(1);

/// The other end's abort, when one was recorded within [`PEER_ABORT_WINDOW`] before `ktime_ns`.
fn peer_abort(abort: &Abort, ktime_ns: u64) -> Option<(&Abort, u8)> {
    (abort.ns != 0
        && abort.ns <= ktime_ns
        && ktime_ns - abort.ns <= PEER_ABORT_WINDOW.as_nanos() as u64)
        .then_some((abort, abort.flags))
}

/// A record's two ends as the program read them from the socket and the segment: every end of a
/// BTF tracepoint's reset, of a reset no socket matched and of a queue drop.
fn segment_ends(ends: &Endpoints) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let ip = |bytes: &[u8; 16]| match i32::from(ends.family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        libc::AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    };
    let local = ip(&ends.local_addr).map(|addr| SocketAddr::new(addr, ends.local_port));
    let remote = ip(&ends.remote_addr)
        .filter(|_| ends.remote_port != 0)
        .map(|addr| SocketAddr::new(addr, ends.remote_port));
    (local, remote)
}

/// This process's id, read once.
fn own_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

pub(crate) fn comm(bytes: &[u8; COMM_LEN]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(COMM_LEN);
    // Not from_utf8_lossy: two names that differ only in bytes that are not UTF-8 would both
    // become U+FFFD and read as one process.
    crate::escape::comm_from_bytes(&bytes[..end])
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rst_trace_common::{EventHeader, RAW_LEN, SocketFacts};

    use super::*;
    use crate::{
        event::{Endpoint, Family},
        kernel_enums::TcpState,
        layout::tests::RawBuilder,
        tracefs::tests::fixture,
    };

    fn decoder(kernel: &str) -> Decoder {
        let send = fixture(kernel, "tcp__tcp_send_reset");
        let receive = fixture(kernel, "tcp__tcp_receive_reset");
        let set_state = fixture(kernel, "sock__inet_sock_set_state");
        Decoder {
            send_reset: Some(ResetLayout::from_format(&send).unwrap()),
            receive_reset: Some(ResetLayout::from_format(&receive).unwrap()),
            drop_reason: None,
            names: KernelNames::from_kernel(Some(&send), Some(&set_state), None),
            clock: WallClock::with_offset(1_763_776_800_000_000_000),
        }
    }

    #[test]
    fn from_formats_reads_layouts_and_the_drop_reason_of_each_captured_kernel() {
        for (kernel, sockaddr, drop_reason) in [
            ("6.18", true, Some(36)),
            ("6.1", false, Some(28)),
            ("5.10", false, None),
        ] {
            let format = |event| fixture(kernel, event);
            let decoder = Decoder::from_formats(
                Some(&format("tcp__tcp_send_reset")),
                Some(&format("tcp__tcp_receive_reset")),
                Some(&format("sock__inet_sock_set_state")),
                Some(&format("skb__kfree_skb")),
                WallClock::with_offset(0),
            );
            let send = decoder.send_reset.expect("send_reset layout");
            assert_eq!(
                matches!(send.addresses, crate::layout::Addresses::Sockaddr { .. }),
                sockaddr,
                "{kernel}"
            );
            assert_eq!(
                send.reason.is_some(),
                sockaddr,
                "{kernel}: reason from 6.10"
            );
            assert!(decoder.receive_reset.is_some(), "{kernel}");
            assert_eq!(decoder.drop_reason, drop_reason, "{kernel}");
            assert_eq!(decoder.names.tcp_state(1).name(), "ESTABLISHED", "{kernel}");
        }
    }

    pub(super) fn record(
        kind: RecordKind,
        pid_tgid: u64,
        comm: &str,
        raw: [u8; RAW_LEN],
    ) -> RawTracepoint {
        let mut comm_bytes = [0u8; COMM_LEN];
        comm_bytes[..comm.len()].copy_from_slice(comm.as_bytes());
        RawTracepoint {
            header: EventHeader {
                kind: kind as u8,
                _pad: [0; 3],
                cpu: 1,
                ktime_ns: 5_000_000_123,
                pid_tgid,
                cgroup_id: 1,
                comm: comm_bytes,
            },
            facts: SocketFacts {
                sk_state: NO_SK_STATE,
                ..SocketFacts::default()
            },
            raw,
        }
    }

    pub(super) fn bytes(record: &RawTracepoint) -> Vec<u8> {
        // SAFETY: RawTracepoint is repr(C) plain old data with no padding.
        unsafe {
            std::slice::from_raw_parts(
                (record as *const RawTracepoint).cast::<u8>(),
                size_of::<RawTracepoint>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn closed_port_reset_on_6_18() {
        let mut raw = RawBuilder::new();
        raw.put(28, &1u32.to_ne_bytes())
            .sockaddr_in(32, [127, 0, 0, 1], 9)
            .sockaddr_in(60, [127, 0, 0, 1], 35340);
        let rec = record(RecordKind::ResetSent, (4242 << 32) | 4243, "curl", raw.0);
        let event = decoder("6.18").decode(&bytes(&rec)).unwrap();
        assert_eq!(event.kind, EventKind::ResetSent);
        assert_eq!(event.reason.as_ref().map(Reason::name), Some("NO_SOCKET"));
        assert_eq!(event.state, None);
        assert_eq!(event.family(), Some(Family::Ipv4));
        assert_eq!(
            event.local,
            Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port: 9
            })
        );
        assert_eq!(event.remote.unwrap().port, 35340);
        // No process: a Decoded has none, attribution decides it.
        let context = event.kernel.context.unwrap();
        assert_eq!(
            (context.pid, context.tid, context.comm.as_str()),
            (4242, 4243, "curl")
        );
        assert_eq!(event.kernel.owner, None);
        assert_eq!(event.sock_cookie, None);
        assert_eq!(event.time.as_nanosecond(), 1_763_776_805_000_000_123);
    }

    #[test]
    fn received_reset_takes_state_from_the_socket_and_the_cookie_from_the_record() {
        for kernel in ["6.18", "6.1"] {
            let mut raw = RawBuilder::new();
            raw.put(8, &0xffff_8880_0000_2000u64.to_ne_bytes())
                .put(16, &41000u16.to_ne_bytes())
                .put(18, &80u16.to_ne_bytes())
                .put(20, &(libc::AF_INET6 as u16).to_ne_bytes())
                .put(30, &Ipv6Addr::LOCALHOST.octets())
                .put(46, &Ipv6Addr::LOCALHOST.octets())
                .put(64, &99u64.to_ne_bytes());
            let mut rec = record(RecordKind::ResetReceived, 0, "swapper/0", raw.0);
            rec.facts.sk_state = 2;
            let event = decoder(kernel).decode(&bytes(&rec)).unwrap();
            assert_eq!(event.kind, EventKind::ResetReceived);
            assert_eq!(event.reason, None);
            assert_eq!(event.state.as_ref().map(TcpState::name), Some("SYN_SENT"));
            assert_eq!(event.family(), Some(Family::Ipv6));
            assert_eq!(event.local.unwrap().to_string(), "[::1]:41000");
            assert_eq!(event.sock_cookie, Some(99));
            // pid 0 is the idle task: no process to name.
            assert_eq!(event.kernel.context, None);
        }
    }

    #[test]
    fn received_reset_on_5_10_has_its_family_from_the_ipv6_fields() {
        let decoder = decoder("5.10");
        // An IPv4 socket: 5.10 fills the IPv6 fields v4-mapped; the record has no family.
        let mut raw = RawBuilder::new();
        raw.put(8, &0xffff_8880_0000_2000u64.to_ne_bytes())
            .put(16, &41000u16.to_ne_bytes())
            .put(18, &80u16.to_ne_bytes())
            .put(20, &[127, 0, 0, 1])
            .put(24, &[127, 0, 0, 1])
            .put(28, &Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets())
            .put(44, &Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets())
            .put(64, &7u64.to_ne_bytes());
        let mut rec = record(RecordKind::ResetReceived, (9 << 32) | 9, "curl", raw.0);
        rec.facts.sk_state = 2;
        let event = decoder.decode(&bytes(&rec)).unwrap();
        assert_eq!(event.state.as_ref().map(TcpState::name), Some("SYN_SENT"));
        assert_eq!(event.family(), Some(Family::Ipv4));
        assert_eq!(event.local.unwrap().to_string(), "127.0.0.1:41000");
        assert_eq!(event.remote.unwrap().to_string(), "127.0.0.1:80");
        assert_eq!(event.sock_cookie, Some(7));
        // An IPv6 socket.
        let mut raw = RawBuilder::new();
        raw.put(8, &0xffff_8880_0000_2100u64.to_ne_bytes())
            .put(16, &41001u16.to_ne_bytes())
            .put(18, &443u16.to_ne_bytes())
            .put(28, &Ipv6Addr::LOCALHOST.octets())
            .put(44, &Ipv6Addr::LOCALHOST.octets());
        let rec = record(RecordKind::ResetReceived, 0, "swapper/1", raw.0);
        let event = decoder.decode(&bytes(&rec)).unwrap();
        assert_eq!(event.family(), Some(Family::Ipv6));
        assert_eq!(event.remote.unwrap().to_string(), "[::1]:443");
    }

    #[test]
    fn old_kernel_send_reset_has_state_and_no_reason() {
        let mut raw = RawBuilder::new();
        raw.put(16, &0xffff_8880_0000_1000u64.to_ne_bytes())
            .put(24, &7i32.to_ne_bytes())
            .put(28, &5432u16.to_ne_bytes())
            .put(30, &50000u16.to_ne_bytes())
            .put(32, &(libc::AF_INET as u16).to_ne_bytes())
            .put(34, &[127, 0, 0, 1])
            .put(38, &[127, 0, 0, 1]);
        let mut rec = record(RecordKind::ResetSent, (7 << 32) | 7, "postgres", raw.0);
        rec.facts.sk_cookie = 12345;
        let event = decoder("6.1").decode(&bytes(&rec)).unwrap();
        assert_eq!(event.reason, None);
        assert_eq!(event.state.as_ref().map(TcpState::name), Some("CLOSE"));
        assert_eq!(event.sock_cookie, Some(12345));
        assert!(event.has_port(5432) && event.has_port(50000) && !event.has_port(1));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let decoder = decoder("6.18");
        assert!(decoder.decode(&[0u8; 10]).is_err());
        let mut rec = record(RecordKind::ResetSent, 0, "", [0; RAW_LEN]);
        rec.header.kind = 77;
        assert!(decoder.decode(&bytes(&rec)).is_err());
    }
}

#[cfg(test)]
mod facts_tests {
    use rst_trace_common::{ClosedConnection, Owner, RAW_LEN, SocketFacts};

    use super::tests::{bytes, record};
    use super::*;
    use crate::{decoded::Segment, kernel_enums::TcpState, tracefs::tests::fixture};

    fn comm16(text: &str) -> [u8; COMM_LEN] {
        let mut comm = [0u8; COMM_LEN];
        comm[..text.len()].copy_from_slice(text.as_bytes());
        comm
    }

    /// A decoder for 6.18's tcp_send_reset and inet_sock_set_state formats (the fixtures).
    fn decoder_6_18() -> Decoder {
        let send = fixture("6.18", "tcp__tcp_send_reset");
        let set_state = fixture("6.18", "sock__inet_sock_set_state");
        Decoder {
            send_reset: Some(ResetLayout::from_format(&send).unwrap()),
            receive_reset: None,
            drop_reason: None,
            names: KernelNames::from_kernel(Some(&send), Some(&set_state), None),
            clock: WallClock::with_offset(0),
        }
    }

    /// A record from a BTF tracepoint program: no raw record, the reason, state, cookie and both
    /// ends in the facts.
    #[test]
    fn btf_records_take_every_field_from_the_facts() {
        // The classic layouts are there, and must not be used for such a record.
        let decoder = decoder_6_18();
        let reason = decoder
            .names
            .reset_reasons
            .value_of("NOT_SPECIFIED")
            .unwrap() as u32;
        let mut local_addr = [0u8; 16];
        local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut remote_addr = [0u8; 16];
        remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let record = |kind: RecordKind, flags: u8| RawTracepoint {
            facts: SocketFacts {
                sk_state: 1,
                flags: facts::FROM_ARGS | facts::FULL_SOCKET | flags,
                sk_cookie: 77,
                sk: 0xffff_8880_0000_3000,
                reason,
                endpoints: Endpoints {
                    family: libc::AF_INET as u16,
                    local_port: 8080,
                    remote_port: 40000,
                    _pad: 0,
                    local_addr,
                    remote_addr,
                },
                ..SocketFacts::default()
            },
            // Garbage where a classic record would be: never read.
            ..record(kind, 0, "", [0xaa; RAW_LEN])
        };
        let decode = |record: &RawTracepoint| {
            let bytes = bytes(record);
            // The programs send such records without the raw part; both forms decode alike.
            let short = decoder.decode(&bytes[..size_of::<ArgsRecord>()]).unwrap();
            let whole = decoder.decode(&bytes).unwrap();
            assert_eq!(format!("{short:?}"), format!("{whole:?}"));
            short
        };

        let sent = decode(&record(RecordKind::ResetSent, facts::REASON));
        assert_eq!(sent.kind, EventKind::ResetSent);
        assert_eq!(
            sent.reason.as_ref().map(Reason::name),
            Some("NOT_SPECIFIED")
        );
        assert_eq!(sent.state.as_ref().map(TcpState::name), Some("ESTABLISHED"));
        assert_eq!(sent.sock_cookie, Some(77));
        assert_eq!(
            sent.local.map(|e| e.to_string()).as_deref(),
            Some("10.0.0.1:8080")
        );
        assert_eq!(
            sent.remote.map(|e| e.to_string()).as_deref(),
            Some("10.0.0.2:40000")
        );

        // tcp_receive_reset has no reason; without the REASON bit none is made up.
        let received = decode(&record(RecordKind::ResetReceived, 0));
        assert_eq!(received.kind, EventKind::ResetReceived);
        assert_eq!(received.reason, None);
        assert_eq!(received.local.map(|e| e.port), Some(8080));

        // A short record is only valid from a BTF program.
        let mut classic = record(RecordKind::ResetSent, 0);
        classic.facts.flags &= !facts::FROM_ARGS;
        assert!(
            decoder
                .decode(&bytes(&classic)[..size_of::<ArgsRecord>()])
                .is_err()
        );
    }

    #[test]
    fn socket_facts_become_kernel_facts() {
        let decoder = decoder_6_18();
        let owner = Owner {
            tgid: 10,
            pid: 11,
            cgroup_id: 5,
            since_ns: 1,
            comm: comm16("nginx"),
            ns_tgid: 3,
            _pad: 0,
        };
        let closer = Owner {
            tgid: 20,
            pid: 20,
            cgroup_id: 6,
            since_ns: 2,
            comm: comm16("app"),
            ns_tgid: 0,
            _pad: 0,
        };
        let mut sent = RawTracepoint {
            facts: SocketFacts {
                netns: 4026531840,
                sk_state: 6,
                tw_substate: 5,
                flags: facts::SEGMENT | facts::LINGER_ZERO,
                tcp_flags: 0x18,
                sk_cookie: 0,
                bytes_acked: 0,
                bytes_received: 0,
                socket_ino: 0,
                owner,
                closed: ClosedConnection {
                    closer,
                    closed_ns: 1_000_000_000,
                },
                ..SocketFacts::default()
            },
            ..record(RecordKind::ResetSent, 0, "", [0; RAW_LEN])
        };
        sent.header.ktime_ns = 3_000_000_000;
        let event = decoder.decode(&bytes(&sent)).unwrap();
        assert_eq!(event.netns, Some(4026531840));
        let facts = &event.kernel;
        assert_eq!(facts.context, None);
        assert_eq!(
            facts
                .owner
                .as_ref()
                .map(|o| (o.pid, o.tid, o.comm.as_str(), o.ns_pid)),
            Some((10, 11, "nginx", Some(3)))
        );
        let closed = facts.closed_by.as_ref().unwrap();
        assert_eq!(
            (
                closed.closer.pid,
                closed.closer.comm.as_str(),
                closed.closer.ns_pid
            ),
            (20, "app", None)
        );
        assert_eq!(closed.ago, Duration::from_secs(2));
        assert_eq!(facts.segment, Some(Segment(0x18)));
        assert_eq!(facts.tw_substate, Some(TcpState::FinWait2));
        assert!(facts.linger_zero && !facts.full_socket && !facts.has_socket_file);

        // Fired in the owner's own context: the running task takes the owner's ns pid.
        sent.header.pid_tgid = (10 << 32) | 11;
        let event = decoder.decode(&bytes(&sent)).unwrap();
        let context = event.kernel.context.as_ref().unwrap();
        assert_eq!((context.pid, context.ns_pid), (10, Some(3)));
        sent.header.pid_tgid = (12 << 32) | 12;
        let event = decoder.decode(&bytes(&sent)).unwrap();
        let context = event.kernel.context.as_ref().unwrap();
        assert_eq!((context.pid, context.ns_pid), (12, None));
    }

    /// A reset whose socket was released in rst-trace's own context (its listener pass held the
    /// file when the process closed it) names neither rst-trace as the running task nor as the
    /// closer; the socket's recorded owner stays.
    #[test]
    fn rst_trace_itself_is_never_the_context_or_the_closer() {
        let decoder = decoder_6_18();
        let us = std::process::id();
        let ours = Owner {
            tgid: us,
            pid: us,
            cgroup_id: 1,
            since_ns: 1,
            comm: comm16("rst-trace"),
            ns_tgid: 0,
            _pad: 0,
        };
        let app = Owner {
            comm: comm16("app"),
            tgid: 30,
            pid: 31,
            ..ours
        };
        let sent = RawTracepoint {
            facts: SocketFacts {
                sk_state: 7,
                owner: app,
                closed: ClosedConnection {
                    closer: ours,
                    closed_ns: 1,
                },
                ..SocketFacts::default()
            },
            ..record(
                RecordKind::ResetSent,
                (u64::from(us) << 32) | u64::from(us),
                "rst-trace",
                [0; RAW_LEN],
            )
        };
        let event = decoder.decode(&bytes(&sent)).unwrap();
        assert_eq!(event.kernel.context, None);
        assert!(event.kernel.closed_by.is_none());
        assert_eq!(event.kernel.owner.as_ref().map(|o| o.pid), Some(30));
    }
}
