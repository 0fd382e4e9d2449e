//! The socket-owner bookkeeping, from connection set-up and teardown only: connect and listen
//! give a socket its owner (`OWNERS`), accept gives the accepted socket its owner, close records
//! who closed the connection (`CLOSED`) or aborted it (`ABORTS`), and destroy or a new passive child forgets an owner.
//! Listen and a listener's close also update the last listener on its address (`LAST_LISTENERS`)
//! and the set of listeners the listener passes walk (`LISTENERS`, emptied as a listener leaves
//! LISTEN): these programs are never filtered or folded, so no listener's close is missed.
//! `sock:inet_sock_set_state` and `tcp:tcp_destroy_sock` have BTF twins (`*_btf`).

use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use rst_trace_common::{
    Abort, ClosedConnection, ConnectionKey, ListenerHistory, ListenerKey, NO_OFFSET, Owner, facts,
    listener_flags,
};

use crate::read::{Access, Direct, Probe, copy, ctx_field, field, load, read};
use crate::sock::{
    AF_INET, AF_INET6, SockHead, connection_key, linger_zero, listener_key, netns_of_sock,
};
use crate::task::{current_owner, now};
use crate::{ABORTS, CLOSED, LAST_LISTENERS, LISTENERS, OWNERS};

const IPPROTO_TCP: u16 = 6;

/// Connection set-up and teardown: connect and listen give a socket its owner; close records
/// who closed the connection; a new passive child forgets a stale owner of the same address.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if ctx_field::<u16>(&ctx, offset!(set_state_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some(sk) = ctx_field::<u64>(&ctx, offset!(set_state_skaddr)) else {
        return 0;
    };
    let Some(old) = ctx_field::<i32>(&ctx, offset!(set_state_oldstate)) else {
        return 0;
    };
    let Some(new) = ctx_field::<i32>(&ctx, offset!(set_state_newstate)) else {
        return 0;
    };
    set_state::<Probe>(sk, old as u32, new as u32);
    0
}

/// The same as a BTF tracepoint: the socket's members are plain loads, the states arguments.
/// `trace_inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)`:
/// arg0 = sk, arg1 = old state, arg2 = new state.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if load::<Direct, u8>(sk, offset!(sk_protocol)) != Some(IPPROTO_TCP as u8) {
        return 0;
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    set_state::<Direct>(sk, old as u32, new as u32);
    0
}

#[inline(always)]
fn set_state<A: Access>(sk: u64, old: u32, new: u32) {
    let connecting_or_listening = new == offset!(states.syn_sent) || new == offset!(states.listen);
    let listener_leaving = old == offset!(states.listen);
    let closing = new == offset!(states.fin_wait1) || new == offset!(states.last_ack);
    // Straight to CLOSE from an open connection: an abort (SO_LINGER 0, unread data, a listener
    // closed with it queued), about to send its reset.
    let aborting = new == offset!(states.close)
        && (old == offset!(states.established) || old == offset!(states.close_wait));
    if !(connecting_or_listening || listener_leaving || closing || aborting) {
        if old == offset!(states.syn_recv) && new == offset!(states.established) {
            // A new accepted-to-be child; any owner recorded at this address is a dead socket's.
            let _ = OWNERS.remove(sk);
        }
        // Nothing else needs this transition (a refused connect's SYN_SENT -> CLOSE, for one).
        return;
    }
    // Every transition below records the running task (one copy of its reads, for the
    // verifier's sake): connect() and listen() run in the process that owns the socket, close()
    // and shutdown() in the process that closes it.
    let owner = current_owner::<A>();
    if connecting_or_listening {
        let _ = OWNERS.insert(sk, owner, 0);
        if new == offset!(states.listen) {
            listened::<A>(sk, &owner);
            let _ = LISTENERS.insert(sk, owner, 0);
        }
    } else if listener_leaving {
        // close() or shutdown() of a listener: no listener pass may read it after it is freed.
        let _ = LISTENERS.remove(sk);
        if new == offset!(states.close) {
            // In its process (or a listen() that failed): the address's last listener closed.
            stopped_listening::<A>(sk, &owner);
        }
    } else {
        zeroed!(key: ConnectionKey);
        zeroed!(head: SockHead<A>);
        head.fill(sk);
        if !connection_key(sk, head, netns_of_sock::<A>(sk), key) {
            return;
        }
        if closing {
            // close() or shutdown() by the application, in its own context.
            let closed = ClosedConnection {
                closer: owner,
                closed_ns: now(),
            };
            let _ = CLOSED.insert(key, closed, 0);
        } else {
            let mut flags = 0;
            if linger_zero::<A>(sk) {
                flags |= facts::LINGER_ZERO;
            }
            if load::<A, u64>(sk, offset!(sk_socket)).is_some_and(|socket| socket != 0) {
                flags |= facts::HAS_SOCKET_FILE;
            }
            // Both ends may be in different namespaces of this host (containers on a bridge):
            // the reversed four-tuple within a second is identity enough.
            key.netns = 0;
            let abort = Abort {
                closer: owner,
                ns: now(),
                flags,
                _pad: [0; 7],
            };
            let _ = ABORTS.insert(key, abort, 0);
        }
    }
}

