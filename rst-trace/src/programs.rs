//! The one table of kernel programs: which hook each serves, its BTF twin, its role, the record
//! fields and offsets it needs, and the kernels that take it.
//!
//! [`crate::sources`] turns the table into the sources of the running kernel (on, or off and
//! why), the loader attaches them from it, and `rst-trace check` prints them. The program names
//! are those of the kernel crate (`rst-trace-ebpf`).

use rst_trace_common::{KernelOffsets, NO_OFFSET};

/// What a source is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reports resets sent.
    ResetSent,
    /// Reports resets received.
    ResetReceived,
    /// Keeps socket owners and closers current (connect, listen, close).
    Ownership,
    /// Forgets owners of destroyed sockets.
    Teardown,
    /// Records owners of accepted sockets.
    Accept,
    /// Reports packets dropped because a queue was full.
    QueueDrop,
    /// Reports resets sent with no socket, which the tracepoint misses before 6.10 (a kprobe).
    ResetSentNoSocket,
}

impl Role {
    /// What the user loses when a source with this role is off, in their words.
    pub fn serves(self) -> &'static str {
        match self {
            Role::ResetSent => "resets sent by this host",
            Role::ResetReceived => "resets received by this host",
            Role::Ownership => {
                "owners of connecting and listening sockets, and who closed a connection"
            }
            Role::Teardown => "forgetting the owners of destroyed sockets",
            Role::Accept => "owners of accepted connections",
            Role::QueueDrop => {
                "packets dropped from full queues (accept queue, backlog, receive buffer)"
            }
            Role::ResetSentNoSocket => "resets sent with no socket (closed ports, half-open)",
        }
    }
}

/// The kernels a program is attached on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Every kernel that has the hook.
    All,
    /// Only kernels whose `tcp:tcp_send_reset` has no `reason` field (before 6.10): they do not
    /// fire it for resets sent without a socket, so kprobes report those.
    WithoutResetReason,
}

/// How a record's fields are checked before its classic program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A reset tracepoint, read with [`crate::layout::ResetLayout`].
    Reset,
    /// These fields must lie within the bytes the program copies.
    Fields(&'static [&'static str]),
    /// A kprobe: no record.
    None,
}

/// What the running kernel offers BTF programs, for [`BtfTwin::usable`].
#[derive(Debug, Clone, Copy)]
pub struct BtfKernel<'a> {
    pub offsets: &'a KernelOffsets,
    /// Tracing programs may call `bpf_get_socket_cookie` (5.12+).
    pub socket_cookie_helper: bool,
}

/// A BTF tracepoint program that can serve a hook in place of its classic program.
#[derive(Debug, Clone, Copy)]
pub struct BtfTwin {
    pub program: &'static str,
    /// Whether this kernel lets it give what the classic program gives (it reads the socket
    /// where the classic record carries a field); if not, why, in the user's words.
    pub usable: fn(&BtfKernel<'_>) -> Result<(), &'static str>,
}

/// One kernel program and the hook it serves.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// Tracepoint system, or `kprobe`.
    pub system: &'static str,
    /// Tracepoint event, or the probed kernel function.
    pub event: &'static str,
    /// The classic (or kprobe) program.
    pub program: &'static str,
    pub btf_twin: Option<BtfTwin>,
    pub role: Role,
    pub record: Record,
    pub kernels: Kernels,
}

