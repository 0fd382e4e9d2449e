//! Causes: why a reset was sent or received, or why a connection was dropped, in words an
//! operator can act on. The ids are stable snake_case strings (JSON field `cause`).
//!
//! [`classify`] is the one place that decides the cause of an event, from everything the kernel
//! offered: reason, state, socket flags, the segment that found no socket, the time-wait
//! substate, and the other end's event when both ends are on this host.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::event::{Event, EventKind};

macro_rules! causes {
    ($($variant:ident => $id:literal,)*) => {
        /// Every cause rst-trace reports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Cause { $($variant,)* }

        impl Cause {
            pub const ALL: &[Cause] = &[$(Cause::$variant,)*];

            /// The stable id (`port_closed`).
            pub fn id(self) -> &'static str {
                match self { $(Cause::$variant => $id,)* }
            }

            pub fn from_id(id: &str) -> Option<Self> {
                match id { $($id => Some(Cause::$variant),)* _ => None }
            }
        }
    };
}

causes! {
    PortClosed => "port_closed",
    HalfOpen => "half_open",
    ConnectionRefused => "connection_refused",
    LingerAbort => "linger_abort",
    UnreadDataClose => "unread_data_close",
    DataAfterClose => "data_after_close",
    StaleConnectionReuse => "stale_connection_reuse",
    ListenerClosed => "listener_closed",
    Timewait => "timewait",
    KeepaliveTimeout => "keepalive_timeout",
    MemoryPressure => "memory_pressure",
    InvalidPacket => "invalid_packet",
    SocketDestroyed => "socket_destroyed",
    PeerAbort => "peer_abort",
    AcceptQueueFull => "accept_queue_full",
    SynQueueFull => "syn_queue_full",
    SocketBacklogFull => "socket_backlog_full",
    ReceiveBufferFull => "receive_buffer_full",
    CpuBacklogFull => "cpu_backlog_full",
    Other => "other",
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Cause {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.id())
    }
}

/// Reasons of `enum sk_rst_reason` that reject a malformed or unacceptable segment.
const INVALID_PACKET_REASONS: &[&str] = &[
    "TCP_INVALID_ACK_SEQUENCE",
    "TCP_RFC7323_PAWS",
    "TCP_TOO_OLD_ACK",
    "TCP_ACK_UNSENT_DATA",
    "TCP_FLAGS",
    "TCP_OLD_ACK",
    "INVALID_SYN",
];

