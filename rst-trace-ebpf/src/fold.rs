//! Folding: during a storm, the kernel counts the events of a key instead of sending each one.
//!
//! The first `FOLD_AFTER` events of a key in each second go to the ring buffer as usual; past
//! that, the event is only added to its key's count in one of two folded maps, with the first
//! such event kept whole as the key's sample. Userspace flips `FOLD_EPOCH` every second, so the
//! programs count into the other map while it reads and empties the one they left: no count is
//! lost between a read and a delete. A storm spread over many keys (a SYN flood with random
//! source addresses) makes more than `COARSE_AFTER` new keys a second on a CPU; past that, new
//! keys leave out the remote address and fold together (`coarse` 1), and past as many new keys
//! of those (a scan of many ports), the service port too (`coarse` 2). Every event takes exactly one way: the
//! ring buffer (where a full buffer counts it lost) or a folded count.

// Map keys and values are passed by reference on purpose: a copy of a 64-byte key (or a
// 368-byte value) would be built on the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use rst_trace_common::{
    Endpoints, FoldKey, FoldedEvents, MAX_FOLD_KEYS, MAX_RATE_KEYS, NO_SK_STATE, Packet, Rate,
    RawTracepoint, RecordKind, RecordWithPacket, facts,
};

/// The record being built, per CPU and nesting level: filled here, then sent or folded.
#[map]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(SCRATCH_LEVELS, 0);

/// A record being built: the folded-events value it becomes when it is folded, and, with
/// `--pcap`, the packet sent right behind its record (a [`RecordWithPacket`]) when it is not.
#[repr(C)]
pub(crate) struct Scratch {
    pub folded: FoldedEvents,
    pub packet: Packet,
}

// The record is the last part of `FoldedEvents`: record and packet lie as a `RecordWithPacket`.
const _: () = assert!(
    core::mem::offset_of!(Scratch, packet)
        == core::mem::offset_of!(FoldedEvents, record) + size_of::<RawTracepoint>()
        && size_of::<RecordWithPacket>() == size_of::<RawTracepoint>() + size_of::<Packet>()
);

/// Nesting levels of the record builders per CPU: process context, softirq, hardirq, NMI.
const SCRATCH_LEVELS: u32 = 4;

/// How deep the record builders are nested on this CPU now (the scratch value to use).
#[map]
pub(crate) static DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Events seen per key in the current second.
#[map]
static RATES: LruHashMap<FoldKey, Rate> = LruHashMap::with_max_entries(MAX_RATE_KEYS, 0);

/// New keys per CPU in the current second (`seen`), for the coarse keys: keys, and keys without
/// the remote address.
#[map]
static NEW_KEYS: PerCpuArray<Rate> = PerCpuArray::with_max_entries(2, 0);

/// Folded counts of even and odd epochs.
#[map]
static FOLDED_EVEN: HashMap<FoldKey, FoldedEvents> = HashMap::with_max_entries(MAX_FOLD_KEYS, 0);
#[map]
static FOLDED_ODD: HashMap<FoldKey, FoldedEvents> = HashMap::with_max_entries(MAX_FOLD_KEYS, 0);

/// Which folded map the programs count into (its low bit); userspace flips it every second.
#[map]
static FOLD_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// Events of a key sent per second before the rest are folded; 0: never fold.
#[unsafe(no_mangle)]
static FOLD_AFTER: u32 = 0;

/// New keys per CPU per second past which new keys leave out the remote address.
#[unsafe(no_mangle)]
static COARSE_AFTER: u32 = 0;

/// `net.ipv4.ip_local_port_range`, where the ephemeral end's port comes from.
#[unsafe(no_mangle)]
static EPHEMERAL_LOW: u16 = 32768;
#[unsafe(no_mangle)]
static EPHEMERAL_HIGH: u16 = 60999;

const NS_PER_SEC: u64 = 1_000_000_000;
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// The facts bits that causes are decided by (not `FROM_ARGS`, which says how the record was
/// made).
const CAUSE_FLAGS: u8 = facts::LINGER_ZERO
    | facts::HAS_SOCKET_FILE
    | facts::FULL_SOCKET
    | facts::SEGMENT
    | facts::ALL_SENT_ACKED
    | facts::REASON;

/// True when the event in `slot` was counted in a folded map and must not be sent. The record's
/// header and facts are complete; `ends` are its two ends (the facts' own, or read from the
/// socket where the classic tracepoints keep them in the raw record); `key` is zeroed.
#[inline(always)]
pub(crate) fn folded(slot: *mut FoldedEvents, ends: &Endpoints, key: &mut FoldKey) -> bool {
    let after = u64::from(global!(FOLD_AFTER));
    if after == 0 {
        return false;
    }
    // SAFETY: `slot` is this CPU's scratch value, complete but for the counts.
    let record = unsafe { &raw const (*slot).record };
    // SAFETY: as above.
    let now = unsafe { (*record).header.ktime_ns };
    let second = now / NS_PER_SEC;
    // SAFETY: as above.
    unsafe { fill_key(&*record, ends, key) };
    // The key itself; past COARSE_AFTER new keys a second, the key without the remote address
    // (a flood from many sources); past as many new keys of those, also without the service
    // port (a scan of many ports).
    if let Some(rate) = RATES.get_ptr_mut(&*key) {
        return fold_or_send(slot, key, rate, second, after, now);
    }
    if new_key_allowed(FINE, second) {
        remember(key, second);
        return false;
    }
    key.coarse = 1;
    // SAFETY: an 8-byte aligned member of the 8-byte aligned key.
    unsafe { crate::read::zero(&raw mut key.remote_addr) };
    if let Some(rate) = RATES.get_ptr_mut(&*key) {
        return fold_or_send(slot, key, rate, second, after, now);
    }
    if new_key_allowed(COARSE, second) {
        remember(key, second);
        return false;
    }
    key.coarse = 2;
    key.service_port = 0;
    if let Some(rate) = RATES.get_ptr_mut(&*key) {
        return fold_or_send(slot, key, rate, second, after, now);
    }
    remember(key, second);
    false
}

