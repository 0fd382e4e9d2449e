//! Benchmark aid, not part of tracing: `cargo xtask bench` loads this program alone (through the
//! hidden `rst-trace bench-reference` command) to measure what the least a reset tracer must do
//! costs on this kernel, and holds `tcp_send_reset` to a multiple of it. rst-trace itself never
//! loads or attaches it.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::BENCH_EVENTS;
use crate::read::ctx_field;
use crate::record::BPF_RB_NO_WAKEUP;

/// Bytes the reference program submits per reset.
const BENCH_RECORD_LEN: usize = 64;

/// The minimal reset tracer: reads the same two record fields as `tcp_send_reset` (at the same
/// tracefs offsets) and submits a 64-byte record without waking the reader (which drains on a
/// timer), so that what is timed is the program's own work. Nothing else.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn bench_reference(ctx: TracePointContext) -> u32 {
    let sk = ctx_field::<u64>(&ctx, offset!(send_reset_skaddr)).unwrap_or(0);
    let skb = ctx_field::<u64>(&ctx, offset!(send_reset_skbaddr)).unwrap_or(0);
    if let Some(mut entry) = BENCH_EVENTS.reserve::<[u64; BENCH_RECORD_LEN / 8]>(0) {
        let mut record = [0u64; BENCH_RECORD_LEN / 8];
        record[0] = sk;
        record[1] = skb;
        entry.write(record);
        entry.submit(BPF_RB_NO_WAKEUP);
    }
    0
}
