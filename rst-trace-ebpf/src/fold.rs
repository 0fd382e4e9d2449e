//! Folding: during a storm, the kernel counts the events of a key instead of sending each one.
//!
//! The first `FOLD_AFTER` events of a key in each second go to the ring buffer as usual; past
//! that, the event is only counted: per CPU in one of two count maps, with the key's first such
//! event kept whole as its sample in one of two sample maps. Userspace flips `FOLD_EPOCH` every
//! second, so the programs count into the other maps while it reads and empties the ones they
//! left: no count is lost between a read and a delete. A storm spread over many keys (a SYN
//! flood with random source addresses) makes more than `COARSE_AFTER` new keys a second on a
//! CPU; past that, new keys leave out the remote address and fold together (`coarse` 1), and
//! past as many new keys of those (a scan of many ports), the service port too (`coarse` 2).
//! Every event takes exactly one way: the ring buffer (where a full buffer counts it lost) or a
//! folded count.
//!
//! Cost: CPUs folding one storm must not write the same cache line for every event (each such
//! write moves the line between CPUs, which cost more than the rest of the program). So a key's
//! rate is written only for its first `FOLD_AFTER` events of a second and only read after that,
//! and the counts are per CPU. A CPU's storm of each record kind is counted in a slot of its own
//! (`HOT`), where the event's key is compared with the slot's instead of being hashed into the
//! rate and count maps; the slot's count moves to the count map when another key takes it.

// Map keys and values are passed by reference on purpose: a copy of a 64-byte key (or a
// 368-byte value) would be built on the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use rst_trace_common::{
    Endpoints, FoldCount, FoldKey, FoldedEvents, HOT_SLOTS, HotCount, MAX_FOLD_KEYS, MAX_RATE_KEYS,
    NO_SK_STATE, Packet, Rate, RawTracepoint, RecordKind, RecordWithPacket, facts,
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

/// Each folded key's sample (its first folded event) of even and odd epochs; the `count` and
/// times in it are unused (see `COUNTS_*`).
#[map]
static FOLDED_EVEN: HashMap<FoldKey, FoldedEvents> = HashMap::with_max_entries(MAX_FOLD_KEYS, 0);
#[map]
static FOLDED_ODD: HashMap<FoldKey, FoldedEvents> = HashMap::with_max_entries(MAX_FOLD_KEYS, 0);

/// Each folded key's count per CPU, of even and odd epochs. A key has a count only once its
/// sample is in the epoch's sample map.
#[map]
static COUNTS_EVEN: PerCpuHashMap<FoldKey, FoldCount> =
    PerCpuHashMap::with_max_entries(MAX_FOLD_KEYS, 0);
#[map]
static COUNTS_ODD: PerCpuHashMap<FoldKey, FoldCount> =
    PerCpuHashMap::with_max_entries(MAX_FOLD_KEYS, 0);

/// Each CPU's hot counts: per epoch (`HOT_SLOTS` apart), one key per record kind counted here
/// without a map lookup (see [`HotCount`]); other keys of the kind go to the count maps.
#[map]
static HOT: PerCpuArray<HotCount> = PerCpuArray::with_max_entries(2 * HOT_SLOTS, 0);

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
    let odd = FOLD_EPOCH.get(0).is_some_and(|epoch| epoch & 1 == 1);
    let hot = HOT.get_ptr_mut(hot_slot(odd, key.kind));
    // The storm's own key on this CPU, already past its rate this second: counted in its slot,
    // with no map touched.
    if let Some(hot) = hot {
        // SAFETY: this CPU's slot; no other writer while the program runs.
        unsafe {
            if (*hot).count.count != 0 && (*hot).second == second && same_key(&(*hot).key, key) {
                (*hot).count.count += 1;
                (*hot).count.last_ns = now;
                return true;
            }
        }
    }
    // The key itself; past COARSE_AFTER new keys a second, the key without the remote address
    // (a flood from many sources); past as many new keys of those, also without the service
    // port (a scan of many ports). One way out to the counting below, so that its code (and
    // the verifier's work at load) is there once.
    let Some(rate) = key_rate(key, second) else {
        return false;
    };
    fold_or_send(slot, key, rate, second, after, now, odd, hot)
}

/// The rate of the key, or of the coarser key it becomes during a flood of new keys; `None`
/// for a new key, whose first event is sent.
#[inline(always)]
fn key_rate(key: &mut FoldKey, second: u64) -> Option<*mut Rate> {
    if let Some(rate) = RATES.get_ptr_mut(&*key) {
        return Some(rate);
    }
    if new_key_allowed(FINE, second) {
        remember(key, second);
        return None;
    }
    key.coarse = 1;
    // SAFETY: an 8-byte aligned member of the 8-byte aligned key.
    unsafe { crate::read::zero(&raw mut key.remote_addr) };
    if let Some(rate) = RATES.get_ptr_mut(&*key) {
        return Some(rate);
    }
    if new_key_allowed(COARSE, second) {
        remember(key, second);
        return None;
    }
    key.coarse = 2;
    key.service_port = 0;
    let rate = RATES.get_ptr_mut(&*key);
    if rate.is_none() {
        remember(key, second);
    }
    rate
}

