//! `--port`, `--netns` and `--cgroup` in the kernel: an event whose ends use none of the ports,
//! that happened in none of the namespaces, or that belongs to no process of the cgroups, is
//! dropped before it is folded or sent, so a storm the operator filtered out costs only this
//! check. (`--pid` is checked earlier, in `record::emit_with`, from the running task and the
//! socket's owner.) Every event dropped here is counted in `FILTERED`. Userspace checks the same
//! filters again on the attributed event: the kernel keeps every event userspace might keep.

use aya_ebpf::{
    macros::map,
    maps::{CgroupArray, HashMap, LruHashMap, PerCpuArray},
};
use rst_trace_common::{
    Endpoints, MAX_CGROUP_FILTER, MAX_KEPT_CGROUPS, MAX_NETNS_FILTER, MAX_PORT_FILTER, Owner,
    SocketFacts,
};

/// Ports kept when `FILTER_BY_PORT` is set.
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORT_FILTER, 0);

/// Network namespace inodes kept when `FILTER_BY_NETNS` is set.
#[map]
static NETNS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_NETNS_FILTER, 0);

/// The `--cgroup` directories, in slots `0..FILTER_BY_CGROUP`.
#[map]
static CGROUPS: CgroupArray = CgroupArray::with_max_entries(MAX_CGROUP_FILTER, 0);

/// Cgroup v2 ids found under a `--cgroup` directory when a process in them was recorded as a
/// socket's owner or a connection's closer: the owner maps keep only the id, and the helper
/// that knows the hierarchy asks about the running task only.
#[map]
static KEPT_CGROUPS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_KEPT_CGROUPS, 0);

/// Events the filters dropped, per CPU (slot 0).
#[map]
pub(crate) static FILTERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Set by userspace when `--port` is given.
#[unsafe(no_mangle)]
static FILTER_BY_PORT: u8 = 0;

/// Set by userspace when `--netns` is given.
#[unsafe(no_mangle)]
static FILTER_BY_NETNS: u8 = 0;

/// How many `--cgroup` directories `CGROUPS` holds; 0: no cgroup filter in the kernel.
#[unsafe(no_mangle)]
static FILTER_BY_CGROUP: u32 = 0;

/// Whether an event with these ends, in this namespace, passes `--port` and `--netns`.
#[inline(always)]
pub fn keeps(ends: &Endpoints, netns: u32) -> bool {
    if global!(FILTER_BY_PORT) != 0 {
        // SAFETY: the values are only tested for presence.
        let kept = |port: u16| port != 0 && unsafe { PORTS.get(port) }.is_some();
        if !kept(ends.local_port) && !kept(ends.remote_port) {
            return false;
        }
    }
    // SAFETY: as above.
    global!(FILTER_BY_NETNS) == 0 || unsafe { NETNS.get(netns) }.is_some()
}

/// Whether an event passes `--cgroup`: kept when any process userspace may name for it is
/// in one of the cgroups (the running task, the socket's owner, the connection's closer), or
/// when it has none the kernel knows and userspace may still find the holder of its file.
/// Userspace names the owner first, then the closer, then the file's holder (and the running
/// task for resets sent by close()), so an owner outside the cgroups settles it.
#[inline(always)]
pub fn keeps_cgroup(facts: &SocketFacts) -> bool {
    if global!(FILTER_BY_CGROUP) == 0 || current_task_kept() {
        return true;
    }
    if facts.owner.tgid != 0 {
        return kept(&facts.owner);
    }
    if facts.closed.closer.tgid != 0 {
        return kept(&facts.closed.closer);
    }
    facts.socket_ino != 0
}

/// Where an owner or closer is recorded (in its own process): remembers its cgroup when it lies
/// under a `--cgroup` directory, for [`keeps_cgroup`] to find later in any context.
#[inline(always)]
pub fn note_owner(owner: &Owner) {
    if global!(FILTER_BY_CGROUP) != 0 && owner.cgroup_id != 0 && current_task_kept() {
        let _ = KEPT_CGROUPS.insert(owner.cgroup_id, 1, 0);
    }
}

/// Counts an event a filter dropped.
#[inline(always)]
pub fn count_filtered() {
    if let Some(filtered) = FILTERED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *filtered += 1 };
    }
}

#[inline(always)]
fn kept(owner: &Owner) -> bool {
    // An id the kernel could not read: userspace reads the cgroup from /proc.
    // SAFETY: the value is only tested for presence.
    owner.cgroup_id == 0 || unsafe { KEPT_CGROUPS.get(owner.cgroup_id) }.is_some()
}

/// Whether the running task is in one of the `--cgroup` directories or below.
#[inline(always)]
fn current_task_kept() -> bool {
    let used = global!(FILTER_BY_CGROUP);
    for slot in 0..MAX_CGROUP_FILTER {
        if slot >= used {
            break;
        }
        if CGROUPS.current_task_under_cgroup(slot) == Ok(true) {
            return true;
        }
    }
    false
}
