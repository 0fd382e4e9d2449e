//! The kernel side of rst-trace: small and boring on purpose.
//!
//! Two programs report resets (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`): they read what
//! only the kernel can know at that moment (the socket's state, owner and flags, the segment that
//! found no socket), filter early, reserve a ring buffer record, copy the tracepoint's raw record
//! verbatim and submit. Three more keep the socket-owner map current from connection set-up and
//! teardown only (connect, listen, accept, close, destroy), never from per-packet or per-send
//! events. Decoding, naming and every decision that needs a table live in userspace. A record that
//! does not fit in the ring buffer is counted in `LOST`, never dropped silently.
//!
//! Where the kernel takes BTF tracepoints, `*_btf` twins of the reset, set-state and destroy
//! programs serve those tracepoints instead: the same code (generic over [`Access`]) reading
//! kernel structs with plain loads rather than a probe read per field, and putting what the raw
//! record would hold into the facts. Nothing here zeroes or copies a byte array by assignment:
//! the BPF backend turns that into a byte-at-a-time loop (see `zero`).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, generated,
    },
    macros::{btf_tracepoint, kprobe, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{BtfTracePointContext, ProbeContext, TracePointContext, tracing::StackIdContext},
};
use aya_log_ebpf::warn;
use rst_trace_common::{
    ArgsRecord, ClosedConnection, ConnectionKey, Endpoints, KernelOffsets, MAX_CLOSED_CONNECTIONS,
    MAX_DROP_REASONS, MAX_OWNED_SOCKETS, MAX_PID_FILTER, MAX_STACKS, NO_OFFSET, NO_SK_STATE, Owner,
    RAW_LEN, RawTracepoint, RecordKind, SocketFacts, facts,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
/// bpf_get_stackid: replace a different stack that hashes to the same bucket.
const BPF_F_REUSE_STACKID: u64 = 1 << 10;
/// The flags byte of a TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// Every event, in order. Userspace sizes it at load time (`--ring-buffer-kib`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Records that found the ring buffer full, per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Process ids (tgids) kept when `FILTER_BY_PID` is set.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PID_FILTER, 0);

/// Socket address -> the process that connected, listened or accepted it.
#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(MAX_OWNED_SOCKETS, 0);

/// Connection -> who closed it and when, kept after the socket is gone.
#[map]
static CLOSED: LruHashMap<ConnectionKey, ClosedConnection> =
    LruHashMap::with_max_entries(MAX_CLOSED_CONNECTIONS, 0);

/// Kernel stacks of events, with `--stack`.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(MAX_STACKS, 0);

/// Bytes waiting in `EVENTS` whose crossing wakes the reader (set from the ring size).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u32 = 0;

const BPF_RB_AVAIL_DATA: u64 = 0;
/// Records (with their 8-byte ring buffer headers) past the wakeup mark within which a record
/// wakes the reader.
const WAKEUP_WINDOW: u64 = 4 * (size_of::<RawTracepoint>() as u64 + 8);
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Set by userspace when `--stack` is given: stacks cost a walk per event.
#[unsafe(no_mangle)]
static RECORD_STACKS: u8 = 0;

/// Set by userspace when `tcp:tcp_send_reset` passes a reason (6.10+): its third argument.
#[unsafe(no_mangle)]
static SEND_RESET_REASON_ARG: u8 = 0;

/// Set by userspace when `--pid` is given.
#[unsafe(no_mangle)]
static FILTER_BY_PID: u8 = 0;

/// Bitmap of the queue-overflow drop reasons (TCP_LISTEN_OVERFLOW, SOCKET_BACKLOG, ...) in the
/// running kernel's numbering, filled by userspace.
#[unsafe(no_mangle)]
static QUEUE_DROP_REASONS: [u64; MAX_DROP_REASONS / 64] = [0; MAX_DROP_REASONS / 64];

/// Resolved by userspace at start-up (tracefs and BTF); see `KernelOffsets`.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::NONE;

/// Reads a global that userspace overrides at load time: volatile, so the compiler cannot fold
/// the placeholder value.
macro_rules! global {
    ($($path:tt)+) => {
        // SAFETY: reading a static through a raw pointer; the loader fills it before load.
        unsafe { core::ptr::read_volatile(&raw const $($path)+) }
    };
}

macro_rules! offset {
    ($field:ident) => {
        global!(OFFSETS.$field)
    };
    (states.$field:ident) => {
        global!(OFFSETS.states.$field)
    };
}

/// A zeroed value on the stack, as `&mut`, to be filled in place. Building one with a literal or
/// moving one out of a function compiles to calls of the byte-at-a-time memset and memcpy.
macro_rules! zeroed {
    ($name:ident: $ty:ty) => {
        let mut $name = core::mem::MaybeUninit::<$ty>::uninit();
        // SAFETY: every byte zeroed (all-zero is a valid value of the types used here); never
        // moved.
        let $name = unsafe {
            zero($name.as_mut_ptr());
            &mut *$name.as_mut_ptr()
        };
    };
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let sk = ctx_field::<u64>(&ctx, offset!(send_reset_skaddr)).unwrap_or(0);
    let skb = ctx_field::<u64>(&ctx, offset!(send_reset_skbaddr)).unwrap_or(0);
    emit(&ctx, RecordKind::ResetSent, sk, skb);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let sk = ctx_field::<u64>(&ctx, offset!(receive_reset_skaddr)).unwrap_or(0);
    emit(&ctx, RecordKind::ResetReceived, sk, 0);
    0
}

/// The same two tracepoints as BTF tracepoints, used where the kernel allows them (5.5+ with BTF):
/// the arguments are typed pointers, so the verifier lets the program read the socket and the
/// segment's `sk_buff` with plain loads (fault-safe, no helper call) instead of a
/// `bpf_probe_read_kernel` per field, which costs tens of nanoseconds each. There is no raw
/// record to copy: the reason, state, cookie and both ends go into the facts.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    // The verifier knows the global's value and never looks at a third argument that the
    // running kernel's tracepoint does not have.
    let reason = (global!(SEND_RESET_REASON_ARG) != 0).then(|| ctx.arg::<u32>(2));
    emit_from_args(&ctx, RecordKind::ResetSent, sk, skb, reason);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    emit_from_args(&ctx, RecordKind::ResetReceived, sk, 0, None);
    0
}

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

