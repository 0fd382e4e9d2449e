//! Building and sending one ring buffer record: the `--pid` filter, the header, the facts read
//! from the socket and the segment, the raw tracepoint record, folding (see [`crate::fold`]),
//! the wakeup decision and the output (or the record counted in `LOST`). Every reset and drop
//! program ends here.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
    programs::{BtfTracePointContext, tracing::StackIdContext},
};
use aya_log_ebpf::warn;
use rst_trace_common::{
    ArgsRecord, ConnectionKey, Endpoints, FoldKey, FoldedEvents, NO_SK_STATE, Packet, RAW_LEN,
    RawTracepoint, RecordKind, RecordWithPacket, facts,
};

use crate::read::{Access, Direct, Probe, copy_in, zero};
use crate::skb::{Segment, copy_packet, segment_ends, segment_facts};
use crate::sock::{
    SockHead, connection_key, local_end, netns_of_sock, queue_depth, socket_ends, socket_facts,
};
use crate::task::{current_cgroup_id, current_comm, now};
use crate::{
    CLOSED, EVENTS, FILTER_BY_PID, LOST, OWNERS, PCAP, PIDS, RECORD_STACKS, STACKS, WAKEUP_BYTES,
};
use crate::{filter, fold};

/// bpf_get_stackid: replace a different stack that hashes to the same bucket.
const BPF_F_REUSE_STACKID: u64 = 1 << 10;

const BPF_RB_AVAIL_DATA: u64 = 0;
/// Records (with their 8-byte ring buffer headers) past the wakeup mark within which a record
/// wakes the reader.
const WAKEUP_WINDOW: u64 = 4 * (size_of::<RawTracepoint>() as u64 + 8);
pub const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// A classic tracepoint's event: the raw record copied verbatim, sockets read with probe reads.
#[inline(always)]
pub fn emit<C: EbpfContext + StackIdContext>(ctx: &C, kind: RecordKind, sk: u64, skb: u64) {
    emit_with::<C, Probe, RawTracepoint>(ctx, kind, sk, skb, Raw::Copy);
}

/// A BTF tracepoint's event: no raw record, everything in the facts.
#[inline(always)]
pub fn emit_from_args(
    ctx: &BtfTracePointContext,
    kind: RecordKind,
    sk: u64,
    skb: u64,
    reason: Option<u32>,
) {
    emit_with::<_, Direct, ArgsRecord>(ctx, kind, sk, skb, Raw::FromArgs(reason));
}

/// What goes into a record's `raw` part.
#[derive(Clone, Copy)]
pub enum Raw {
    /// The tracepoint's record, verbatim.
    Copy,
    /// Nothing: a probe has no record.
    None,
    /// Nothing either; the facts stand for the record (BTF tracepoints), with the reason.
    FromArgs(Option<u32>),
}

#[inline(always)]
pub fn emit_with<C: EbpfContext + StackIdContext, A: Access, R: 'static>(
    ctx: &C,
    kind: RecordKind,
    sk: u64,
    skb: u64,
    raw_kind: Raw,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if global!(FILTER_BY_PID) != 0 && !pid_filter_keeps((pid_tgid >> 32) as u32, sk) {
        filter::count_filtered();
        return;
    }
    // `R` is the whole record, or (BTF tracepoints) the record without its raw part.
    const {
        assert!(
            size_of::<R>() == size_of::<RawTracepoint>()
                || size_of::<R>() == size_of::<ArgsRecord>()
        )
    };
    // The record is built in a scratch value of this CPU, then sent or folded: a folded event
    // takes no room in the ring buffer, however long the reader waits for a CPU. A softirq can
    // run one of these programs in the middle of another on the same CPU (a received segment
    // interrupting the reset a close() sends), so each nesting level has its own value.
    let Some(depth) = fold::DEPTH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's counter; a program that interrupts this one restores it before this
    // one resumes.
    let level = unsafe { *depth };
    let Some(scratch) = fold::SCRATCH.get_ptr_mut(level) else {
        // Nested deeper than there are scratch values: never seen, but counted, not silent.
        count_lost();
        return;
    };
    // SAFETY: as above.
    unsafe { *depth = level + 1 };
    // SAFETY: this CPU's scratch value of this nesting level.
    let (slot, packet) = unsafe { (&raw mut (*scratch).folded, &raw mut (*scratch).packet) };
    build_and_send::<C, A, R>(ctx, kind, sk, skb, raw_kind, pid_tgid, slot, packet);
    // SAFETY: as above.
    unsafe { *depth = level };
}

