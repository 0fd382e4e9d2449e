//! Resets this host sent or received: `tcp:tcp_send_reset` and `tcp:tcp_receive_reset` as
//! classic tracepoints (the raw record copied) and as BTF tracepoints (`*_btf`, arguments
//! only), and the kprobes that see the resets older kernels send without a socket.
//!
//! Kernel history behind the layouts userspace resolves (`KernelOffsets`,
//! `SEND_RESET_REASON_ARG`):
//! - 6.10, commit 19822a980e19 ("trace: tcp: fully support trace_tcp_send_reset"): the
//!   tracepoint fires for resets sent with no socket too (`skaddr` NULL); before it such resets
//!   are seen only by the kprobes below.
//! - 6.10, commit b533fb9cf4f7 ("rstreason: make it work in trace world"): `tcp_send_reset`
//!   takes `enum sk_rst_reason reason` as its third argument and records it.

use aya_ebpf::{
    macros::{btf_tracepoint, kprobe, tracepoint},
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};
use rst_trace_common::{RawTracepoint, RecordKind};

use crate::SEND_RESET_REASON_ARG;
use crate::read::{Probe, ctx_field};
use crate::record::{Raw, emit, emit_from_args, emit_with};

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let sk = ctx_field::<u64>(&ctx, offset!(send_reset_skaddr)).unwrap_or(0);
    let skb = ctx_field::<u64>(&ctx, offset!(send_reset_skbaddr)).unwrap_or(0);
    emit(&ctx, RecordKind::ResetSent, sk, skb);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let sk = ctx_field::<u64>(&ctx, offset!(receive_reset_skaddr)).unwrap_or(0);
    emit(&ctx, RecordKind::ResetReceived, sk, 0);
    0
}

/// The same two tracepoints as BTF tracepoints, used where the kernel allows them (5.5+ with BTF):
/// the arguments are typed pointers, so the verifier lets the program read the socket and the
/// segment's `sk_buff` with plain loads (fault-safe, no helper call) instead of a
/// `bpf_probe_read_kernel` per field, which costs tens of nanoseconds each. There is no raw
/// record to copy: the reason, state, cookie and both ends go into the facts.
///
/// `trace_tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason
/// reason)`: arg0 = sk (NULL when no socket matched), arg1 = skb (NULL for resets the kernel
/// sends on its own), arg2 = reason (6.10+ only, see the module header).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    // The verifier knows the global's value and never looks at a third argument that the
    // running kernel's tracepoint does not have.
    let reason = (global!(SEND_RESET_REASON_ARG) != 0).then(|| ctx.arg::<u32>(2));
    emit_from_args(&ctx, RecordKind::ResetSent, sk, skb, reason);
    0
}

/// `trace_tcp_receive_reset(struct sock *sk)`: arg0 = sk.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    emit_from_args(&ctx, RecordKind::ResetReceived, sk, 0, None);
    0
}

/// Kernels before 6.10 call tcp_send_reset's tracepoint only with a socket: a SYN to a closed
/// port goes unseen. These probes see the resets sent without one (and only those, so nothing
/// is reported twice); userspace attaches them only on such kernels.
///
/// `static void tcp_v4_send_reset(const struct sock *sk, struct sk_buff *skb)`: arg0 = sk
/// (NULL when no socket matched), arg1 = skb, the segment answered. 6.10 appended
/// `enum sk_rst_reason reason` (commit 6be49deaa095, "rstreason: prepare for passive reset"),
/// which these probes do not read.
#[kprobe]
pub fn tcp_v4_send_reset(ctx: ProbeContext) -> u32 {
    reset_without_socket(&ctx);
    0
}

/// `static void tcp_v6_send_reset(const struct sock *sk, struct sk_buff *skb)`: the same
/// arguments as `tcp_v4_send_reset`.
#[kprobe]
pub fn tcp_v6_send_reset(ctx: ProbeContext) -> u32 {
    reset_without_socket(&ctx);
    0
}

#[inline(always)]
fn reset_without_socket(ctx: &ProbeContext) {
    // A missing argument counts as a socket: nothing is reported.
    let sk: u64 = ctx.arg(0).unwrap_or(1);
    let skb: u64 = ctx.arg(1).unwrap_or(0);
    if sk == 0 && skb != 0 {
        emit_with::<_, Probe, RawTracepoint>(ctx, RecordKind::ResetSentNoSocket, 0, skb, Raw::None);
    }
}
