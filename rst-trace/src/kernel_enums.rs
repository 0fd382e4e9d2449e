//! Kernel enum values after decode: TCP states, reset reasons and drop reasons as Rust variants.
//!
//! The numbers differ between kernels, so [`crate::names`] turns each number into the running
//! kernel's name first; the name then becomes a variant here. The variants are the values the
//! cause rules look at; every other name the kernel has is kept as `Other(name)` (and numbers the
//! kernel did not name as `Other("UNKNOWN(n)")`), so output always shows the kernel's own word.
//! Each type serializes as that word: the JSON strings are the kernel's names.

use std::fmt;

use serde::{Serialize, Serializer};

/// Declares an enum of known kernel names plus `Other(String)`, with its name lookups.
macro_rules! kernel_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)*
            /// A name the cause rules do not look at, as the kernel spells it.
            Other(String),
        }

        impl $name {
            /// The variant for the kernel's name `name` (without the enum's prefix).
            pub fn from_name(name: &str) -> Self {
                match name {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_string()),
                }
            }

            /// The kernel's name, as printed.
            pub fn name(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(name) => name,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self::from_name(name)
            }
        }
    };
}

kernel_enum! {
    /// A TCP state (`TCP_ESTABLISHED`), without the `TCP_` prefix.
    TcpState {
        Established => "ESTABLISHED",
        SynSent => "SYN_SENT",
        SynRecv => "SYN_RECV",
        FinWait1 => "FIN_WAIT1",
        FinWait2 => "FIN_WAIT2",
        TimeWait => "TIME_WAIT",
        Close => "CLOSE",
        CloseWait => "CLOSE_WAIT",
        LastAck => "LAST_ACK",
        Listen => "LISTEN",
        Closing => "CLOSING",
        NewSynRecv => "NEW_SYN_RECV",
    }
}

kernel_enum! {
    /// Why the kernel sent a reset: `enum sk_rst_reason` (6.10+), without `SK_RST_REASON_`.
    ResetReason {
        NotSpecified => "NOT_SPECIFIED",
        NoSocket => "NO_SOCKET",
        TcpTimewaitSocket => "TCP_TIMEWAIT_SOCKET",
        TcpAbortOnClose => "TCP_ABORT_ON_CLOSE",
        TcpDisconnectWithData => "TCP_DISCONNECT_WITH_DATA",
        TcpAbortOnLinger => "TCP_ABORT_ON_LINGER",
        TcpAbortOnData => "TCP_ABORT_ON_DATA",
        TcpAbortOnMemory => "TCP_ABORT_ON_MEMORY",
        TcpKeepaliveTimeout => "TCP_KEEPALIVE_TIMEOUT",
        TcpState => "TCP_STATE",
        TcpInvalidAckSequence => "TCP_INVALID_ACK_SEQUENCE",
        TcpRfc7323Paws => "TCP_RFC7323_PAWS",
        TcpTooOldAck => "TCP_TOO_OLD_ACK",
        TcpAckUnsentData => "TCP_ACK_UNSENT_DATA",
        TcpFlags => "TCP_FLAGS",
        TcpOldAck => "TCP_OLD_ACK",
        InvalidSyn => "INVALID_SYN",
    }
}

kernel_enum! {
    /// Why the kernel freed a packet: `enum skb_drop_reason`, without `SKB_DROP_REASON_`.
    DropReason {
        TcpListenOverflow => "TCP_LISTEN_OVERFLOW",
        SocketBacklog => "SOCKET_BACKLOG",
        SocketRcvbuff => "SOCKET_RCVBUFF",
        CpuBacklog => "CPU_BACKLOG",
        TcpOfoQueuePrune => "TCP_OFO_QUEUE_PRUNE",
    }
}

impl DropReason {
    /// The drop reasons that mean a queue was full: the ones the kernel programs report.
    pub const QUEUE_FULL: [DropReason; 5] = [
        DropReason::TcpListenOverflow,
        DropReason::SocketBacklog,
        DropReason::SocketRcvbuff,
        DropReason::CpuBacklog,
        DropReason::TcpOfoQueuePrune,
    ];
}

/// The kernel's reason for an event: a reset's reason or a packet drop's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    Reset(ResetReason),
    Drop(DropReason),
}

impl Reason {
    pub fn name(&self) -> &str {
        match self {
            Self::Reset(reason) => reason.name(),
            Self::Drop(reason) => reason.name(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl From<ResetReason> for Reason {
    fn from(reason: ResetReason) -> Self {
        Self::Reset(reason)
    }
}

impl From<DropReason> for Reason {
    fn from(reason: DropReason) -> Self {
        Self::Drop(reason)
    }
}

/// Tests write reset reasons by name (`"NO_SOCKET".into()`), as the output shows them.
impl From<&str> for Reason {
    fn from(name: &str) -> Self {
        Self::Reset(ResetReason::from_name(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_kept() {
        for state in ["ESTABLISHED", "SYN_SENT", "FIN_WAIT2", "NEW_SYN_RECV"] {
            assert_eq!(TcpState::from_name(state).name(), state);
        }
        assert_eq!(TcpState::from_name("SYN_SENT"), TcpState::SynSent);
        assert_eq!(
            TcpState::from_name("UNKNOWN(99)"),
            TcpState::Other("UNKNOWN(99)".into())
        );
        assert_eq!(ResetReason::from_name("NO_SOCKET"), ResetReason::NoSocket);
        let mptcp = ResetReason::from_name("MPTCP_RST_EUNSPEC");
        assert_eq!(mptcp, ResetReason::Other("MPTCP_RST_EUNSPEC".into()));
        assert_eq!(mptcp.to_string(), "MPTCP_RST_EUNSPEC");
        assert_eq!(
            DropReason::from_name("TCP_LISTEN_OVERFLOW"),
            DropReason::TcpListenOverflow
        );
        for reason in DropReason::QUEUE_FULL {
            assert_eq!(DropReason::from_name(reason.name()), reason);
        }
    }

    #[test]
    fn values_serialize_as_the_kernel_names() {
        let json = serde_json::to_string(&(
            TcpState::CloseWait,
            Reason::Reset(ResetReason::Other("UNKNOWN(7)".into())),
            Reason::Drop(DropReason::SocketRcvbuff),
        ))
        .unwrap();
        assert_eq!(json, r#"["CLOSE_WAIT","UNKNOWN(7)","SOCKET_RCVBUFF"]"#);
    }
}