/// Kernels before 6.10 call tcp_send_reset's tracepoint only with a socket: a SYN to a closed
/// port goes unseen. These probes see the resets sent without one (and only those, so nothing
/// is reported twice); userspace attaches them only on such kernels.
#[kprobe]
pub fn tcp_v4_send_reset(ctx: ProbeContext) -> u32 {
    reset_without_socket(&ctx);
    0
}

#[kprobe]
pub fn tcp_v6_send_reset(ctx: ProbeContext) -> u32 {
    reset_without_socket(&ctx);
    0
}

#[inline(always)]
fn reset_without_socket(ctx: &ProbeContext) {
    let sk: u64 = ctx.arg(0).unwrap_or(1);
    let skb: u64 = ctx.arg(1).unwrap_or(0);
    if sk == 0 && skb != 0 {
        emit_with::<_, Probe, RawTracepoint>(ctx, RecordKind::ResetSentNoSocket, 0, skb, Raw::None);
    }
}

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
    if new == offset!(states.syn_sent) || new == offset!(states.listen) {
        // connect() and listen() run in the process that owns the socket.
        let _ = OWNERS.insert(sk, current_owner(), 0);
    } else if new == offset!(states.fin_wait1) || new == offset!(states.last_ack) {
        // close() or shutdown() by the application, in its own context.
        zeroed!(key: ConnectionKey);
        zeroed!(head: SockHead<A>);
        head.fill(sk);
        if connection_key(sk, head, netns_of_sock::<A>(sk), key) {
            let closed = ClosedConnection {
                closer: current_owner(),
                closed_ns: now(),
            };
            let _ = CLOSED.insert(key, closed, 0);
        }
    } else if old == offset!(states.syn_recv) && new == offset!(states.established) {
        // A new accepted-to-be child; any owner recorded at this address is a dead socket's.
        let _ = OWNERS.remove(sk);
    }
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    if let Some(sk) = ctx_field::<u64>(&ctx, offset!(destroy_sock_skaddr)) {
        let _ = OWNERS.remove(sk);
    }
    0
}

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
        let _ = OWNERS.insert(sk, current_owner(), 0);
    }
    0
}