/// Decides the cause of `event` from what the kernel reported. `peer` is the cause of the reset
/// this host sent on the same connection just before, when both ends are on this host.
pub fn classify(event: &Event, peer: Option<Cause>) -> Cause {
    let facts = &event.kernel;
    let state = event.state.as_deref();
    match event.kind {
        EventKind::ResetReceived => match state {
            Some("SYN_SENT") => Cause::ConnectionRefused,
            Some("CLOSE_WAIT") => Cause::StaleConnectionReuse,
            // The other end, on this host, aborted: its reason is this end's reason too. Causes
            // that describe what the sender saw (a closed port, a forgotten connection) are not.
            _ => peer
                .filter(|cause| cause.explains_a_received_reset())
                .unwrap_or(Cause::PeerAbort),
        },
        EventKind::QueueDrop => match event.reason.as_deref() {
            Some("TCP_LISTEN_OVERFLOW") => Cause::AcceptQueueFull,
            Some("SOCKET_BACKLOG") => Cause::SocketBacklogFull,
            Some("SOCKET_RCVBUFF" | "TCP_OFO_QUEUE_PRUNE") => Cause::ReceiveBufferFull,
            Some("CPU_BACKLOG") => Cause::CpuBacklogFull,
            // Drops seen through counters carry their cause already.
            _ => event.cause.unwrap_or(Cause::Other),
        },
        EventKind::ResetSent => {
            let time_wait = || {
                // An orphaned FIN_WAIT2 connection lives on as a time-wait socket: data for it
                // means the peer still used a connection our application had closed.
                let orphan = facts.tw_substate.as_deref() == Some("FIN_WAIT2");
                let syn = facts.segment.is_some_and(|s| s.is_syn());
                if orphan && !syn {
                    Cause::DataAfterClose
                } else {
                    Cause::Timewait
                }
            };
            let closing = || {
                if facts.linger_zero {
                    Cause::LingerAbort
                } else if facts.full_socket && !facts.has_socket_file {
                    // Never accepted: the listener it waited on was closed.
                    Cause::ListenerClosed
                } else {
                    Cause::SocketDestroyed
                }
            };
            match event.reason.as_deref() {
                Some("NO_SOCKET") => match facts.segment {
                    Some(segment) if segment.is_syn() => Cause::PortClosed,
                    Some(_) => Cause::HalfOpen,
                    None => Cause::Other,
                },
                Some("TCP_TIMEWAIT_SOCKET") => time_wait(),
                Some("TCP_ABORT_ON_CLOSE" | "TCP_DISCONNECT_WITH_DATA") => Cause::UnreadDataClose,
                Some("TCP_ABORT_ON_LINGER") => Cause::LingerAbort,
                Some("TCP_ABORT_ON_DATA") => Cause::DataAfterClose,
                Some("TCP_ABORT_ON_MEMORY") => Cause::MemoryPressure,
                Some("TCP_KEEPALIVE_TIMEOUT") => Cause::KeepaliveTimeout,
                Some("TCP_STATE") => closing(),
                Some(reason) if INVALID_PACKET_REASONS.contains(&reason) => Cause::InvalidPacket,
                Some(_) => Cause::Other,
                // Kernels before 6.10 give no reason: the state, the socket and whether a segment
                // was answered have to do.
                None => match state {
                    // No socket matched the segment (seen by a probe on older kernels).
                    None => match facts.segment {
                        Some(segment) if segment.is_syn() => Cause::PortClosed,
                        Some(_) => Cause::HalfOpen,
                        None => Cause::Other,
                    },
                    Some("TIME_WAIT") => time_wait(),
                    Some("CLOSE") if facts.linger_zero => Cause::LingerAbort,
                    Some("CLOSE") if facts.full_socket && !facts.has_socket_file => {
                        Cause::ListenerClosed
                    }
                    Some("CLOSE") => Cause::UnreadDataClose,
                    _ if facts.segment.is_some() => Cause::InvalidPacket,
                    Some("ESTABLISHED") => Cause::KeepaliveTimeout,
                    Some("FIN_WAIT1" | "FIN_WAIT2" | "LAST_ACK" | "CLOSING") => {
                        Cause::MemoryPressure
                    }
                    _ => Cause::Other,
                },
            }
        }
    }
}

impl Cause {
    /// A sent reset with this cause also explains the reset the other end received.
    pub fn explains_a_received_reset(self) -> bool {
        matches!(
            self,
            Cause::LingerAbort
                | Cause::UnreadDataClose
                | Cause::ListenerClosed
                | Cause::SocketDestroyed
                | Cause::KeepaliveTimeout
                | Cause::MemoryPressure
        )
    }
}

/// Whether a sent reset with this cause fires in the process that closed the socket, so that
/// the running task is the process to name even when the socket has no recorded owner.
pub fn fires_in_closing_process(cause: Cause) -> bool {
    matches!(
        cause,
        Cause::LingerAbort
            | Cause::UnreadDataClose
            | Cause::ListenerClosed
            | Cause::SocketDestroyed
    )
}

/// What `rst-trace explain CAUSE` prints.
pub struct Explanation {
    pub meaning: &'static str,
    /// How it shows up in applications: the error strings people search for.
    pub symptoms: &'static [&'static str],
    pub fix: &'static str,
}