/// Counts the event in its key's second: true (folded) past the first `after`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fold_or_send(
    slot: *mut FoldedEvents,
    key: &FoldKey,
    rate: *mut Rate,
    second: u64,
    after: u64,
    now: u64,
    odd: bool,
    hot: Option<*mut HotCount>,
) -> bool {
    // SAFETY: a map value; concurrent CPUs may let a few more or fewer events through in a
    // second, but each event still takes exactly one way.
    let send = unsafe { within_rate(rate, second, after) };
    !send && count(slot, key, now, second, odd, hot)
}

/// The hot slot of a record kind in an epoch.
#[inline(always)]
fn hot_slot(odd: bool, kind: u8) -> u32 {
    u32::from(kind) % HOT_SLOTS + if odd { HOT_SLOTS } else { 0 }
}

/// Whether two keys are equal, compared as eight words.
#[inline(always)]
fn same_key(a: *const FoldKey, b: *const FoldKey) -> bool {
    const { assert!(size_of::<FoldKey>() == 64 && align_of::<FoldKey>() == 8) };
    let (a, b) = (a.cast::<u64>(), b.cast::<u64>());
    let mut differ = 0;
    for i in 0..8 {
        // SAFETY: both are 8-byte aligned keys of eight words.
        differ |=
            unsafe { core::ptr::read_volatile(a.add(i)) ^ core::ptr::read_volatile(b.add(i)) };
    }
    differ == 0
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
/// Past them it only reads: the value may be shared by every CPU in the storm.
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
        if seen >= after {
            return false;
        }
        (*rate).seen = seen + 1;
        true
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

/// Adds the event to its key's count on this CPU in the current epoch: in the kind's hot slot
/// when the slot holds this key or is free, else in the count map; the key's sample first where
/// this CPU has not counted the key yet. False when a map is full (the event is then sent on its
/// own).
#[inline(always)]
fn count(
    slot: *mut FoldedEvents,
    key: &FoldKey,
    now: u64,
    second: u64,
    odd: bool,
    hot: Option<*mut HotCount>,
) -> bool {
    let (samples, counts) = if odd {
        (&FOLDED_ODD, &COUNTS_ODD)
    } else {
        (&FOLDED_EVEN, &COUNTS_EVEN)
    };
    if let Some(hot) = hot {
        // SAFETY: this CPU's slot; no other writer while the program runs. Userspace empties
        // it only after the epoch has moved on.
        unsafe {
            if (*hot).count.count != 0 && same_key(&(*hot).key, key) {
                (*hot).count.count += 1;
                (*hot).count.last_ns = now;
                (*hot).second = second;
                return true;
            }
            // A free slot, or one whose key has not folded this second (a process that moved
            // to another CPU): its counts go to the count map and the slot to this key.
            let free = (*hot).count.count == 0;
            if free || (*hot).second != second {
                if !has_sample(samples, slot, key) {
                    return false;
                }
                if free || add_count(counts, &(*hot).key, &(*hot).count) {
                    crate::read::copy(&raw mut (*hot).key, key);
                    (*hot).count.first_ns = now;
                    (*hot).count.last_ns = now;
                    (*hot).second = second;
                    (*hot).count.count = 1;
                    return true;
                }
            }
        }
    }
    if let Some(mine) = counts.get_ptr_mut(key) {
        // SAFETY: this CPU's value of the key; no other writer while the program runs.
        unsafe {
            if (*mine).count == 0 {
                // Another CPU made the key this epoch: this CPU's first event of it.
                if !has_sample(samples, slot, key) {
                    return false;
                }
                (*mine).first_ns = now;
            }
            (*mine).count += 1;
            (*mine).last_ns = now;
        }
        return true;
    }
    if !has_sample(samples, slot, key) {
        return false;
    }
    let first = FoldCount {
        count: 1,
        first_ns: now,
        last_ns: now,
    };
    match counts.insert(key, &first, BPF_NOEXIST) {
        Ok(()) => true,
        // Another CPU made the key just now: this CPU's value of it is still empty.
        Err(error) if error == -EEXIST => match counts.get_ptr_mut(key) {
            Some(mine) => {
                // SAFETY: as above.
                unsafe {
                    (*mine).count += 1;
                    if (*mine).first_ns == 0 {
                        (*mine).first_ns = now;
                    }
                    (*mine).last_ns = now;
                }
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

/// Adds a hot slot's count to its key's count on this CPU in the count map; false when the map
/// is full (the slot then keeps it).
#[inline(always)]
fn add_count(counts: &PerCpuHashMap<FoldKey, FoldCount>, key: &FoldKey, hot: &FoldCount) -> bool {
    let merge = |mine: *mut FoldCount| {
        // SAFETY: this CPU's value of the key; no other writer while the program runs.
        unsafe { (*mine).add(hot) };
        true
    };
    if let Some(mine) = counts.get_ptr_mut(key) {
        return merge(mine);
    }
    match counts.insert(key, hot, BPF_NOEXIST) {
        Ok(()) => true,
        Err(error) if error == -EEXIST => counts.get_ptr_mut(key).is_some_and(merge),
        Err(_) => false,
    }
}

/// Whether the key has its sample this epoch: another CPU's, or this event, stored now.
#[inline(always)]
fn has_sample(
    samples: &HashMap<FoldKey, FoldedEvents>,
    slot: *mut FoldedEvents,
    key: &FoldKey,
) -> bool {
    if samples.get_ptr(key).is_some() {
        return true;
    }
    // SAFETY: this CPU's scratch value; the counts in it are not used by userspace.
    match samples.insert(key, unsafe { &*slot }, BPF_NOEXIST) {
        Ok(()) => true,
        Err(error) => error == -EEXIST,
    }
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