fn always(_: &BtfKernel<'_>) -> Result<(), &'static str> {
    Ok(())
}

/// Every program rst-trace attaches, in the order `rst-trace check` lists them.
pub const PROGRAMS: &[Program] = &[
    Program {
        system: "tcp",
        event: "tcp_send_reset",
        program: "tcp_send_reset",
        btf_twin: Some(BtfTwin {
            program: "tcp_send_reset_btf",
            usable: always,
        }),
        role: Role::ResetSent,
        record: Record::Reset,
        kernels: Kernels::All,
    },
    Program {
        system: "tcp",
        event: "tcp_receive_reset",
        program: "tcp_receive_reset",
        btf_twin: Some(BtfTwin {
            program: "tcp_receive_reset_btf",
            // The classic record carries the cookie the kernel makes for it; the BTF program can
            // make one only through the helper, and could otherwise report none.
            usable: |kernel| {
                if kernel.socket_cookie_helper {
                    Ok(())
                } else {
                    Err(
                        "this kernel does not let tracing programs ask for a socket's cookie \
                         (bpf_get_socket_cookie, 5.12+), which the classic record carries",
                    )
                }
            },
        }),
        role: Role::ResetReceived,
        record: Record::Reset,
        kernels: Kernels::All,
    },
    Program {
        system: "sock",
        event: "inet_sock_set_state",
        program: "inet_sock_set_state",
        btf_twin: Some(BtfTwin {
            program: "inet_sock_set_state_btf",
            // Its protocol test reads the socket; the classic record carries the protocol.
            usable: |kernel| {
                if kernel.offsets.sk_protocol != NO_OFFSET {
                    Ok(())
                } else {
                    Err(
                        "this kernel's BTF has no sock.sk_protocol, which the classic record \
                         carries",
                    )
                }
            },
        }),
        role: Role::Ownership,
        record: Record::Fields(&["skaddr", "oldstate", "newstate", "protocol"]),
        kernels: Kernels::All,
    },
    Program {
        system: "tcp",
        event: "tcp_destroy_sock",
        program: "tcp_destroy_sock",
        btf_twin: Some(BtfTwin {
            program: "tcp_destroy_sock_btf",
            usable: always,
        }),
        role: Role::Teardown,
        record: Record::Fields(&["skaddr"]),
        kernels: Kernels::All,
    },
    Program {
        system: "syscalls",
        event: "sys_exit_accept4",
        program: "sys_exit_accept",
        btf_twin: None,
        role: Role::Accept,
        record: Record::Fields(&["ret"]),
        kernels: Kernels::All,
    },
    Program {
        system: "syscalls",
        event: "sys_exit_accept",
        program: "sys_exit_accept",
        btf_twin: None,
        role: Role::Accept,
        record: Record::Fields(&["ret"]),
        kernels: Kernels::All,
    },
    Program {
        system: "skb",
        event: "kfree_skb",
        program: "kfree_skb",
        btf_twin: None,
        role: Role::QueueDrop,
        record: Record::Fields(&["skbaddr", "reason"]),
        kernels: Kernels::All,
    },
    Program {
        system: "kprobe",
        event: "tcp_v4_send_reset",
        program: "tcp_v4_send_reset",
        btf_twin: None,
        role: Role::ResetSentNoSocket,
        record: Record::None,
        kernels: Kernels::WithoutResetReason,
    },
    Program {
        system: "kprobe",
        event: "tcp_v6_send_reset",
        program: "tcp_v6_send_reset",
        btf_twin: None,
        role: Role::ResetSentNoSocket,
        record: Record::None,
        kernels: Kernels::WithoutResetReason,
    },
];

/// The table's entry for a hook.
pub fn program_for(system: &str, event: &str) -> Option<&'static Program> {
    PROGRAMS
        .iter()
        .find(|program| program.system == system && program.event == event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_is_listed_once_and_btf_twins_name_their_hook() {
        for (index, program) in PROGRAMS.iter().enumerate() {
            let first = PROGRAMS
                .iter()
                .position(|p| p.system == program.system && p.event == program.event);
            assert_eq!(first, Some(index), "{}:{}", program.system, program.event);
            if let Some(twin) = program.btf_twin {
                assert_eq!(twin.program, format!("{}_btf", program.event));
            }
        }
        let protocol_twin = program_for("sock", "inet_sock_set_state")
            .and_then(|p| p.btf_twin)
            .unwrap();
        let kernel = BtfKernel {
            offsets: &KernelOffsets::NONE,
            socket_cookie_helper: false,
        };
        assert!((protocol_twin.usable)(&kernel).is_err());
        let cookie_twin = program_for("tcp", "tcp_receive_reset")
            .and_then(|p| p.btf_twin)
            .unwrap();
        assert!((cookie_twin.usable)(&kernel).is_err());
        assert!(
            (cookie_twin.usable)(&BtfKernel {
                socket_cookie_helper: true,
                ..kernel
            })
            .is_ok()
        );
        assert!(
            PROGRAMS
                .iter()
                .filter(|p| p.system == "kprobe")
                .all(|p| p.kernels == Kernels::WithoutResetReason)
        );
    }
}
