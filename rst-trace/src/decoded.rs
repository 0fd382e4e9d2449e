//! What the kernel said about one event: the output of [`crate::decode`] (and of the listener
//! sampler's counters), the input of [`crate::attribute`].
//!
//! Nothing here is printed as such: attribution turns a [`Decoded`] into the
//! [`crate::event::Event`] the sinks print, deciding the process, container and cause.

use crate::{
    cause::Cause,
    event::{ClosedBy, Counter, Endpoint, EventKind, Family, Queue},
    kernel_enums::{Reason, TcpState},
    pcap::CapturedPacket,
};

/// A task as the kernel programs recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The process id in its own PID namespace, as the kernel read it at the time (None: not
    /// read; /proc is asked then).
    pub ns_pid: Option<u32>,
}

impl Task {
    /// The process a kernel program recorded; None when it recorded none.
    pub fn from_owner(owner: &rst_trace_common::Owner) -> Option<Self> {
        (owner.tgid != 0).then(|| Self {
            pid: owner.tgid,
            tid: owner.pid,
            comm: crate::decode::comm(&owner.comm),
            cgroup_id: owner.cgroup_id,
            ns_pid: (owner.ns_tgid != 0).then_some(owner.ns_tgid),
        })
    }
}

/// TCP flags of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment(pub u8);

impl Segment {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    /// A connection request: SYN without ACK.
    pub fn is_syn(self) -> bool {
        self.0 & (Self::SYN | Self::ACK) == Self::SYN
    }
}

/// What the kernel programs saw about the socket and the tasks around it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelFacts {
    /// The task that was running when the event fired (in softirq: whoever was interrupted).
    pub context: Option<Task>,
    /// The socket's owner from connect, listen or accept.
    pub owner: Option<Task>,
    pub closed_by: Option<ClosedBy>,
    /// The segment a sent reset answered.
    pub segment: Option<Segment>,
    /// Substate of a time-wait socket (`FIN_WAIT2` for an orphaned connection).
    pub tw_substate: Option<TcpState>,
    pub linger_zero: bool,
    pub full_socket: bool,
    pub has_socket_file: bool,
    pub all_sent_acked: bool,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Inode of the socket's file, when the owner map had no owner.
    pub socket_ino: Option<u64>,
    /// For a received reset: the other end, on this host, aborted the connection just before.
    pub peer_abort: Option<PeerAbort>,
    /// With `--pcap`: the segment a sent reset answered, or the packet a queue dropped.
    pub packet: Option<CapturedPacket>,
}

/// The other end of a connection, on this host, closed it with a reset: what the kernel
/// recorded at that close, so that the received reset is explained even when the sender's own
/// event was folded or lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAbort {
    pub closer: Task,
    pub linger_zero: bool,
    pub has_socket_file: bool,
}

/// One event as the kernel reported it, before attribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub kind: EventKind,
    pub time: jiff::Timestamp,
    /// CLOCK_MONOTONIC nanoseconds from the kernel, for ordering and pairing events.
    pub ktime_ns: u64,
    /// The kernel's reason, where it gives one.
    pub reason: Option<Reason>,
    /// TCP state of the socket, None when there was no socket.
    pub state: Option<TcpState>,
    /// This host's end.
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub netns: Option<u64>,
    pub sock_cookie: Option<u64>,
    /// For queue drops: the queue's length and limit at the drop (or the interval's maximum).
    pub queue: Option<Queue>,
    /// For queue drops: how many drops this event stands for.
    pub drops: Option<u64>,
    /// For queue drops seen through a kernel counter: the counter and its increase.
    pub counter: Option<Counter>,
    /// For drops a listener sample found: their cause, known from the queue that overflowed.
    pub sampled_cause: Option<Cause>,
    pub kernel: KernelFacts,
    /// The kernel stack's id in the `STACKS` map, with `--stack`.
    pub stack_id: Option<u32>,
}

impl Decoded {
    /// The address family, from this host's end.
    pub fn family(&self) -> Option<Family> {
        self.local.map(|end| Family::of(end.addr))
    }

    /// Either end uses `port`.
    pub fn has_port(&self, port: u16) -> bool {
        [self.local, self.remote]
            .iter()
            .flatten()
            .any(|end| end.port == port)
    }
}

impl Decoded {
    /// An event of `kind` at `time` with nothing else known, to be filled in with struct update
    /// syntax.
    pub fn new(kind: EventKind, time: jiff::Timestamp, ktime_ns: u64) -> Self {
        Self {
            kind,
            time,
            ktime_ns,
            reason: None,
            state: None,
            local: None,
            remote: None,
            netns: None,
            sock_cookie: None,
            queue: None,
            drops: None,
            counter: None,
            sampled_cause: None,
            kernel: KernelFacts::default(),
            stack_id: None,
        }
    }
}

#[cfg(test)]
impl Decoded {
    /// An event of `kind` with nothing else known, for tests to fill in with struct update
    /// syntax.
    pub(crate) fn for_test(kind: EventKind) -> Self {
        Self::new(kind, jiff::Timestamp::UNIX_EPOCH, 0)
    }
}