#[inline(always)]
fn emit<C: EbpfContext + StackIdContext>(ctx: &C, kind: RecordKind, sk: u64, skb: u64) {
    emit_with::<C, Probe, RawTracepoint>(ctx, kind, sk, skb, Raw::Copy);
}

/// A BTF tracepoint's event: no raw record, everything in the facts.
#[inline(always)]
fn emit_from_args(
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
enum Raw {
    /// The tracepoint's record, verbatim.
    Copy,
    /// Nothing: a probe has no record.
    None,
    /// Nothing either; the facts stand for the record (BTF tracepoints), with the reason.
    FromArgs(Option<u32>),
}

#[inline(always)]
fn emit_with<C: EbpfContext + StackIdContext, A: Access, R: 'static>(
    ctx: &C,
    kind: RecordKind,
    sk: u64,
    skb: u64,
    raw_kind: Raw,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if global!(FILTER_BY_PID) != 0 && !pid_filter_keeps((pid_tgid >> 32) as u32, sk) {
        return;
    }
    // `R` is the whole record, or (BTF tracepoints) the record without its raw part.
    const {
        assert!(
            size_of::<R>() == size_of::<RawTracepoint>()
                || size_of::<R>() == size_of::<ArgsRecord>()
        )
    };
    let Some(mut entry) = EVENTS.reserve::<R>(0) else {
        count_lost();
        return;
    };
    // Header and facts are laid out alike in both; `raw` is touched only when there is one.
    let record = entry.as_mut_ptr().cast::<RawTracepoint>();
    let record_stacks = global!(RECORD_STACKS) != 0;
    let listen = offset!(states.listen);
    // One read of the socket's first bytes (ports, family, state, IPv4 addresses), and the
    // segment the reset answers (none for resets the kernel sends on its own: close, timers).
    zeroed!(head: SockHead<A>);
    head.fill(sk);
    zeroed!(segment: Segment);
    segment.fill::<A>(skb);
    // SAFETY: `record` points at a reserved, writable, 8-byte aligned ring buffer slot of the
    // right size; header and facts are zeroed first and every field is written before submit.
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
        // The segment's ends, where the record has none: drops (their tracepoint carries no
        // addresses), probes (no record), and a listener's reset of a stray segment (the
        // listener has no peer; the segment's source is the remote end).
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
        if matches!(kind, RecordKind::QueueDrop | RecordKind::ResetSentNoSocket)
            || (kind == RecordKind::ResetSent
                && (listener || (from_args && facts.endpoints.family == 0)))
        {
            drop_facts(sk, head, segment, facts);
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
    // Wake the reader once per fill-up: when this record takes the data waiting past an
    // eighth of the buffer (a window of a few records, as other CPUs may reserve between this
    // reserve and the query). Waking on every record above the mark cost an interrupt per
    // record at storm rates, exactly when the reader is busy anyway; a wakeup per record below
    // it cost more than the record. Userspace also drains on a short timer, so quiet events
    // and a missed crossing still go out.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    let mark = u64::from(global!(WAKEUP_BYTES));
    let flags = if waiting > mark && waiting <= mark + WAKEUP_WINDOW {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
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

/// What the socket behind a reset says about it. Fields beyond `sock_common` are read only from
/// full sockets: a time-wait or request socket is a smaller object.
#[inline(always)]
fn socket_facts<A: Access>(sk: u64, head: &SockHead<A>, kind: RecordKind, facts: &mut SocketFacts) {
    facts.sk_state = head
        .field::<u8>(sk, offset!(skc_state))
        .unwrap_or(NO_SK_STATE);
    facts.sk_cookie = if A::DIRECT {
        // What the classic tracepoints record: the cookie, made now if the socket had none.
        // SAFETY: `sk` is a typed socket pointer, as the helper requires.
        unsafe { generated::bpf_get_socket_cookie(sk as *mut core::ffi::c_void) }
    } else {
        field::<u64>(sk, offset!(skc_cookie)).unwrap_or(0)
    };
    facts.netns = netns_of_sock::<A>(sk);
    // SAFETY: the value is copied out at once.
    if let Some(owner) = unsafe { OWNERS.get(sk) } {
        // SAFETY: both are valid `Owner`s.
        unsafe { copy(&raw mut facts.owner, owner) };
    }
    let state = u32::from(facts.sk_state);
    if state == offset!(states.time_wait) {
        facts.tw_substate = field::<u8>(sk, offset!(tw_substate)).unwrap_or(0);
    } else if facts.sk_state != NO_SK_STATE && state != offset!(states.new_syn_recv) {
        facts.flags |= facts::FULL_SOCKET;
        let socket = load::<A, u64>(sk, offset!(sk_socket)).unwrap_or(0);
        if socket != 0 {
            facts.flags |= facts::HAS_SOCKET_FILE;
            if facts.owner.tgid == 0 {
                // Created before rst-trace started, or passed between processes: userspace
                // finds who holds the file.
                facts.socket_ino = field::<u64>(socket, offset!(socket_ino)).unwrap_or(0);
            }
        }
        let linger_bit = offset!(sock_linger_bit);
        if linger_bit < 64
            && load::<A, u64>(sk, offset!(sk_flags)).is_some_and(|f| f & (1 << linger_bit) != 0)
            && load::<A, i64>(sk, offset!(sk_lingertime)) == Some(0)
        {
            facts.flags |= facts::LINGER_ZERO;
        }
        if kind == RecordKind::ResetReceived {
            let tp = tcp_sock::<A>(sk);
            let una = load::<A, u32>(tp, offset!(tcp_snd_una));
            let sent_data = load::<A, u32>(tp, offset!(tcp_data_segs_out)).is_some_and(|n| n > 0);
            if sent_data && una.is_some() && una == load::<A, u32>(tp, offset!(tcp_snd_nxt)) {
                facts.flags |= facts::ALL_SENT_ACKED;
            }
            facts.bytes_acked = load::<A, u64>(tp, offset!(tcp_bytes_acked)).unwrap_or(0);
            facts.bytes_received = load::<A, u64>(tp, offset!(tcp_bytes_received)).unwrap_or(0);
        }
    }
    zeroed!(key: ConnectionKey);
    if connection_key(sk, head, facts.netns, key)
        // SAFETY: the value is copied out at once.
        && let Some(closed) = unsafe { CLOSED.get(key) }
    {
        // SAFETY: both are valid `ClosedConnection`s.
        unsafe { copy(&raw mut facts.closed, closed) };
    }
}

/// A dropped segment (or one answered with a reset for want of a socket): the queue it did not
/// fit in, and both ends: the socket's local end and the segment's source.
#[inline(always)]
fn drop_facts<A: Access>(sk: u64, head: &SockHead<A>, segment: &Segment, facts: &mut SocketFacts) {
    let ends = &mut facts.endpoints;
    if sk != 0 {
        let listening = u32::from(facts.sk_state) == offset!(states.listen);
        let (len, max) = if listening {
            (offset!(sk_ack_backlog), offset!(sk_max_ack_backlog))
        } else {
            (offset!(sk_rmem_alloc), offset!(sk_rcvbuf))
        };
        facts.queue_len = field::<u32>(sk, len).unwrap_or(0);
        facts.queue_max = field::<u32>(sk, max).unwrap_or(0);
        if let Some(family) = head.field::<u16>(sk, offset!(skc_family)) {
            ends.family = family;
            ends.local_port = head.field::<u16>(sk, offset!(skc_num)).unwrap_or(0);
            if family == AF_INET6 {
                read_into(sk, offset!(skc_v6_rcv_saddr), &mut ends.local_addr, 16);
            } else {
                head.ipv4(sk, offset!(skc_rcv_saddr), &mut ends.local_addr);
            }
        }
    }
    // The version (the high nibble of the first byte), then both addresses (IPv4: at 12 and
    // 16; IPv6: at 8 and 24), all within the segment's first bytes.
    let Some(bytes) = segment.ip() else {
        return;
    };
    // SAFETY: every offset below is within the SEGMENT_BYTES of the segment's copy.
    let (version, at) = unsafe { (*bytes >> 4, |offset: usize| bytes.add(offset)) };
    let (source, destination, len, family) = match version {
        4 => (at(12), at(16), 4, AF_INET),
        6 => (at(8), at(24), 16, AF_INET6),
        _ => return,
    };
    if ends.family == 0 {
        // No socket: this host's end is where the segment was going.
        ends.family = family;
        copy_address(destination, &mut ends.local_addr, len);
    }
    copy_address(source, &mut ends.remote_addr, len);
    if let Some(tcp) = segment.tcp() {
        ends.remote_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        if ends.local_port == 0 {
            ends.local_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        }
    }
}

/// Copies an IPv4 (4) or IPv6 (16) address with word loads and stores (a variable-length copy
/// would be a byte-wise memcpy call).
#[inline(always)]
fn copy_address(from: *const u8, to: &mut [u8; 16], len: usize) {
    // SAFETY: `from` has `len` readable bytes (checked by the caller), `to` has 16.
    unsafe {
        let out = to.as_mut_ptr();
        if len == 4 {
            out.cast::<u32>()
                .write_unaligned(from.cast::<u32>().read_unaligned());
        } else {
            out.cast::<u64>()
                .write_unaligned(from.cast::<u64>().read_unaligned());
            out.add(8)
                .cast::<u64>()
                .write_unaligned(from.add(8).cast::<u64>().read_unaligned());
        }
    }
}

/// Where a segment's headers are, read once from its `sk_buff`: the first 64 bytes from the IP
/// header on, which hold the TCP header's ports and flags too when the IP header has no options
/// (20 bytes for IPv4, 40 for IPv6), so that one probe read serves both.
struct Segment {
    skb: u64,
    ip: [u64; SEGMENT_BYTES / 8],
    ip_valid: u64,
    /// The TCP header's first 16 bytes.
    tcp: [u64; 2],
    tcp_valid: u64,
}

const SEGMENT_BYTES: usize = 64;

impl Segment {
    /// Fills a zeroed segment from `skb`.
    #[inline(always)]
    fn fill<A: Access>(&mut self, skb: u64) {
        self.skb = skb;
        let head = load::<A, u64>(skb, offset!(skb_head)).unwrap_or(0);
        let network = load::<A, u16>(skb, offset!(skb_network_header)).unwrap_or(u16::MAX);
        let transport = load::<A, u16>(skb, offset!(skb_transport_header)).unwrap_or(u16::MAX);
        if head == 0 {
            return;
        }
        if network != u16::MAX {
            // Past a short packet's end this reads the buffer's unused room, never used below.
            // SAFETY: `ip` has SEGMENT_BYTES bytes.
            let read = unsafe {
                copy_in(
                    self.ip.as_mut_ptr().cast(),
                    SEGMENT_BYTES,
                    head + u64::from(network),
                )
            };
            self.ip_valid = u64::from(read);
        }
        if transport == u16::MAX {
            return;
        }
        // Constant offsets only: the TCP header where an IP header without options ends.
        let from_ip = match transport.wrapping_sub(network) {
            20 if self.ip_valid != 0 => Some(20),
            40 if self.ip_valid != 0 => Some(40),
            _ => None,
        };
        if let Some(offset) = from_ip {
            let bytes = self.ip.as_ptr().cast::<u8>();
            // SAFETY: offset + 16 <= SEGMENT_BYTES.
            unsafe {
                self.tcp[0] = bytes.add(offset).cast::<u64>().read_unaligned();
                self.tcp[1] = bytes.add(offset + 8).cast::<u64>().read_unaligned();
            }
            self.tcp_valid = 1;
            return;
        }
        // SAFETY: `tcp` has 16 bytes.
        let read = unsafe {
            copy_in(
                self.tcp.as_mut_ptr().cast(),
                16,
                head + u64::from(transport),
            )
        };
        self.tcp_valid = u64::from(read);
    }

    /// The IP header's first bytes.
    #[inline(always)]
    fn ip(&self) -> Option<*const u8> {
        (self.ip_valid != 0).then(|| self.ip.as_ptr().cast::<u8>())
    }

    /// The TCP header's first 16 bytes.
    #[inline(always)]
    fn tcp(&self) -> Option<[u8; 16]> {
        // SAFETY: 16 initialized bytes.
        (self.tcp_valid != 0)
            .then(|| unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(self.tcp) })
    }
}

/// The flags of the segment a reset answers and, when there is no socket to say so, the
/// namespace it arrived in.
#[inline(always)]
fn segment_facts<A: Access>(segment: &Segment, no_socket: bool, facts: &mut SocketFacts) {
    if let Some(tcp) = segment.tcp() {
        facts.tcp_flags = tcp[TCP_FLAGS_OFFSET];
        facts.flags |= facts::SEGMENT;
    }
    if no_socket {
        facts.netns = load::<A, u64>(segment.skb, offset!(skb_dev))
            .and_then(|dev| load::<A, u64>(dev, offset!(dev_nd_net)))
            .and_then(|net| load::<A, u32>(net, offset!(net_inum)))
            .unwrap_or(0);
    }
}

/// The connection's identity as `sock_common` holds it (same layout in every socket kind),
/// written into `key`; false when the socket is not IPv4 or IPv6.
#[inline(always)]
fn connection_key<A: Access>(
    sk: u64,
    head: &SockHead<A>,
    netns: u32,
    key: &mut ConnectionKey,
) -> bool {
    let Some(family) = head.field::<u16>(sk, offset!(skc_family)) else {
        return false;
    };
    key.netns = netns;
    key.family = family;
    key.local_port = head.field::<u16>(sk, offset!(skc_num)).unwrap_or(0);
    key.remote_port_be = head.field::<u16>(sk, offset!(skc_dport)).unwrap_or(0);
    match family {
        AF_INET => {
            head.ipv4(sk, offset!(skc_rcv_saddr), &mut key.local_addr)
                && head.ipv4(sk, offset!(skc_daddr), &mut key.remote_addr)
        }
        AF_INET6 => {
            read_into(sk, offset!(skc_v6_rcv_saddr), &mut key.local_addr, 16)
                && read_into(sk, offset!(skc_v6_daddr), &mut key.remote_addr, 16)
        }
        _ => false,
    }
}

/// Bytes of `struct sock_common` read at once from its start: the IPv4 address pair, the port
/// pair, family and state sit there on every kernel (`skc_addrpair`, `skc_portpair`), so one
/// probe read replaces six. Fields beyond it are read on their own.
const SOCK_HEAD_LEN: usize = 24;

/// Word-sized fields only: the BPF backend zeroes and copies anything else byte by byte.
struct SockHead<A> {
    bytes: [u64; SOCK_HEAD_LEN / 8],
    valid: u64,
    access: core::marker::PhantomData<A>,
}

impl<A: Access> SockHead<A> {
    #[inline(always)]
    /// Fills a zeroed head from `sk` (plain loads need no copy).
    fn fill(&mut self, sk: u64) {
        if sk != 0 && !A::DIRECT {
            // SAFETY: the buffer has SOCK_HEAD_LEN bytes.
            let read = unsafe { copy_in(self.bytes.as_mut_ptr().cast(), SOCK_HEAD_LEN, sk) };
            self.valid = u64::from(read);
        }
    }

    /// A member of `sk` at a BTF offset: from the head when it lies there, else read.
    #[inline(always)]
    fn field<T: Copy>(&self, sk: u64, offset: u32) -> Option<T> {
        if A::DIRECT {
            load::<A, T>(sk, offset)
        } else if offset != NO_OFFSET && offset as usize + size_of::<T>() <= SOCK_HEAD_LEN {
            // SAFETY: within `bytes` (checked above); any bit pattern is a valid T here.
            (self.valid != 0).then(|| unsafe {
                self.bytes
                    .as_ptr()
                    .cast::<u8>()
                    .add(offset as usize)
                    .cast::<T>()
                    .read_unaligned()
            })
        } else {
            field(sk, offset)
        }
    }

    /// An IPv4 address member into the first 4 bytes of `out`.
    #[inline(always)]
    fn ipv4(&self, sk: u64, offset: u32, out: &mut [u8; 16]) -> bool {
        match self.field::<u32>(sk, offset) {
            Some(addr) => {
                // SAFETY: `out` has room for 4 bytes.
                unsafe { out.as_mut_ptr().cast::<u32>().write_unaligned(addr) };
                true
            }
            None => false,
        }
    }
}

/// Reads `len` (at most 16) bytes of a struct member into `out`.
#[inline(always)]
fn read_into(base: u64, offset: u32, out: &mut [u8; 16], len: u32) -> bool {
    if base == 0 || offset == NO_OFFSET || len > 16 {
        return false;
    }
    // SAFETY: `out` has room for 16 bytes.
    unsafe { copy_in(out.as_mut_ptr(), len as usize, base + u64::from(offset)) }
}

/// Copies `len` bytes of kernel memory at `address` into `dst` with one probe read; true when
/// all could be read (the helper zeroes `dst` otherwise).
///
/// # Safety
/// `dst` must have room for `len` bytes.
#[inline(always)]
unsafe fn copy_in(dst: *mut u8, len: usize, address: u64) -> bool {
    // SAFETY: bpf_probe_read_kernel checks the source; the caller vouches for `dst`.
    unsafe {
        generated::bpf_probe_read_kernel(
            dst.cast(),
            len as u32,
            address as *const core::ffi::c_void,
        ) == 0
    }
}

#[inline(always)]
fn netns_of_sock<A: Access>(sk: u64) -> u32 {
    load::<A, u64>(sk, offset!(skc_net))
        .and_then(|net| load::<A, u32>(net, offset!(net_inum)))
        .unwrap_or(0)
}

/// This socket's own ends, as the classic tracepoints record them: from `sock_common`, with a
/// full socket's local port from `inet_sport` (close() has cleared `skc_num` by the time it
/// sends a reset).
#[inline(always)]
fn socket_ends<A: Access>(sk: u64, head: &SockHead<A>, full: bool, ends: &mut Endpoints) {
    let Some(family) = head.field::<u16>(sk, offset!(skc_family)) else {
        return;
    };
    ends.local_port = if full {
        load::<A, u16>(tcp_sock::<A>(sk), offset!(inet_sport)).map_or(0, u16::from_be)
    } else {
        head.field::<u16>(sk, offset!(skc_num)).unwrap_or(0)
    };
    ends.remote_port = u16::from_be(head.field::<u16>(sk, offset!(skc_dport)).unwrap_or(0));
    let read = match family {
        AF_INET => {
            head.ipv4(sk, offset!(skc_rcv_saddr), &mut ends.local_addr)
                && head.ipv4(sk, offset!(skc_daddr), &mut ends.remote_addr)
        }
        AF_INET6 => {
            read_into(sk, offset!(skc_v6_rcv_saddr), &mut ends.local_addr, 16)
                && read_into(sk, offset!(skc_v6_daddr), &mut ends.remote_addr, 16)
        }
        _ => false,
    };
    if read {
        ends.family = family;
    }
}

/// `sk` as a `struct tcp_sock`, for members beyond `struct sock` (the verifier checks a plain
/// load against the pointer's type): through `bpf_skc_to_tcp_sock` for plain loads (NULL for a
/// socket that is not a full TCP socket), as is for probe reads.
#[inline(always)]
fn tcp_sock<A: Access>(sk: u64) -> u64 {
    if A::DIRECT {
        // SAFETY: `sk` is a typed socket pointer, as the helper requires.
        unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) as u64 }
    } else {
        sk
    }
}

