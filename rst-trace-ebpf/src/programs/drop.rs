//! Queue drops: `skb:kfree_skb` filtered in the kernel down to the queue-overflow reasons
//! userspace marked in `QUEUE_DROP_REASONS`.
//!
//! Kernel history behind the record layout userspace resolves (`KernelOffsets`):
//! - 5.17, commit c504e5c2f964 ("net: skb: introduce kfree_skb_reason()"): the record gains
//!   `enum skb_drop_reason reason`; without it this program reports nothing.
//! - 6.11, commit c53795d48ee8 ("net: add rx_sk to trace_kfree_skb"): the record gains `rx_sk`,
//!   the socket the packet was meant for; before it, `skb->sk` is the best guess.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use rst_trace_common::{MAX_DROP_REASONS, RecordKind};

use crate::QUEUE_DROP_REASONS;
use crate::read::{ctx_field, field};
use crate::record::emit;

/// Packets the kernel dropped; only queue overflows go further. The reason is the first thing
/// read: every other drop costs one load and a bit test.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let Some(reason) = ctx_field::<u32>(&ctx, offset!(kfree_skb_reason)) else {
        return 0;
    };
    let reason = reason as usize;
    if reason >= MAX_DROP_REASONS {
        return 0;
    }
    let word = global!(QUEUE_DROP_REASONS[reason / 64]);
    if word & (1 << (reason % 64)) == 0 {
        return 0;
    }
    let skb = ctx_field::<u64>(&ctx, offset!(kfree_skb_skbaddr)).unwrap_or(0);
    // 6.11+ names the socket the packet was meant for; before that, the skb may still hold it.
    let sk = match ctx_field::<u64>(&ctx, offset!(kfree_skb_rx_sk)) {
        Some(sk) if sk != 0 => sk,
        _ => field::<u64>(skb, offset!(skb_sk)).unwrap_or(0),
    };
    emit(&ctx, RecordKind::QueueDrop, sk, skb);
    0
}
