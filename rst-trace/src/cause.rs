//! Causes: why a reset was sent or received, or why a connection was dropped, in words an
//! operator can act on. The ids are stable snake_case strings (JSON field `cause`).
//!
//! [`classify`] is the one place that decides the cause of an event, from everything the kernel
//! offered: reason, state, socket flags, the segment that found no socket, the time-wait
//! substate, and the other end's event when both ends are on this host. The words that explain
//! each cause to an operator are in [`crate::explain`].

use std::fmt;

use serde::{Serialize, Serializer};

use crate::{
    decoded::Decoded,
    event::EventKind,
    kernel_enums::{DropReason, Reason, ResetReason, TcpState},
};

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
const INVALID_PACKET_REASONS: &[ResetReason] = &[
    ResetReason::TcpInvalidAckSequence,
    ResetReason::TcpRfc7323Paws,
    ResetReason::TcpTooOldAck,
    ResetReason::TcpAckUnsentData,
    ResetReason::TcpFlags,
    ResetReason::TcpOldAck,
    ResetReason::InvalidSyn,
];

/// Decides the cause of `event` from what the kernel reported. `peer` is the cause of the reset
/// this host sent on the same connection just before, when both ends are on this host.
pub fn classify(event: &Decoded, peer: Option<Cause>) -> Cause {
    match event.kind {
        EventKind::ResetReceived => match event.state {
            Some(TcpState::SynSent) => Cause::ConnectionRefused,
            Some(TcpState::CloseWait) => Cause::StaleConnectionReuse,
            // The other end, on this host, aborted: its reason is this end's reason too. Causes
            // that describe what the sender saw (a closed port, a forgotten connection) are not.
            _ => peer
                .filter(|cause| cause.explains_a_received_reset())
                .unwrap_or(Cause::PeerAbort),
        },
        EventKind::QueueDrop => match &event.reason {
            Some(Reason::Drop(DropReason::TcpListenOverflow)) => Cause::AcceptQueueFull,
            Some(Reason::Drop(DropReason::SocketBacklog)) => Cause::SocketBacklogFull,
            Some(Reason::Drop(DropReason::SocketRcvbuff | DropReason::TcpOfoQueuePrune)) => {
                Cause::ReceiveBufferFull
            }
            Some(Reason::Drop(DropReason::CpuBacklog)) => Cause::CpuBacklogFull,
            // Drops seen through counters carry their cause already.
            _ => event.sampled_cause.unwrap_or(Cause::Other),
        },
        EventKind::ResetSent => sent_reset_cause(event),
    }
}

/// The cause of a reset this host sent.
fn sent_reset_cause(event: &Decoded) -> Cause {
    let facts = &event.kernel;
    // No socket matched the segment: a SYN is a connection to a closed port, anything else
    // belongs to a connection this host does not know.
    let no_socket = || match facts.segment {
        Some(segment) if segment.is_syn() => Cause::PortClosed,
        Some(_) => Cause::HalfOpen,
        None => Cause::Other,
    };
    let time_wait = || {
        // An orphaned FIN_WAIT2 connection lives on as a time-wait socket: data for it
        // means the peer still used a connection our application had closed.
        let orphan = facts.tw_substate == Some(TcpState::FinWait2);
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
    let reason = match &event.reason {
        Some(Reason::Reset(reason)) => reason,
        Some(Reason::Drop(_)) => return Cause::Other,
        // Kernels before 6.10 give no reason: the state, the socket and whether a segment
        // was answered have to do.
        None => {
            return match &event.state {
                // No socket matched the segment (seen by a probe on older kernels).
                None => no_socket(),
                Some(TcpState::TimeWait) => time_wait(),
                Some(TcpState::Close) if facts.linger_zero => Cause::LingerAbort,
                Some(TcpState::Close) if facts.full_socket && !facts.has_socket_file => {
                    Cause::ListenerClosed
                }
                Some(TcpState::Close) => Cause::UnreadDataClose,
                _ if facts.segment.is_some() => Cause::InvalidPacket,
                Some(TcpState::Established) => Cause::KeepaliveTimeout,
                Some(
                    TcpState::FinWait1 | TcpState::FinWait2 | TcpState::LastAck | TcpState::Closing,
                ) => Cause::MemoryPressure,
                _ => Cause::Other,
            };
        }
    };
    match reason {
        ResetReason::NoSocket => no_socket(),
        ResetReason::TcpTimewaitSocket => time_wait(),
        ResetReason::TcpAbortOnClose | ResetReason::TcpDisconnectWithData => Cause::UnreadDataClose,
        ResetReason::TcpAbortOnLinger => Cause::LingerAbort,
        ResetReason::TcpAbortOnData => Cause::DataAfterClose,
        ResetReason::TcpAbortOnMemory => Cause::MemoryPressure,
        ResetReason::TcpKeepaliveTimeout => Cause::KeepaliveTimeout,
        ResetReason::TcpState => closing(),
        reason if INVALID_PACKET_REASONS.contains(reason) => Cause::InvalidPacket,
        _ => Cause::Other,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoded::Segment;

    #[test]
    fn ids_round_trip_and_match_the_documented_causes() {
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

    fn event(kind: EventKind, reason: Option<&str>, state: Option<&str>) -> Decoded {
        Decoded {
            reason: reason.map(Reason::from),
            state: state.map(TcpState::from),
            ..Decoded::for_test(kind)
        }
    }

    fn sent(reason: &str, state: Option<&str>) -> Decoded {
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
}