/// How kernel memory is read. Classic tracepoints and probes see pointers as plain numbers, so
/// every read is a `bpf_probe_read_kernel` call. BTF tracepoints get typed pointers: the verifier
/// checks each load against the kernel's BTF (offsets from the read-only globals are constants
/// to it) and turns it into a fault-safe load, no call.
trait Access {
    const DIRECT: bool;
}

struct Probe;
impl Access for Probe {
    const DIRECT: bool = false;
}

struct Direct;
impl Access for Direct {
    const DIRECT: bool = true;
}

/// A struct member at a BTF offset, read the way `A` reads.
#[inline(always)]
fn load<A: Access, T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == NO_OFFSET {
        return None;
    }
    let address = base + u64::from(offset);
    if A::DIRECT {
        // SAFETY: a typed kernel pointer (BTF tracepoint argument or a member read from one);
        // the verifier checks the access and makes the load fault-safe.
        Some(unsafe { core::ptr::read_volatile(address as *const T) })
    } else {
        read(address)
    }
}

#[inline(always)]
fn current_owner() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut owner = core::mem::MaybeUninit::<Owner>::uninit();
    let ptr = owner.as_mut_ptr();
    // SAFETY: every field is written before `assume_init` (the helper fills all of `comm`); no
    // zeroed byte array is built, which would compile to a byte-wise memset.
    unsafe {
        (*ptr).tgid = (pid_tgid >> 32) as u32;
        (*ptr).pid = pid_tgid as u32;
        (*ptr).cgroup_id = bpf_get_current_cgroup_id();
        (*ptr).since_ns = now();
        generated::bpf_get_current_comm((&raw mut (*ptr).comm).cast(), 16);
        owner.assume_init()
    }
}