/// listen(): this socket is now the last listener on its address. The last close there is
/// kept: a connection refused just before this listen() is explained after it.
#[inline(always)]
fn listened<A: Access>(sk: u64, owner: &Owner) {
    zeroed!(key: ListenerKey);
    zeroed!(head: SockHead<A>);
    head.fill(sk);
    if !listener_key(sk, head, key) {
        return;
    }
    zeroed!(record: ListenerHistory);
    // SAFETY: the value is copied out at once.
    if let Some(known) = unsafe { LAST_LISTENERS.get(key as &ListenerKey) } {
        // SAFETY: both are valid `ListenerHistory`s.
        unsafe { copy(record as *mut ListenerHistory, known) };
    }
    record.sk = sk;
    // SAFETY: both are valid `Owner`s.
    unsafe { copy(&raw mut record.owner, owner) };
    record.flags = 0;
    let bit = offset!(skc_ipv6only_bit);
    if key.family == AF_INET6
        && bit != NO_OFFSET
        // A bitfield: one byte read (probe read: rare, and any access kind may do it).
        && field::<u8>(sk, bit / 8).is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
    {
        record.flags |= listener_flags::IPV6_ONLY;
    }
    let _ = LAST_LISTENERS.insert(key as &ListenerKey, record as &ListenerHistory, 0);
}

/// A listener closed: remember who closed it and when. A close of another socket on the same
/// address while the recorded one still listens (an SO_REUSEPORT sibling) changes nothing.
#[inline(always)]
fn stopped_listening<A: Access>(sk: u64, closer: &Owner) {
    zeroed!(key: ListenerKey);
    zeroed!(head: SockHead<A>);
    head.fill(sk);
    if !listener_key(sk, head, key) {
        return;
    }
    zeroed!(record: ListenerHistory);
    // SAFETY: the value is copied out at once.
    let known = unsafe { LAST_LISTENERS.get(key as &ListenerKey) };
    if let Some(known) = known {
        // Listening: its last close came before its listen().
        if known.sk != sk && known.closed_ns < known.owner.since_ns {
            return;
        }
        // SAFETY: both are valid `ListenerHistory`s.
        unsafe { copy(record as *mut ListenerHistory, known) };
    } else {
        // Its record was evicted, or it listened before rst-trace started (then it has no
        // owner here either). SAFETY: the value is copied out at once.
        if let Some(owner) = unsafe { OWNERS.get(sk) } {
            // SAFETY: both are valid `Owner`s.
            unsafe { copy(&raw mut record.owner, owner) };
        }
    }
    record.sk = sk;
    // SAFETY: both are valid `Owner`s.
    unsafe { copy(&raw mut record.closer, closer) };
    record.closed_ns = now();
    let _ = LAST_LISTENERS.insert(key as &ListenerKey, record as &ListenerHistory, 0);
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    if let Some(sk) = ctx_field::<u64>(&ctx, offset!(destroy_sock_skaddr)) {
        let _ = OWNERS.remove(sk);
    }
    0
}

/// `trace_tcp_destroy_sock(struct sock *sk)`: arg0 = sk.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        let _ = OWNERS.remove(sk);
    }
    0
}

/// accept() and accept4() returned a descriptor: the socket behind it belongs to this process.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let Some(fd) = ctx_field::<i64>(&ctx, offset!(sys_exit_ret)) else {
        return 0;
    };
    if fd < 0 {
        return 0;
    }
    // SAFETY: no preconditions; the task is only read through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    // task->files->fdt->fd[fd]->private_data (a struct socket)->sk.
    let sk = field::<u64>(task, offset!(task_files))
        .and_then(|files| field::<u64>(files, offset!(files_fdt)))
        .and_then(|fdt| field::<u64>(fdt, offset!(fdt_fd)))
        .and_then(|fds| read::<u64>(fds + (fd as u64) * 8))
        .and_then(|file| field::<u64>(file, offset!(file_private_data)))
        .and_then(|socket| field::<u64>(socket, offset!(socket_sk)));
    if let Some(sk) = sk
        && sk != 0
        && matches!(
            field::<u16>(sk, offset!(skc_family)),
            Some(AF_INET | AF_INET6)
        )
    {
        let _ = OWNERS.insert(sk, current_owner::<Probe>(), 0);
    }
    0
}