/// Counts the event in its key's second: true (folded) past the first `after`.
#[inline(always)]
fn fold_or_send(
    slot: *mut FoldedEvents,
    key: &FoldKey,
    rate: *mut Rate,
    second: u64,
    after: u64,
    now: u64,
) -> bool {
    // SAFETY: a map value; concurrent CPUs may let a few more or fewer events through in a
    // second, but each event still takes exactly one way.
    let send = unsafe { within_rate(rate, second, after) };
    !send && count(slot, key, now)
}

/// A new key, its first event of this second sent.
#[inline(always)]
fn remember(key: &FoldKey, second: u64) {
    let _ = RATES.insert(
        key,
        &Rate {
            window: second,
            seen: 1,
        },
        0,
    );
}

/// Counts one more event of the key's second; true while it is within the first `after`.
///
/// # Safety
/// `rate` must point at a map value.
#[inline(always)]
unsafe fn within_rate(rate: *mut Rate, second: u64, after: u64) -> bool {
    // SAFETY: per the caller.
    unsafe {
        if (*rate).window != second {
            (*rate).window = second;
            (*rate).seen = 1;
            return true;
        }
        let seen = (*rate).seen;
        (*rate).seen = seen + 1;
        seen < after
    }
}

/// `NEW_KEYS` slots: new keys, and new keys without the remote address.
const FINE: u32 = 0;
const COARSE: u32 = 1;

/// One more new key of a kind on this CPU this second; false past `COARSE_AFTER`.
#[inline(always)]
fn new_key_allowed(kind: u32, second: u64) -> bool {
    let Some(rate) = NEW_KEYS.get_ptr_mut(kind) else {
        return true;
    };
    let limit = u64::from(global!(COARSE_AFTER));
    // SAFETY: this CPU's slot; no other writer while the program runs.
    unsafe { within_rate(rate, second, limit.max(1)) }
}

/// Adds the event to its key's count in the current epoch's map; false when the map is full
/// (the event is then sent on its own).
#[inline(always)]
fn count(slot: *mut FoldedEvents, key: &FoldKey, now: u64) -> bool {
    let odd = FOLD_EPOCH.get(0).is_some_and(|epoch| epoch & 1 == 1);
    let map = if odd { &FOLDED_ODD } else { &FOLDED_EVEN };
    if add(map, key, now) {
        return true;
    }
    // SAFETY: this CPU's scratch value: the key's first folded event becomes its sample.
    unsafe {
        (*slot).count = 1;
        (*slot).first_ns = now;
        (*slot).last_ns = now;
        match map.insert(key, &*slot, BPF_NOEXIST) {
            Ok(()) => true,
            // Another CPU inserted it first.
            Err(error) if error == -EEXIST => add(map, key, now),
            Err(_) => false,
        }
    }
}

#[inline(always)]
fn add(map: &HashMap<FoldKey, FoldedEvents>, key: &FoldKey, now: u64) -> bool {
    let Some(folded) = map.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a map value; the count is added atomically (a lock-prefixed add), the last time
    // is a plain store (the latest writer wins, all are within the same instant).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*folded).count, 1);
        (*folded).last_ns = now;
    }
    true
}

/// The key of a complete record: what its cause is decided by, where and whose it is, and the
/// service end's port.
#[inline(always)]
fn fill_key(record: &RawTracepoint, ends: &Endpoints, key: &mut FoldKey) {
    let facts = &record.facts;
    key.kind = record.header.kind;
    key.sk_state = facts.sk_state;
    key.tw_substate = facts.tw_substate;
    key.flags = facts.flags & CAUSE_FLAGS;
    key.tcp_flags = facts.tcp_flags;
    key.reason = if facts.flags & facts::REASON != 0 {
        facts.reason
    } else {
        0
    };
    key.netns = facts.netns;
    let whose = if facts.owner.tgid != 0 {
        &facts.owner
    } else {
        &facts.closed.closer
    };
    key.tgid = whose.tgid;
    key.cgroup_id = whose.cgroup_id;
    let state = u32::from(facts.sk_state);
    key.family = ends.family;
    crate::skb::copy_address(ends.local_addr.as_ptr(), &mut key.local_addr, 16);
    crate::skb::copy_address(ends.remote_addr.as_ptr(), &mut key.remote_addr, 16);
    let (local_port, remote_port) = (ends.local_port, ends.remote_port);
    let local_is_service = if facts.sk_state == NO_SK_STATE
        || state == offset!(states.listen)
        || state == offset!(states.new_syn_recv)
        || state == offset!(states.syn_recv)
        || key.kind == RecordKind::ResetSentNoSocket as u8
    {
        true
    } else if state == offset!(states.syn_sent) {
        false
    } else {
        match (ephemeral(local_port), ephemeral(remote_port)) {
            (true, false) => false,
            (false, true) => true,
            _ => local_port <= remote_port,
        }
    };
    key.service_local = u8::from(local_is_service);
    key.service_port = if local_is_service {
        local_port
    } else {
        remote_port
    };
}

#[inline(always)]
fn ephemeral(port: u16) -> bool {
    port >= global!(EPHEMERAL_LOW) && port <= global!(EPHEMERAL_HIGH)
}
