//! Types shared by the kernel programs and the userspace loader.
//!
//! Every record in the ring buffer starts with the same [`EventHeader`]; the header's `kind` says
//! what follows. The kernel side copies the tracepoint's raw record verbatim into [`RawTracepoint`]
//! and userspace decodes it with the field offsets it read from tracefs, so one kernel program
//! serves every tracepoint layout (the 6.10+ `tcp_send_reset` with a reason and sockaddr fields, and
//! the older one with separate ports and family).
#![no_std]

/// Bytes of the tracepoint record copied into each event. The largest record we read
/// (`tcp:tcp_send_reset` on 6.10+) is 88 bytes; userspace refuses a layout whose fields end later.
pub const RAW_LEN: usize = 96;

/// Length of a task's `comm`, as the kernel defines `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Entries in the kernel-side `--pid` filter map.
pub const MAX_PID_FILTER: u32 = 64;

/// What a record in the ring buffer describes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// `tcp:tcp_send_reset` fired: this host sent a RST.
    ResetSent = 1,
    /// `tcp:tcp_receive_reset` fired: a socket on this host received a RST.
    ResetReceived = 2,
}

impl RecordKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::ResetSent),
            2 => Some(Self::ResetReceived),
            _ => None,
        }
    }
}

/// Prefix of every ring buffer record. `#[repr(C)]` with explicit padding: no hidden bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// A [`RecordKind`] as u8.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// CPU the program ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC when the event fired.
    pub ktime_ns: u64,
    /// `bpf_get_current_pid_tgid()`: the task that was running, which in softirq is not the
    /// socket's owner.
    pub pid_tgid: u64,
    /// cgroup v2 id of the running task.
    pub cgroup_id: u64,
    /// comm of the running task, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// Value of [`RawTracepoint::sk_state`] when no socket state was read.
pub const NO_SK_STATE: u8 = 0xff;

/// Value of an offset global that userspace could not resolve: the program skips that read.
pub const NO_OFFSET: u32 = u32::MAX;

/// A tracepoint record copied verbatim, behind the common header, with what the program read
/// from the socket the record points at (`skaddr`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawTracepoint {
    pub header: EventHeader,
    /// `sk->__sk_common.skc_state`, or [`NO_SK_STATE`].
    pub sk_state: u8,
    pub _pad: [u8; 7],
    /// `sk->__sk_common.skc_cookie`; 0 when the socket never had a cookie generated.
    pub sk_cookie: u64,
    pub raw: [u8; RAW_LEN],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for EventHeader {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RawTracepoint {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<EventHeader>(), 48);
        assert_eq!(core::mem::size_of::<RawTracepoint>(), 48 + 16 + RAW_LEN);
        // The kernel's ring buffer aligns records to 8 bytes; keep the record a multiple of it.
        assert_eq!(core::mem::size_of::<RawTracepoint>() % 8, 0);
    }

    #[test]
    fn record_kind_round_trips() {
        for kind in [RecordKind::ResetSent, RecordKind::ResetReceived] {
            assert_eq!(RecordKind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(RecordKind::from_u8(0), None);
    }
}