/// The running task's cgroup v2 id. BTF programs follow `task->cgroups->dfl_cgrp->kn->id`
/// with plain loads, as the helper does under its call.
#[inline(always)]
fn current_cgroup_id<A: Access>() -> u64 {
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
fn current_comm<A: Access>(comm: &mut [u8; 16]) {
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

/// Zeroes a record part with 8-byte stores. Plain assignment of a default value compiles to a
/// call of the byte-at-a-time memset that the BPF target links in, several hundred instructions
/// per record.
///
/// # Safety
/// `ptr` must be valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn zero<T>(ptr: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() <= 8) };
    let words = ptr.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: within `*ptr`, per the caller.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Copies a map value into a record with 8-byte loads and stores, for the same reason as `zero`.
///
/// # Safety
/// Both pointers must be valid, 8-byte aligned and not overlap.
#[inline(always)]
unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() == 8) };
    let (dst, src) = (dst.cast::<u64>(), src.cast::<u64>());
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: within both values, per the caller.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
}

#[inline(always)]
fn pid_kept(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    tgid != 0 && unsafe { PIDS.get(tgid) }.is_some()
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// A field of the tracepoint record at an offset from tracefs.
#[inline(always)]
fn ctx_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == NO_OFFSET {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// A kernel struct member at an offset from BTF.
#[inline(always)]
fn field<T: Copy>(base: u64, offset: u32) -> Option<T> {
    load::<Probe, T>(base, offset)
}

#[inline(always)]
fn read<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *lost += 1 };
    }
}

// ---------------------------------------------------------------------------------------------
// Benchmark aid, not part of tracing: `cargo xtask bench` loads this program alone (through the
// hidden `rst-trace bench-reference` command) to measure what the least a reset tracer must do
// costs on this kernel, and holds `tcp_send_reset` above to a multiple of it. rst-trace itself
// never loads or attaches it.

/// Bytes the reference program submits per reset.
const BENCH_RECORD_LEN: usize = 64;

/// The reference program's own ring buffer. Tiny here, because every load of the object creates
/// it; `bench-reference` sizes it up at load time.
#[map]
static BENCH_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
