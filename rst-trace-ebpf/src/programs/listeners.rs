//! Listener queues of every network namespace in one pass, two ways.
//!
//! The kernel's TCP iterator (`iter/tcp`) only walks the sockets of the namespace its reader is
//! in (`seq_sk_match` compares `sock_net(sk)` with the reader's), so it would have to be entered
//! namespace by namespace, each time walking the whole established hash. Instead:
//!
//! - [`listeners`], an `iter/task_file` iterator, walks every task's open files: every
//!   listener held by a process, in every namespace, with the process holding it. It costs a
//!   step per open file on the host, so it runs once, at start-up: it finds the listeners that
//!   existed before rst-trace and puts them in `LISTENERS`.
//! - [`listener_map`], an `iter/bpf_map_elem` iterator over `LISTENERS` (which the owner
//!   programs keep from `listen()` and close), runs once a second: a step per listener. It
//!   holds no file, so it never becomes the last holder of a socket a process is closing.
//!
//! Both write one [`ListenerRecord`] per TCP listener (namespace, address, queues, `sk_drops`,
//! holder) to the iterator's output; userspace turns `sk_drops` increases into drops per
//! listener.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use rst_trace_common::ListenerRecord;

use rst_trace_common::{COMM_LEN, Owner};

use crate::LISTENERS;
use crate::read::Probe;
use crate::read::{Direct, field, load, read_into};
use crate::sock::{AF_INET, AF_INET6, netns_of_sock};
use crate::task::now;

const IPPROTO_TCP: u8 = 6;
/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// `struct bpf_iter__task_file`: meta, task, fd (8-aligned), file.
const CTX_META: usize = 0;
const CTX_TASK: usize = 8;
const CTX_FILE: usize = 24;
/// `struct bpf_iter__bpf_map_elem`: meta, map, key, value.
const CTX_KEY: usize = 16;
const CTX_VALUE: usize = 24;
/// `bpf_map_update_elem` flag: only where the key is absent.
const BPF_NOEXIST: u64 = 1;

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
    if !is_tcp_listener(sk) {
        return 0;
    }
    let tgid = field::<u32>(task, offset!(task_tgid)).unwrap_or(0);
    let mut comm = [0u8; COMM_LEN];
    read_into(task, offset!(task_comm), &mut comm, 16);
    // A listener that was there before rst-trace: its holder stands for its owner until a
    // listen() says otherwise (an owner recorded by listen() is kept).
    let holder = Owner {
        tgid,
        pid: tgid,
        cgroup_id: 0,
        since_ns: now(),
        comm,
        // Its pid in its own namespace is not read here: /proc has it, the holder being alive.
        ns_tgid: 0,
        _pad: 0,
    };
    let _ = LISTENERS.insert(sk, holder, BPF_NOEXIST);
    write_record(meta, sk, &holder);
    0
}

/// Called once per element of `LISTENERS` (key: the socket's address; value: its owner), and
/// once more with no element at the end; returns 0 always. The socket is read with probe reads
/// only: the map holds no reference to it.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_map_elem")]
pub fn listener_map(ctx: *mut c_void) -> i32 {
    // SAFETY: the context is `struct bpf_iter__bpf_map_elem`; key and value point into the
    // element (NULL at the end), readable for the map's key and value sizes, which the kernel
    // checks against `LISTENERS` when the iterator is attached.
    let (meta, key, value) = unsafe {
        let base = ctx.cast::<u8>();
        (
            core::ptr::read_volatile(base.add(CTX_META).cast::<u64>()),
            core::ptr::read_volatile(base.add(CTX_KEY).cast::<*const u64>()),
            core::ptr::read_volatile(base.add(CTX_VALUE).cast::<*const Owner>()),
        )
    };
    if key.is_null() || value.is_null() {
        return 0;
    }
    // SAFETY: both point into the current element (checked non-NULL above).
    let (sk, owner) = unsafe {
        (
            core::ptr::read_volatile(key),
            core::ptr::read_volatile(value),
        )
    };
    if !is_tcp_listener(sk) {
        // Closed or destroyed while no program saw it (before they were attached, say).
        let _ = LISTENERS.remove(sk);
        return 0;
    }
    write_record(meta, sk, &owner);
    0
}

#[inline(always)]
fn is_tcp_listener(sk: u64) -> bool {
    field::<u8>(sk, offset!(sk_protocol)) == Some(IPPROTO_TCP)
        && field::<u8>(sk, offset!(skc_state)).map(u32::from) == Some(offset!(states.listen))
}

/// Writes `sk`'s [`ListenerRecord`], naming `holder`, to the iterator's output.
#[inline(always)]
fn write_record(meta: u64, sk: u64, holder: &Owner) {
    let Some(family) = field::<u16>(sk, offset!(skc_family)) else {
        return;
    };
    zeroed!(record: ListenerRecord);
    let read_addr = match family {
        AF_INET => read_into(sk, offset!(skc_rcv_saddr), &mut record.addr, 4),
        AF_INET6 => read_into(sk, offset!(skc_v6_rcv_saddr), &mut record.addr, 16),
        _ => false,
    };
    if !read_addr {
        return;
    }
    record.family = family;
    record.port = field::<u16>(sk, offset!(skc_num)).unwrap_or(0);
    record.netns = netns_of_sock::<Probe>(sk);
    record.drops = field::<u32>(sk, offset!(sk_drops)).unwrap_or(0);
    record.accept_len = field::<u32>(sk, offset!(sk_ack_backlog)).unwrap_or(0);
    record.accept_max = field::<u32>(sk, offset!(sk_max_ack_backlog)).unwrap_or(0);
    record.syn_queue = field::<u32>(sk, offset!(icsk_accept_queue_qlen)).unwrap_or(0);
    record.tgid = holder.tgid;
    record.comm = holder.comm;
    // The socket's inode names it across passes; a socket with no file (a kernel listener)
    // goes by its address, which is no inode number a socket file could have.
    record.socket_ino = field::<u64>(sk, offset!(sk_socket))
        .filter(|socket| *socket != 0)
        .and_then(|socket| field::<u64>(socket, offset!(socket_ino)))
        .unwrap_or(sk);
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
}