/// Builds the record in `slot`, then sends it, folds it or drops it (`--port`, `--netns`).
/// Header and facts are laid out alike in both record types; `raw` is touched only when there
/// is one. With `--pcap`, a record sent about a packet carries it (read into `packet`, which
/// follows `slot`'s record).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn build_and_send<C: EbpfContext + StackIdContext, A: Access, R: 'static>(
    ctx: &C,
    kind: RecordKind,
    sk: u64,
    skb: u64,
    raw_kind: Raw,
    pid_tgid: u64,
    slot: *mut FoldedEvents,
    packet: *mut Packet,
) {
    // SAFETY: this CPU's scratch value of this nesting level; nothing else writes it while
    // the program runs.
    let record = unsafe { &raw mut (*slot).record };
    let record_stacks = global!(RECORD_STACKS) != 0;
    let listen = offset!(states.listen);
    // One read of the socket's first bytes (ports, family, state, IPv4 addresses), and the
    // segment the reset answers (none for resets the kernel sends on its own: close, timers).
    zeroed!(head: SockHead<A>);
    head.fill(sk);
    zeroed!(segment: Segment);
    segment.fill::<A>(skb);
    // SAFETY: `record` points at this CPU's scratch record, 8-byte aligned; header and facts
    // are zeroed first and every field is written before it is sent.
    // Facts are filled in place: the BPF stack is too small for a second copy.
    unsafe {
        zero(&raw mut (*record).header);
        zero(&raw mut (*record).facts);
        let header = &mut (*record).header;
        header.kind = kind as u8;
        header.cpu = bpf_get_smp_processor_id();
        header.ktime_ns = now();
        header.pid_tgid = pid_tgid;
        header.cgroup_id = current_cgroup_id::<A>();
        current_comm::<A>(&mut header.comm);
        let facts = &mut (*record).facts;
        facts.sk_state = NO_SK_STATE;
        facts.stack_id = -1;
        if record_stacks {
            // Identical stacks share an id; a colliding different stack replaces the old one.
            facts.stack_id = ctx
                .get_stackid(&STACKS, BPF_F_REUSE_STACKID)
                .map_or(-1, i64::from);
        }
        if sk != 0 {
            socket_facts(sk, head, kind, facts);
        }
        segment_facts::<A>(segment, sk == 0, facts);
        let from_args = matches!(raw_kind, Raw::FromArgs(_));
        let listener = sk != 0 && u32::from(facts.sk_state) == listen;
        if from_args {
            // In the record's place: this socket's ends (a listener has no peer; the segment's
            // source stands for it below), the reason and the socket.
            facts.flags |= facts::FROM_ARGS;
            facts.sk = sk;
            if let Raw::FromArgs(Some(reason)) = raw_kind {
                facts.reason = reason;
                facts.flags |= facts::REASON;
            }
            // As tcp_send_reset records them (6.10+): a full socket's own ends; the segment's
            // for a time-wait or request socket, or none.
            let full = facts.flags & facts::FULL_SOCKET != 0;
            if sk != 0 && !listener && (full || skb == 0) {
                socket_ends(sk, head, full, &mut facts.endpoints);
            }
        }
        // The segment's ends, where the record has none: drops (their tracepoint carries no
        // addresses), probes (no record), and a listener's reset of a stray segment (the
        // listener has no peer; the segment's source is the remote end). The queue the segment
        // met goes with them.
        if matches!(kind, RecordKind::QueueDrop | RecordKind::ResetSentNoSocket)
            || (kind == RecordKind::ResetSent
                && (listener || (from_args && facts.endpoints.family == 0)))
        {
            if sk != 0 {
                queue_depth(sk, facts);
                local_end(sk, head, &mut facts.endpoints);
            }
            segment_ends(segment, &mut facts.endpoints);
        }
        // The tracepoint record sits at the start of a per-CPU buffer of several KiB, so reading
        // RAW_LEN bytes never runs past it even when the record itself is shorter. A probe has
        // no record: everything is in the facts.
        let raw = &raw mut (*record).raw;
        match raw_kind {
            Raw::Copy => {
                if !copy_in(raw.cast(), RAW_LEN, ctx.as_ptr() as u64) {
                    warn!(ctx, "rst-trace: could not copy a tracepoint record");
                }
            }
            Raw::None => zero(raw),
            // An ArgsRecord: there is no raw part.
            Raw::FromArgs(_) => {}
        }
    }
    // `--port`, `--netns` and `--cgroup`, then folding: past its key's first events this
    // second, the event is only counted.
    zeroed!(key: FoldKey);
    // SAFETY: the scratch record is complete.
    let facts = unsafe { &(*record).facts };
    if !filter::keeps_cgroup(facts) {
        filter::count_filtered();
        return;
    }
    let sent = if facts.endpoints.family != 0 {
        if !filter::keeps(&facts.endpoints, facts.netns) {
            filter::count_filtered();
            return;
        }
        !fold::folded(slot, &facts.endpoints, key)
    } else {
        // Classic tracepoints keep the ends in the raw record: the socket's, or the segment's
        // when no socket matched.
        zeroed!(ends: Endpoints);
        if sk != 0 {
            socket_ends(sk, head, facts.flags & facts::FULL_SOCKET != 0, ends);
        } else {
            segment_ends(segment, ends);
        }
        if !filter::keeps(ends, facts.netns) {
            filter::count_filtered();
            return;
        }
        !fold::folded(slot, ends, key)
    };
    if !sent {
        return;
    }
    // `--pcap`: the segment a reset answered, or the dropped packet, behind the record. Only
    // for records sent one by one: a folded event writes no packet. A received reset has none.
    // SAFETY: `packet` is this CPU's scratch packet.
    let with_packet = global!(PCAP) != 0
        && skb != 0
        && kind != RecordKind::ResetReceived
        && unsafe { copy_packet::<A>(skb, packet) };
    let size = if with_packet {
        if matches!(raw_kind, Raw::FromArgs(_)) {
            // SAFETY: the scratch record's raw part, 8-byte aligned; sent whole with the packet.
            unsafe { zero(&raw mut (*record).raw) };
        }
        size_of::<RecordWithPacket>()
    } else {
        size_of::<R>()
    };
    // Wake the reader once per fill-up: when this record takes the data waiting past an
    // eighth of the buffer (a window of a few records, as other CPUs may write between this
    // query and the output). Waking on every record above the mark cost an interrupt per
    // record at storm rates, exactly when the reader is busy anyway; a wakeup per record below
    // it cost more than the record. Userspace also drains on a short timer, so quiet events
    // and a missed crossing still go out.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA) + size as u64 + 8;
    let mark = u64::from(global!(WAKEUP_BYTES));
    let flags = if waiting > mark && waiting <= mark + WAKEUP_WINDOW {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: the scratch record is complete; `R` is the whole record or its first part; with
    // a packet, the record and the packet that follows it (see `fold::Scratch`).
    let output = unsafe {
        if with_packet {
            EVENTS.output::<RecordWithPacket>(&*record.cast::<RecordWithPacket>(), flags)
        } else {
            EVENTS.output::<R>(&*record.cast::<R>(), flags)
        }
    };
    if output.is_err() {
        count_lost();
    }
}

/// `--pid`: the running task, the socket's owner, or the process that closed the connection.
#[inline(always)]
fn pid_filter_keeps(tgid: u32, sk: u64) -> bool {
    if pid_kept(tgid) {
        return true;
    }
    if sk == 0 {
        return false;
    }
    // SAFETY: the values are read at once.
    if unsafe { OWNERS.get(sk) }.is_some_and(|owner| pid_kept(owner.tgid)) {
        return true;
    }
    zeroed!(key: ConnectionKey);
    zeroed!(head: SockHead<Probe>);
    head.fill(sk);
    connection_key(sk, head, netns_of_sock::<Probe>(sk), key)
        // SAFETY: the value is read at once.
        && unsafe { CLOSED.get(key) }.is_some_and(|closed| pid_kept(closed.closer.tgid))
}

#[inline(always)]
fn pid_kept(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    tgid != 0 && unsafe { PIDS.get(tgid) }.is_some()
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *lost += 1 };
    }
}
