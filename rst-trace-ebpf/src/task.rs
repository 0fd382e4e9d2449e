//! The running task: who it is (process, thread, cgroup, name) and the clock, for records and
//! for the owner map. In softirq this is whatever task was interrupted, not the socket's owner;
//! userspace knows which is which.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
    generated,
};
use rst_trace_common::{NO_OFFSET, Owner};

use crate::read::{Access, field, load, read};

/// PID namespaces nest at most 32 deep (`MAX_PID_NS_LEVEL`).
const MAX_PID_NS_LEVEL: u32 = 32;

/// The running task as an owner or closer, stamped now, its cgroup noted for `--cgroup` (see
/// [`crate::filter::note_owner`]); BTF programs read its name and cgroup with plain loads (see
/// [`current_comm`]).
#[inline(always)]
pub fn current_owner<A: Access>() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut owner = core::mem::MaybeUninit::<Owner>::uninit();
    let ptr = owner.as_mut_ptr();
    // SAFETY: every field is written before `assume_init` (`current_comm` fills all of `comm`);
    // no zeroed byte array is built, which would compile to a byte-wise memset.
    unsafe {
        (*ptr).tgid = (pid_tgid >> 32) as u32;
        (*ptr).pid = pid_tgid as u32;
        (*ptr).cgroup_id = current_cgroup_id::<A>();
        (*ptr).since_ns = now();
        current_comm::<A>(&mut (*ptr).comm);
        (*ptr).ns_tgid = current_ns_tgid::<A>();
        (*ptr)._pad = 0;
        let owner = owner.assume_init();
        crate::filter::note_owner(&owner);
        owner
    }
}

/// The running process's id in its own (innermost) PID namespace:
/// `task->group_leader->thread_pid->numbers[level].nr`, what `NSpid` in /proc ends with. Read
/// here because a short-lived process is gone from /proc by the time userspace looks. BTF
/// programs (5.11+) follow the pointers with plain loads and, for a process in the host's PID
/// namespace (level 0, the common case), read `numbers[0].nr` the same way; a deeper level
/// indexes the array by a value read at run time, which the verifier refuses on a typed
/// pointer, so that case takes probe reads, as every read is for classic programs (four probe
/// reads cost a fifth of a connect's bookkeeping). 0 when an offset is unknown.
#[inline(always)]
pub fn current_ns_tgid<A: Access>() -> u32 {
    let numbers = offset!(pid_numbers);
    let upid_size = offset!(upid_size);
    let nr = offset!(upid_nr);
    if numbers == NO_OFFSET || upid_size == NO_OFFSET || nr == NO_OFFSET {
        return 0;
    }
    if A::DIRECT && offset!(task_comm) != NO_OFFSET {
        // SAFETY: no preconditions; the task pointer is typed for the verifier.
        let task = unsafe { generated::bpf_get_current_task_btf() } as u64;
        let pid = load::<A, u64>(task, offset!(task_group_leader))
            .and_then(|leader| load::<A, u64>(leader, offset!(task_thread_pid)));
        if let Some(pid) = pid.filter(|pid| *pid != 0)
            && load::<A, u32>(pid, offset!(pid_level)) == Some(0)
        {
            return load::<A, i32>(pid, numbers + nr).map_or(0, |nr| nr as u32);
        }
        // Deeper (or unknown): the probe reads below. The verifier (6.1) refuses to add a
        // value read at run time to a typed pointer, so the pointers are read again as numbers.
    }
    // SAFETY: no preconditions; the task is only read through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let Some(pid) = field::<u64>(task, offset!(task_group_leader))
        .and_then(|leader| field::<u64>(leader, offset!(task_thread_pid)))
        .filter(|pid| *pid != 0)
    else {
        return 0;
    };
    let Some(level) = field::<u32>(pid, offset!(pid_level)) else {
        return 0;
    };
    if level > MAX_PID_NS_LEVEL {
        return 0;
    }
    let at = u64::from(numbers) + u64::from(level) * u64::from(upid_size) + u64::from(nr);
    read::<i32>(pid + at).map_or(0, |nr| nr as u32)
}

/// The running task's cgroup v2 id. BTF programs follow `task->cgroups->dfl_cgrp->kn->id`
/// with plain loads, as the helper does under its call.
#[inline(always)]
pub fn current_cgroup_id<A: Access>() -> u64 {
    let kernfs_id = offset!(kernfs_node_id);
    if A::DIRECT && kernfs_id != NO_OFFSET {
        // SAFETY: no preconditions; the task pointer is typed for the verifier.
        let task = unsafe { generated::bpf_get_current_task_btf() } as u64;
        return load::<A, u64>(task, offset!(task_cgroups))
            .and_then(|cgroups| load::<A, u64>(cgroups, offset!(css_set_dfl_cgrp)))
            .and_then(|cgroup| load::<A, u64>(cgroup, offset!(cgroup_kn)))
            .and_then(|kn| load::<A, u64>(kn, kernfs_id))
            .unwrap_or(0);
    }
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

/// The running task's name, written in place (aya's helper would zero a copy byte by byte).
/// BTF programs load it from the task as two words: the helper copies it byte by byte under a
/// string copy, a seventh of a reset program's time.
#[inline(always)]
pub fn current_comm<A: Access>(comm: &mut [u8; 16]) {
    let offset = offset!(task_comm);
    if A::DIRECT && offset != NO_OFFSET {
        // SAFETY: no preconditions; the task pointer is typed for the verifier.
        let task = unsafe { generated::bpf_get_current_task_btf() } as u64;
        let words = comm.as_mut_ptr().cast::<u64>();
        // SAFETY: `comm` has room for two words (written unaligned).
        unsafe {
            words.write_unaligned(load::<A, u64>(task, offset).unwrap_or(0));
            words
                .add(1)
                .write_unaligned(load::<A, u64>(task, offset + 8).unwrap_or(0));
        }
        return;
    }
    // SAFETY: the helper writes at most 16 bytes, NUL-padded, and zeroes them on failure.
    unsafe { generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), 16) };
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