impl Cause {
    pub fn explain(self) -> Explanation {
        use Cause::*;
        let (meaning, symptoms, fix): (&str, &[&str], &str) = match self {
            PortClosed => (
                "A SYN arrived for a port with no listening socket, so this host answered with a \
                 reset. Nothing was listening: the service is down, restarting, listening on \
                 another address or port, or not started in this network namespace.",
                &[
                    "ECONNREFUSED",
                    "Connection refused",
                    "connect() failed (111: Connection refused)",
                    "502 Bad Gateway",
                ],
                "Start the service or point clients at the right address and port; check `ss -lnt` \
                 in the right network namespace. During restarts, keep the socket open (socket \
                 activation, SO_REUSEPORT hand-over) or retry connects.",
            ),
            HalfOpen => (
                "A segment that was not a SYN arrived for a connection this host does not know, so \
                 it answered with a reset. The peer still believes a connection exists: this host \
                 rebooted or lost the state, a NAT or load balancer mapping changed, or the \
                 connection was destroyed here while the peer was away.",
                &[
                    "Connection reset by peer",
                    "ECONNRESET",
                    "broken pipe after a failover",
                ],
                "Find why the connection state was lost (reboot, conntrack/NAT timeout shorter than \
                 the idle time, failover). Use TCP keep-alive or application pings shorter than \
                 NAT idle timeouts.",
            ),
            ConnectionRefused => (
                "This host tried to connect and the peer answered the SYN with a reset: nothing \
                 listens on that address and port.",
                &[
                    "ECONNREFUSED",
                    "Connection refused",
                    "connect() failed (111: Connection refused)",
                    "502 Bad Gateway",
                ],
                "Check the upstream is running and listening on that address and port; check the \
                 address the client resolved. For proxies, check the upstream block.",
            ),
            LingerAbort => (
                "A process closed the connection with SO_LINGER on and a zero timeout, which \
                 aborts it with a reset instead of a FIN. Some clients (Jedis, some pools, load \
                 balancer health checks) do this on purpose to avoid TIME_WAIT.",
                &[
                    "Connection reset by peer (on the other end)",
                    "recv() failed (104: Connection reset by peer)",
                ],
                "Usually harmless when the application finished its exchange. If the peer loses \
                 data, stop setting SO_LINGER {on, 0} and close normally.",
            ),
            UnreadDataClose => (
                "A process closed the connection while unread data sat in its receive buffer; the \
                 kernel must then reset instead of closing cleanly (RFC 2525). Typical: a server \
                 answers one request and closes while the client already sent another (pipelining, \
                 or an error response sent before reading the whole body).",
                &[
                    "Connection reset by peer",
                    "unexpected EOF",
                    "Broken pipe",
                    "upstream prematurely closed connection",
                ],
                "Read (or drain) the request before closing; shut down the write side first and \
                 read until EOF; do not pipeline to servers that close after one response.",
            ),
            DataAfterClose => (
                "Data arrived for a connection this host's application had already closed, so the \
                 kernel answered with a reset. Classic case: an HTTP server closed an idle \
                 keep-alive connection, and the client reused it from its pool afterwards.",
                &[
                    "Connection reset by peer",
                    "unexpected end of stream",
                    "ECONNRESET on the first request after idle",
                ],
                "Make clients' idle timeout shorter than the server's keep-alive timeout, or have \
                 the clients retry idempotent requests on a fresh connection.",
            ),
            StaleConnectionReuse => (
                "This host sent on a connection the peer had already closed (the socket was in \
                 CLOSE_WAIT: the peer's FIN had arrived), and the peer answered with a reset. A \
                 connection pool reused a connection after the server's keep-alive timeout.",
                &[
                    "Connection reset by peer",
                    "unexpected end of stream",
                    "NoHttpResponseException",
                    "RemoteDisconnected",
                    "ECONNRESET after an idle period",
                ],
                "Make the client pool's idle timeout shorter than the server's keep-alive timeout \
                 (or validate connections before reuse), or retry idempotent requests.",
            ),
            ListenerClosed => (
                "A listening socket was closed while connections waited in its accept queue; each \
                 was reset. The server stopped or restarted without draining.",
                &[
                    "Connection reset by peer right after connect",
                    "ECONNRESET during deploys",
                ],
                "Drain before stopping: stop accepting new connections elsewhere (load balancer), \
                 accept what is queued, then close; or hand the socket over (SO_REUSEPORT, socket \
                 activation).",
            ),
            Timewait => (
                "A segment arrived for a connection in TIME_WAIT that could not be accepted \
                 (usually a stray or very late segment), so this host answered with a reset.",
                &["Connection reset by peer"],
                "Usually harmless. If it recurs, look for a peer reusing ports too fast or a \
                 middlebox replaying segments.",
            ),
            KeepaliveTimeout => (
                "TCP keep-alive probes went unanswered, so the kernel gave up on the connection and \
                 reset it. The peer vanished (crashed, network cut, firewall dropping) without \
                 closing.",
                &[
                    "ETIMEDOUT",
                    "Connection timed out",
                    "read: connection timed out",
                ],
                "Find out why the peer went silent (host down, firewall or NAT state expired). \
                 Tune keep-alive (tcp_keepalive_time/intvl/probes) to notice sooner if needed.",
            ),
            MemoryPressure => (
                "The kernel reset the connection because of orphan-socket or TCP memory limits \
                 (too many orphaned sockets, or tcp_mem exhausted).",
                &[
                    "Connection reset by peer",
                    "kernel: TCP: out of memory -- consider tuning tcp_mem",
                    "too many orphaned sockets",
                ],
                "Raise net.ipv4.tcp_max_orphans or tcp_mem, or find what leaves so many orphaned \
                 connections (peers that never read).",
            ),
            InvalidPacket => (
                "A segment with an unacceptable ACK, sequence number, flags, timestamp (PAWS) or \
                 SYN arrived, and the kernel answered with a reset.",
                &[
                    "Connection reset by peer",
                    "sporadic resets behind NAT or load balancers",
                ],
                "Look for middleboxes rewriting sequence numbers or timestamps, NAT reusing ports, \
                 or broken TCP stacks; compare with `nstat` PAWS and bad-ACK counters.",
            ),
            SocketDestroyed => (
                "The socket was destroyed administratively (`ss -K`, SOCK_DESTROY, a BPF or \
                 netlink tool), which resets the connection.",
                &[
                    "Connection reset by peer",
                    "Software caused connection abort",
                ],
                "Check which tool or agent kills sockets (the process shown), and why.",
            ),
            PeerAbort => (
                "The peer reset an established connection, and nothing on this host explains it: \
                 the peer application aborted the connection (SO_LINGER 0, a crash, a timeout in \
                 the client), or a middlebox reset it.",
                &[
                    "Connection reset by peer",
                    "recv() failed (104: Connection reset by peer)",
                    "ECONNRESET",
                ],
                "Look at the peer: its logs, its timeouts, a proxy or firewall between the two.",
            ),
            AcceptQueueFull => (
                "A listener's accept queue was full (the application accepts too slowly, or its \
                 listen() backlog is too small), so the kernel dropped the connection.",
                &[
                    "connect timeouts under load",
                    "SYN retransmits",
                    "ss -lnt: Recv-Q above Send-Q",
                    "TcpExtListenOverflows",
                ],
                "Accept faster (more workers), raise the listen() backlog and net.core.somaxconn \
                 in that network namespace.",
            ),
            SynQueueFull => (
                "A listener's SYN queue was full and syncookies were off, so the kernel dropped \
                 new SYNs (a SYN flood, or a burst larger than tcp_max_syn_backlog).",
                &["connect timeouts", "TcpExtTCPReqQFullDrop"],
                "Enable net.ipv4.tcp_syncookies, raise tcp_max_syn_backlog and the listen backlog.",
            ),
            SocketBacklogFull => (
                "Packets arrived while the socket was owned by a process and its backlog was full, \
                 so the kernel dropped them.",
                &["retransmits", "TcpExtTCPBacklogDrop"],
                "The process holds the socket lock too long, or the receive buffer is too small; \
                 raise rmem and read faster.",
            ),
            ReceiveBufferFull => (
                "The socket's receive buffer was full, so the kernel dropped incoming data.",
                &["retransmits", "zero window", "TcpExtTCPRcvQDrop"],
                "Read faster, or raise SO_RCVBUF / net.ipv4.tcp_rmem.",
            ),
            CpuBacklogFull => (
                "The per-CPU input backlog was full (net.core.netdev_max_backlog), so the kernel \
                 dropped packets before TCP saw them.",
                &["drops in /proc/net/softnet_stat"],
                "Raise net.core.netdev_max_backlog, spread interrupts (RSS/RPS).",
            ),
            Other => (
                "A reset or drop that matches none of the known causes; the kernel's reason name \
                 is still reported.",
                &[],
                "Look at the kernel reason and state in the event.",
            ),
        };
        Explanation {
            meaning,
            symptoms,
            fix,
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "What it means:\n  {}", self.meaning)?;
        if !self.symptoms.is_empty() {
            writeln!(f, "How it shows up:")?;
            for symptom in self.symptoms {
                writeln!(f, "  - {symptom}")?;
            }
        }
        write!(f, "What to change:\n  {}", self.fix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Segment;

    #[test]
    fn ids_round_trip_and_match_scenarios_md() {
        let ids: Vec<&str> = Cause::ALL.iter().map(|c| c.id()).collect();
        assert_eq!(
            ids,
            [
                "port_closed",
                "half_open",
                "connection_refused",
                "linger_abort",
                "unread_data_close",
                "data_after_close",
                "stale_connection_reuse",
                "listener_closed",
                "timewait",
                "keepalive_timeout",
                "memory_pressure",
                "invalid_packet",
                "socket_destroyed",
                "peer_abort",
                "accept_queue_full",
                "syn_queue_full",
                "socket_backlog_full",
                "receive_buffer_full",
                "cpu_backlog_full",
                "other",
            ]
        );
        for cause in Cause::ALL {
            assert_eq!(Cause::from_id(cause.id()), Some(*cause));
            let explanation = cause.explain();
            assert!(!explanation.meaning.is_empty() && !explanation.fix.is_empty());
        }
        assert_eq!(Cause::from_id("nope"), None);
    }

    fn event(kind: EventKind, reason: Option<&str>, state: Option<&str>) -> Event {
        Event {
            reason: reason.map(str::to_string),
            state: state.map(str::to_string),
            ..Event::for_test(kind)
        }
    }

    fn sent(reason: &str, state: Option<&str>) -> Event {
        event(EventKind::ResetSent, Some(reason), state)
    }

    const SYN: Segment = Segment(0x02);
    const PSH_ACK: Segment = Segment(0x18);

    #[test]
    fn no_socket_is_port_closed_for_a_syn_and_half_open_otherwise() {
        let mut e = sent("NO_SOCKET", None);
        e.kernel.segment = Some(SYN);
        assert_eq!(classify(&e, None), Cause::PortClosed);
        e.kernel.segment = Some(PSH_ACK);
        assert_eq!(classify(&e, None), Cause::HalfOpen);
        e.kernel.segment = Some(Segment(0x12)); // SYN-ACK: not a connection request
        assert_eq!(classify(&e, None), Cause::HalfOpen);
        e.kernel.segment = None;
        assert_eq!(classify(&e, None), Cause::Other);
    }

    #[test]
    fn time_wait_socket_is_data_after_close_only_for_an_orphaned_connection() {
        let mut e = sent("TCP_TIMEWAIT_SOCKET", Some("TIME_WAIT"));
        e.kernel.tw_substate = Some("FIN_WAIT2".into());
        e.kernel.segment = Some(PSH_ACK);
        assert_eq!(classify(&e, None), Cause::DataAfterClose);
        e.kernel.segment = Some(SYN);
        assert_eq!(classify(&e, None), Cause::Timewait);
        e.kernel.tw_substate = Some("TIME_WAIT".into());
        e.kernel.segment = Some(PSH_ACK);
        assert_eq!(classify(&e, None), Cause::Timewait);
    }

    #[test]
    fn tcp_state_resets_from_close_are_told_apart_by_the_socket() {
        let mut e = sent("TCP_STATE", Some("CLOSE"));
        e.kernel.full_socket = true;
        e.kernel.has_socket_file = true;
        e.kernel.linger_zero = true;
        assert_eq!(classify(&e, None), Cause::LingerAbort);
        e.kernel.linger_zero = false;
        e.kernel.has_socket_file = false;
        assert_eq!(classify(&e, None), Cause::ListenerClosed, "never accepted");
        e.kernel.has_socket_file = true;
        assert_eq!(classify(&e, None), Cause::SocketDestroyed);
    }

    #[test]
    fn reasons_map_to_causes() {
        let cases = [
            ("TCP_ABORT_ON_CLOSE", Cause::UnreadDataClose),
            ("TCP_DISCONNECT_WITH_DATA", Cause::UnreadDataClose),
            ("TCP_ABORT_ON_LINGER", Cause::LingerAbort),
            ("TCP_ABORT_ON_DATA", Cause::DataAfterClose),
            ("TCP_ABORT_ON_MEMORY", Cause::MemoryPressure),
            ("TCP_KEEPALIVE_TIMEOUT", Cause::KeepaliveTimeout),
            ("TCP_RFC7323_PAWS", Cause::InvalidPacket),
            ("TCP_INVALID_ACK_SEQUENCE", Cause::InvalidPacket),
            ("INVALID_SYN", Cause::InvalidPacket),
            ("MPTCP_RST_EUNSPEC", Cause::Other),
            ("UNKNOWN(99)", Cause::Other),
        ];
        for (reason, cause) in cases {
            assert_eq!(
                classify(&sent(reason, Some("ESTABLISHED")), None),
                cause,
                "{reason}"
            );
        }
    }

    #[test]
    fn kernels_without_a_reason_use_state_and_socket() {
        let mut e = event(EventKind::ResetSent, None, Some("CLOSE"));
        e.kernel.full_socket = true;
        e.kernel.has_socket_file = true;
        assert_eq!(classify(&e, None), Cause::UnreadDataClose);
        e.kernel.linger_zero = true;
        assert_eq!(classify(&e, None), Cause::LingerAbort);
        e.kernel.linger_zero = false;
        e.kernel.has_socket_file = false;
        assert_eq!(classify(&e, None), Cause::ListenerClosed);
        let established = event(EventKind::ResetSent, None, Some("ESTABLISHED"));
        assert_eq!(
            classify(&established, None),
            Cause::KeepaliveTimeout,
            "a timer, no segment"
        );
        let mut answered = established.clone();
        answered.kernel.segment = Some(PSH_ACK);
        assert_eq!(classify(&answered, None), Cause::InvalidPacket);
        let mut no_socket = event(EventKind::ResetSent, None, None);
        no_socket.kernel.segment = Some(SYN);
        assert_eq!(
            classify(&no_socket, None),
            Cause::PortClosed,
            "a probe on 6.1"
        );
        no_socket.kernel.segment = Some(PSH_ACK);
        assert_eq!(classify(&no_socket, None), Cause::HalfOpen);
        let orphan = event(EventKind::ResetSent, None, Some("FIN_WAIT1"));
        assert_eq!(classify(&orphan, None), Cause::MemoryPressure);
        let mut tw = event(EventKind::ResetSent, None, Some("TIME_WAIT"));
        tw.kernel.tw_substate = Some("FIN_WAIT2".into());
        tw.kernel.segment = Some(PSH_ACK);
        assert_eq!(classify(&tw, None), Cause::DataAfterClose);
    }

    #[test]
    fn received_resets_follow_the_socket_state_then_the_other_end() {
        let received = |state| event(EventKind::ResetReceived, None, Some(state));
        assert_eq!(
            classify(&received("SYN_SENT"), None),
            Cause::ConnectionRefused
        );
        assert_eq!(
            classify(&received("CLOSE_WAIT"), None),
            Cause::StaleConnectionReuse
        );
        assert_eq!(
            classify(&received("CLOSE_WAIT"), Some(Cause::DataAfterClose)),
            Cause::StaleConnectionReuse,
            "the state says more than the sender's view"
        );
        assert_eq!(classify(&received("ESTABLISHED"), None), Cause::PeerAbort);
        assert_eq!(
            classify(&received("ESTABLISHED"), Some(Cause::LingerAbort)),
            Cause::LingerAbort
        );
        assert_eq!(
            classify(&received("ESTABLISHED"), Some(Cause::ListenerClosed)),
            Cause::ListenerClosed
        );
        assert_eq!(
            classify(&received("ESTABLISHED"), Some(Cause::HalfOpen)),
            Cause::PeerAbort,
            "half_open is the sender's view"
        );
    }

    #[test]
    fn resets_sent_by_close_fire_in_the_closing_process() {
        for cause in [
            Cause::LingerAbort,
            Cause::UnreadDataClose,
            Cause::ListenerClosed,
        ] {
            assert!(fires_in_closing_process(cause));
        }
        for cause in [
            Cause::PortClosed,
            Cause::KeepaliveTimeout,
            Cause::DataAfterClose,
        ] {
            assert!(!fires_in_closing_process(cause));
        }
    }

    #[test]
    fn stale_connection_reuse_says_to_shorten_the_client_idle_timeout() {
        let text = Cause::StaleConnectionReuse.explain().to_string();
        assert!(text.contains("idle timeout shorter than the server's keep-alive timeout"));
        assert!(text.contains("retry idempotent requests"));
    }
}
