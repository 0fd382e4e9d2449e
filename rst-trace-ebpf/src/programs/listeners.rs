//! Listener queues of every network namespace in one pass: an `iter/task_file` iterator.
//!
//! The kernel's TCP iterator (`iter/tcp`) only walks the sockets of the namespace its reader is
//! in (`seq_sk_match` compares `sock_net(sk)` with the reader's), so it would have to be entered
//! namespace by namespace, each time walking the whole established hash. Every listener is held
//! open by some process, though, so walking every task's open files finds every listener of every
//! namespace at once, and names the process that holds it. For each socket file whose socket is a
//! TCP listener this writes one [`ListenerRecord`] (namespace, address, queues, `sk_drops`,
//! holder) to the iterator's output; userspace reads it once a second and turns `sk_drops`
//! increases into drops per listener.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use rst_trace_common::ListenerRecord;

use crate::read::Probe;
use crate::read::{Direct, field, load, read_into};
use crate::sock::{AF_INET, AF_INET6, netns_of_sock};

const IPPROTO_TCP: u8 = 6;
/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// `struct bpf_iter__task_file`: meta, task, fd (8-aligned), file.
const CTX_META: usize = 0;
const CTX_TASK: usize = 8;
const CTX_FILE: usize = 24;

/// Called once per open file of every process (threads sharing a file table are skipped by the
/// kernel); returns 0 always (1 would ask the kernel to drop what was written).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn listeners(ctx: *mut c_void) -> i32 {
    // SAFETY: the context is `struct bpf_iter__task_file`; its members are read at their fixed
    // offsets with plain loads, which the verifier checks against BTF.
    let (meta, task, file) = unsafe {
        let base = ctx.cast::<u8>();
        (
            core::ptr::read_volatile(base.add(CTX_META).cast::<u64>()),
            core::ptr::read_volatile(base.add(CTX_TASK).cast::<u64>()),
            core::ptr::read_volatile(base.add(CTX_FILE).cast::<u64>()),
        )
    };
    if task == 0 || file == 0 {
        return 0;
    }
    // Every open file of every process comes here, so its type is read with plain loads (the
    // context's file and its inode are typed pointers to the verifier), not probe-read calls.
    let Some(mode) = load::<Direct, u64>(file, offset!(file_f_inode))
        .and_then(|inode| load::<Direct, u16>(inode, offset!(inode_i_mode)))
    else {
        return 0;
    };
    if mode & S_IFMT != S_IFSOCK {
        return 0;
    }
    let Some(sk) = field::<u64>(file, offset!(file_private_data))
        .and_then(|socket| field::<u64>(socket, offset!(socket_sk)))
    else {
        return 0;
    };
    if field::<u8>(sk, offset!(sk_protocol)) != Some(IPPROTO_TCP)
        || field::<u8>(sk, offset!(skc_state)).map(u32::from) != Some(offset!(states.listen))
    {
        return 0;
    }
    let Some(family) = field::<u16>(sk, offset!(skc_family)) else {
        return 0;
    };
    zeroed!(record: ListenerRecord);
    let read_addr = match family {
        AF_INET => read_into(sk, offset!(skc_rcv_saddr), &mut record.addr, 4),
        AF_INET6 => read_into(sk, offset!(skc_v6_rcv_saddr), &mut record.addr, 16),
        _ => false,
    };
    if !read_addr {
        return 0;
    }
    record.family = family;
    record.port = field::<u16>(sk, offset!(skc_num)).unwrap_or(0);
    record.netns = netns_of_sock::<Probe>(sk);
    record.drops = field::<u32>(sk, offset!(sk_drops)).unwrap_or(0);
    record.accept_len = field::<u32>(sk, offset!(sk_ack_backlog)).unwrap_or(0);
    record.accept_max = field::<u32>(sk, offset!(sk_max_ack_backlog)).unwrap_or(0);
    record.syn_queue = field::<u32>(sk, offset!(icsk_accept_queue_qlen)).unwrap_or(0);
    record.tgid = field::<u32>(task, offset!(task_tgid)).unwrap_or(0);
    record.socket_ino = field::<u64>(file, offset!(file_private_data))
        .and_then(|socket| field::<u64>(socket, offset!(socket_ino)))
        .unwrap_or(0);
    read_into(task, offset!(task_comm), &mut record.comm, 16);
    // SAFETY: `meta` is the iterator's `struct bpf_iter_meta` (never NULL); its first member is
    // the seq_file the helper writes to, loaded as the typed pointer the helper requires.
    unsafe {
        let seq = core::ptr::read_volatile(meta as *const u64);
        bpf_seq_write(
            seq as *mut _,
            (record as *const ListenerRecord).cast(),
            size_of::<ListenerRecord>() as u32,
        );
    }
    0
}
