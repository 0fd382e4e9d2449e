//! Types shared by the kernel programs and the userspace loader.
//!
//! Every record in the ring buffer starts with the same [`EventHeader`]; the header's `kind` says
//! what follows. A classic tracepoint program copies the tracepoint's raw record verbatim into
//! [`RawTracepoint`] and userspace decodes it with the field offsets it read from tracefs, so one
//! kernel program serves every tracepoint layout (the 6.10+ `tcp_send_reset` with a reason and
//! sockaddr fields, and the older one with separate ports and family); a BTF tracepoint program
//! sends an [`ArgsRecord`], whose facts stand for the raw record. With `--pcap`, a record about a
//! packet is sent whole with the packet's first bytes behind it ([`RecordWithPacket`]).
//!
//! Layout: the `#[repr(C)]` types the ring buffer, the maps and the globals carry come first
//! (records, then their parts, then the offsets userspace hands the programs), then the
//! constants and flag bits they use, then their methods. Userspace-only trait impls
//! (`aya::Pod`) are in `mod user`, behind the `user` feature, so the kernel crate never sees aya.
#![no_std]

// ---- Layouts: records in the ring buffer and their parts. ----

/// Prefix of every ring buffer record. `#[repr(C)]` with explicit padding: no hidden bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// A [`RecordKind`] as u8.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// CPU the program ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC when the event fired.
    pub ktime_ns: u64,
    /// `bpf_get_current_pid_tgid()`: the task that was running, which in softirq is not the
    /// socket's owner.
    pub pid_tgid: u64,
    /// cgroup v2 id of the running task.
    pub cgroup_id: u64,
    /// comm of the running task, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// A tracepoint record copied verbatim, behind the common header, with what the programs read
/// from the socket the record points at.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawTracepoint {
    pub header: EventHeader,
    pub facts: SocketFacts,
    pub raw: [u8; RAW_LEN],
}

/// A record from a BTF tracepoint program ([`facts::FROM_ARGS`]): a [`RawTracepoint`] without
/// the raw part, which such a program has no record to fill. A third less to write per event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArgsRecord {
    pub header: EventHeader,
    pub facts: SocketFacts,
}

/// With `--pcap`: a record followed by the packet it is about (the segment a reset answered, a
/// dropped packet). Sent whole, raw part included, whichever program made the record (a BTF
/// tracepoint's record has its raw part zeroed), so that userspace finds the packet at one offset.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordWithPacket {
    pub record: RawTracepoint,
    pub packet: Packet,
}

/// A packet's first bytes from its `sk_buff`, from the IP header on.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    /// Bytes of the packet in the skb's linear data from the IP header on (`tail -
    /// network_header`): what `bytes` holds beyond that is not the packet's. Payload kept in
    /// page fragments is not in the linear data.
    pub linear_len: u32,
    pub _pad: u32,
    /// The first [`PACKET_BYTES`] bytes from the IP header on.
    pub bytes: [u8; PACKET_BYTES],
}

/// What the programs read from the socket (or the segment) behind a reset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketFacts {
    /// Network namespace inode; 0 when unknown.
    pub netns: u32,
    /// `skc_state`, or [`NO_SK_STATE`].
    pub sk_state: u8,
    /// `tw_substate` of a time-wait socket (FIN_WAIT2 for an orphaned connection).
    pub tw_substate: u8,
    /// Bits from [`facts`].
    pub flags: u8,
    /// TCP flags of the segment that found no socket (valid with [`facts::SEGMENT`]).
    pub tcp_flags: u8,
    /// `skc_cookie`; 0 when the socket never had one.
    pub sk_cookie: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Inode number of the socket's file (as in `/proc/PID/fd` `socket:[N]`), read when the owner
    /// map has no owner: userspace finds the process holding it.
    pub socket_ino: u64,
    /// The socket's owner from the owner map (`tgid` 0: none known).
    pub owner: Owner,
    /// Who closed this connection, for sockets past close().
    pub closed: ClosedConnection,
    /// The queue the segment met at the socket (a listener's accept queue, any other socket's
    /// receive memory) and its limit: for queue drops and for resets whose ends come from the
    /// segment (see `endpoints`).
    pub queue_len: u32,
    pub queue_max: u32,
    /// The connection's two ends where the record has none: queue drops (their tracepoint
    /// carries no addresses), resets seen by the probes (no record), a listener's reset of a
    /// stray segment (the segment's source is the remote end), and BTF tracepoint events.
    pub endpoints: Endpoints,
    /// With `--stack`: the kernel stack's id in the `STACKS` map; negative when none.
    pub stack_id: i64,
    /// The socket's address (with [`facts::FROM_ARGS`]; the raw record has it otherwise).
    pub sk: u64,
    /// `enum sk_rst_reason` (with [`facts::REASON`]).
    pub reason: u32,
    pub _pad: u32,
    /// For a received reset: the other end of the connection, when it is on this host and was
    /// aborted (closed with a reset) just before; `ns` 0 when not.
    pub peer_abort: Abort,
}

/// A connection this host aborted: closed with a reset (SO_LINGER 0, close() with unread data,
/// a listener closed with the connection still queued). Kept so that a reset the other end
/// receives on this host takes its cause from here, even when the sender's own event was folded
/// or lost: the state change fires just before the reset is sent. Keyed by the aborting end's
/// [`ConnectionKey`] with `netns` 0: the two ends may be in different namespaces.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Abort {
    /// The task that closed it.
    pub closer: Owner,
    /// CLOCK_MONOTONIC of the close; 0: no abort recorded.
    pub ns: u64,
    /// [`facts::LINGER_ZERO`] and [`facts::HAS_SOCKET_FILE`] as they were at the close.
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// A process, as recorded when it owned or closed a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Process id; 0 when no process is recorded.
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC when it was recorded.
    pub since_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// The process id in its own (innermost) PID namespace, read from the task when it was
    /// recorded: /proc may be gone by the time userspace looks. 0 when not read.
    pub ns_tgid: u32,
    pub _pad: u32,
}

/// A listening address: where a listener was bound, in its network namespace. The wildcard
/// addresses (`0.0.0.0`, `::`) are keys of their own; userspace looks them up too.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: u32,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Host order.
    pub port: u16,
    /// IPv4 address in the first 4 bytes, or an IPv6 address.
    pub addr: [u8; 16],
}

/// The last listener at a [`ListenerKey`]: who listened there and, once it stopped, who closed
/// it and when. Written by the set-state program on every `LISTEN` transition, never filtered
/// or folded, so that a refused connection can say who last listened where it went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerHistory {
    /// The listening socket's address, to tell its close from another socket's.
    pub sk: u64,
    /// The process that called listen(); `tgid` 0 when the listener predates rst-trace.
    pub owner: Owner,
    /// The process that closed it (`tgid` 0 while it listens).
    pub closer: Owner,
    /// CLOCK_MONOTONIC of the close; 0 while it listens.
    pub closed_ns: u64,
    /// Bits from [`listener_flags`], as they were at listen().
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// Who closed a connection, and when: kept after the socket is gone so that a reset sent later for
/// it (from a time-wait socket) can name the process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedConnection {
    pub closer: Owner,
    pub closed_ns: u64,
}

/// A connection's identity inside a network namespace, as `struct sock_common` stores it: the
/// key of the recently-closed map, built the same way for full and time-wait sockets.
/// 8-byte aligned, like every record type the programs fill: the BPF backend writes aligned
/// structs with word stores, unaligned ones with a call to a byte-at-a-time memset.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionKey {
    pub netns: u32,
    pub family: u16,
    /// Local port, host order.
    pub local_port: u16,
    /// Remote port, network order as the kernel keeps it.
    pub remote_port_be: u16,
    pub _pad: [u8; 6],
    /// IPv4 addresses in the first 4 bytes, or IPv6 addresses.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A connection's two ends, host order ports: this host's (from the socket, or the segment's
/// destination when there is no socket) and the remote one (the socket's peer, or the
/// segment's source).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// AF_INET or AF_INET6; 0 when not read.
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

// ---- Layouts: what userspace hands the programs. ----

/// Offsets the programs read at, resolved by userspace at start-up: tracepoint record fields from
/// tracefs format files, kernel struct members from BTF. [`NO_OFFSET`] turns a read off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    // Tracepoint records.
    pub send_reset_skaddr: u32,
    pub send_reset_skbaddr: u32,
    pub receive_reset_skaddr: u32,
    pub set_state_skaddr: u32,
    pub set_state_oldstate: u32,
    pub set_state_newstate: u32,
    pub set_state_protocol: u32,
    pub destroy_sock_skaddr: u32,
    pub sys_exit_ret: u32,
    // struct sock_common (shared by full, time-wait and request sockets).
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_cookie: u32,
    pub net_inum: u32,
    // struct sock, inet_timewait_sock, tcp_sock.
    pub sk_socket: u32,
    pub sk_flags: u32,
    pub sk_lingertime: u32,
    /// Bit number of SOCK_LINGER in `sk_flags`.
    pub sock_linger_bit: u32,
    pub tw_substate: u32,
    pub tcp_snd_una: u32,
    pub tcp_snd_nxt: u32,
    pub tcp_bytes_acked: u32,
    pub tcp_bytes_received: u32,
    pub tcp_data_segs_out: u32,
    // Queue drops: skb:kfree_skb's record, and queue lengths and limits in struct sock.
    pub kfree_skb_reason: u32,
    pub kfree_skb_rx_sk: u32,
    pub kfree_skb_skbaddr: u32,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    pub sk_rmem_alloc: u32,
    pub sk_rcvbuf: u32,
    // struct sk_buff and what leads from it to a network namespace.
    pub skb_sk: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// `sk_buff.tail`: where the linear data ends, as an offset from `head` (64-bit kernels).
    pub skb_tail: u32,
    pub skb_dev: u32,
    pub dev_nd_net: u32,
    // From a task to the socket behind a file descriptor.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// From a `struct socket` to its inode number (`socket_alloc.vfs_inode.i_ino`).
    pub socket_ino: u32,
    /// `inet_sock.inet_sport`: a full socket's local port, which stays set after close() clears
    /// `skc_num` (what the classic tracepoints record).
    pub inet_sport: u32,
    /// `sock.sk_protocol`, read as one byte (a bitfield before 5.6, whose byte this is).
    pub sk_protocol: u32,
    /// `task_struct.comm`: BTF programs read the running task's name with plain loads.
    pub task_comm: u32,
    /// From a task to its cgroup v2 id (`task->cgroups->dfl_cgrp->kn->id`, what
    /// `bpf_get_current_cgroup_id` returns), for BTF programs.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// From a task to its process id in its own PID namespace:
    /// `task->group_leader->thread_pid->numbers[level].nr` (`upid_size` is `sizeof(struct upid)`).
    pub task_group_leader: u32,
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_nr: u32,
    pub upid_size: u32,
    /// Bit offset of `sock_common.skc_ipv6only` (a bitfield).
    pub skc_ipv6only_bit: u32,
    // Listener queues, read by the listener iterator from every open socket file.
    /// `file.f_inode` and `inode.i_mode`: tells a socket file from any other.
    pub file_f_inode: u32,
    pub inode_i_mode: u32,
    /// `sock.sk_drops`: what `tcp_listendrop` bumps for every SYN or final ACK a listener drops.
    pub sk_drops: u32,
    /// `inet_connection_sock.icsk_accept_queue.qlen`: the listener's SYN queue length.
    pub icsk_accept_queue_qlen: u32,
    /// `task_struct.tgid`: the process holding the file, as the init PID namespace numbers it.
    pub task_tgid: u32,
    /// Keeps the struct a multiple of 8 bytes (no hidden padding).
    pub _pad: u32,
    pub states: TcpStates,
}

/// One TCP listening socket as the listener iterator (`iter/task_file`) finds it behind an open
/// file: written with `bpf_seq_write`, read by userspace from the iterator's file once a second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerRecord {
    /// Inode of the socket's file: the listener's identity across passes.
    pub socket_ino: u64,
    /// `sk_drops`: SYNs and final ACKs this listener dropped since it was created.
    pub drops: u32,
    pub netns: u32,
    /// The process holding the file (one of them, when several share it).
    pub tgid: u32,
    /// Connections waiting for `accept()` (`sk_ack_backlog`).
    pub accept_len: u32,
    /// The backlog in force (`sk_max_ack_backlog`).
    pub accept_max: u32,
    /// Request sockets in the SYN queue.
    pub syn_queue: u32,
    pub family: u16,
    /// Local port, host order.
    pub port: u16,
    pub _pad: u32,
    /// Local address: 4 bytes for IPv4, 16 for IPv6.
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}

/// Keys folded at most per epoch (the folded maps are drained and emptied every second); an
/// event whose key finds the map full is sent on its own instead.
pub const MAX_FOLD_KEYS: u32 = 4096;

/// Keys whose rate the programs keep (least recently used ones make room).
pub const MAX_RATE_KEYS: u32 = 16384;

/// What decides whether two events are "the same" for folding: their kind, the facts their cause
/// comes from, where they happened and whose they are. The ephemeral end's port is not part of
/// it (it changes with every connection); the service end's port is.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FoldKey {
    /// The owner's (or closer's) cgroup v2 id; 0 when the event has no owner.
    pub cgroup_id: u64,
    /// `enum sk_rst_reason`, with [`facts::REASON`] in `flags`.
    pub reason: u32,
    pub netns: u32,
    /// The owner's (or closer's) process id; 0: none.
    pub tgid: u32,
    /// A [`RecordKind`] as u8.
    pub kind: u8,
    pub sk_state: u8,
    /// The [`facts`] bits that causes are decided by.
    pub flags: u8,
    pub tcp_flags: u8,
    pub tw_substate: u8,
    /// 1: too many new keys this second, the remote address is left out; 2: too many of those
    /// too, the service port is left out as well.
    pub coarse: u8,
    pub family: u16,
    /// The port listened on or connected to.
    pub service_port: u16,
    /// 1: the service end is this host's end (`local_addr`).
    pub service_local: u8,
    pub _pad: u8,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// How many events of a key the programs saw in one second (`window`, in seconds of
/// CLOCK_MONOTONIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub window: u64,
    pub seen: u64,
}

/// A CPU's count of one folded key in one epoch, kept in a per-CPU array slot (one per record
/// kind and epoch) rather than a hash map: a storm's events on a CPU are mostly of one key per
/// kind, and comparing a key costs less than hashing it into two maps. The slot is free while
/// `count.count` is 0; `second` is the second of CLOCK_MONOTONIC of its last event, within which
/// the key's rate is known to be past `--fold-after` already. Userspace adds the slots to the
/// count maps' totals of the same key and empties them with the maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HotCount {
    pub key: FoldKey,
    pub count: FoldCount,
    pub second: u64,
}

/// [`HotCount`] slots per epoch, chosen by record kind.
pub const HOT_SLOTS: u32 = 4;

/// The events of one key that were counted instead of sent, and the first of them as it would
/// have been sent (header, facts and, from classic tracepoints, the raw record), so that
/// userspace explains a folded key exactly as it explains a single event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FoldedEvents {
    pub count: u64,
    /// CLOCK_MONOTONIC of the first and last event counted.
    pub first_ns: u64,
    pub last_ns: u64,
    pub record: RawTracepoint,
}

/// One CPU's count of a folded key's events in one epoch, with when the first and last of them
/// happened (CLOCK_MONOTONIC). Counted per CPU, so that CPUs folding the same storm never write
/// the same cache line; userspace adds them up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FoldCount {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl FoldCount {
    /// Adds another count of the same key: the sum, the earlier first and the later last event.
    /// An empty count (0 events) takes the other's times.
    #[inline(always)]
    pub fn add(&mut self, other: &FoldCount) {
        if self.count == 0 || other.first_ns < self.first_ns {
            self.first_ns = other.first_ns;
        }
        if other.last_ns > self.last_ns {
            self.last_ns = other.last_ns;
        }
        self.count += other.count;
    }
}

/// TCP state numbers of the running kernel (from its tracefs tables), for the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpStates {
    pub established: u32,
    pub syn_sent: u32,
    pub syn_recv: u32,
    pub fin_wait1: u32,
    pub time_wait: u32,
    pub close: u32,
    pub close_wait: u32,
    pub last_ack: u32,
    pub listen: u32,
    pub new_syn_recv: u32,
}

// ---- Constants, record kinds and flag bits. ----

/// Bytes of the tracepoint record copied into each event. The largest record we read
/// (`tcp:tcp_send_reset` on 6.10+) is 88 bytes; userspace refuses a layout whose fields end later.
pub const RAW_LEN: usize = 96;

/// Bytes of a packet copied with `--pcap`: the longest IPv4 header (60), the longest TCP header
/// (60) and 64 bytes of payload.
pub const PACKET_BYTES: usize = 184;

/// Length of a task's `comm`, as the kernel defines `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Drop reasons are numbered below this; the kernel program keeps a bitmap of the queue ones.
pub const MAX_DROP_REASONS: usize = 256;

/// Distinct kernel stacks kept for `--stack`.
pub const MAX_STACKS: u32 = 16384;

/// Entries in the kernel-side `--pid` filter map.
pub const MAX_PID_FILTER: u32 = 64;

/// Entries in the kernel-side `--port` and `--netns` filter maps.
pub const MAX_PORT_FILTER: u32 = 64;
pub const MAX_NETNS_FILTER: u32 = 64;

/// Cgroups a kernel-side `--cgroup` filter can hold, and the cgroup ids it remembers as lying
/// under one of them.
pub const MAX_CGROUP_FILTER: u32 = 16;
pub const MAX_KEPT_CGROUPS: u32 = 4096;

/// Value of an offset that userspace could not resolve: the programs skip that read.
pub const NO_OFFSET: u32 = u32::MAX;

/// Value of [`SocketFacts::sk_state`] when no socket state was read.
pub const NO_SK_STATE: u8 = 0xff;

/// Entries in the socket-owner map, and in the map of recently closed connections.
pub const MAX_OWNED_SOCKETS: u32 = 32768;
/// Listening addresses remembered (least recently used ones make room).
pub const MAX_LISTENER_ADDRESSES: u32 = 8192;

/// TCP listeners the programs keep (`LISTENERS`), for the listener iterator's passes: listeners
/// past it are not watched until others close (the map is full). 32768 entries cost 3.6 MB of
/// kernel memory (preallocated: kernels before 6.1 allow no other hash map in tracing programs).
pub const MAX_LISTENERS: u32 = 32768;
pub const MAX_CLOSED_CONNECTIONS: u32 = 16384;

/// What a record in the ring buffer describes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// `tcp:tcp_send_reset` fired: this host sent a RST.
    ResetSent = 1,
    /// `tcp:tcp_receive_reset` fired: a socket on this host received a RST.
    ResetReceived = 2,
    /// `skb:kfree_skb` fired with a queue-overflow reason.
    QueueDrop = 3,
    /// A probe on `tcp_v4_send_reset`/`tcp_v6_send_reset` saw a reset sent with no socket
    /// (kernels before 6.10, whose tracepoint does not fire then). No tracepoint record follows.
    ResetSentNoSocket = 4,
}

/// Bits of [`ListenerHistory::flags`].
pub mod listener_flags {
    /// An IPv6 listener with IPV6_V6ONLY: it never took IPv4 connections.
    pub const IPV6_ONLY: u8 = 1;
}

/// Bits of [`SocketFacts::flags`].
pub mod facts {
    /// The socket had SO_LINGER on with a zero timeout.
    pub const LINGER_ZERO: u8 = 1;
    /// `sk->sk_socket` was set: a process holds (or held until now) a file for this socket.
    pub const HAS_SOCKET_FILE: u8 = 2;
    /// Fields of a full socket (not a time-wait or request socket) were read.
    pub const FULL_SOCKET: u8 = 4;
    /// `tcp_flags` holds the flags of the segment that caused a reset.
    pub const SEGMENT: u8 = 8;
    /// This host had sent data on the connection, and all of it had been acknowledged.
    pub const ALL_SENT_ACKED: u8 = 16;
    /// `reason` holds the tracepoint's reset reason.
    pub const REASON: u8 = 32;
    /// From a BTF tracepoint: there is no raw record; the socket (`sk`), `reason`, state,
    /// cookie and both ends are all in the facts.
    pub const FROM_ARGS: u8 = 64;
}

// ---- Methods. ----

impl RecordKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::ResetSent),
            2 => Some(Self::ResetReceived),
            3 => Some(Self::QueueDrop),
            4 => Some(Self::ResetSentNoSocket),
            _ => None,
        }
    }
}

impl KernelOffsets {
    /// Every read off.
    pub const NONE: Self = Self {
        send_reset_skaddr: NO_OFFSET,
        send_reset_skbaddr: NO_OFFSET,
        receive_reset_skaddr: NO_OFFSET,
        set_state_skaddr: NO_OFFSET,
        set_state_oldstate: NO_OFFSET,
        set_state_newstate: NO_OFFSET,
        set_state_protocol: NO_OFFSET,
        destroy_sock_skaddr: NO_OFFSET,
        sys_exit_ret: NO_OFFSET,
        skc_daddr: NO_OFFSET,
        skc_rcv_saddr: NO_OFFSET,
        skc_dport: NO_OFFSET,
        skc_num: NO_OFFSET,
        skc_family: NO_OFFSET,
        skc_state: NO_OFFSET,
        skc_net: NO_OFFSET,
        skc_v6_daddr: NO_OFFSET,
        skc_v6_rcv_saddr: NO_OFFSET,
        skc_cookie: NO_OFFSET,
        net_inum: NO_OFFSET,
        sk_socket: NO_OFFSET,
        sk_flags: NO_OFFSET,
        sk_lingertime: NO_OFFSET,
        sock_linger_bit: NO_OFFSET,
        tw_substate: NO_OFFSET,
        tcp_snd_una: NO_OFFSET,
        tcp_snd_nxt: NO_OFFSET,
        tcp_bytes_acked: NO_OFFSET,
        tcp_bytes_received: NO_OFFSET,
        tcp_data_segs_out: NO_OFFSET,
        kfree_skb_reason: NO_OFFSET,
        kfree_skb_rx_sk: NO_OFFSET,
        kfree_skb_skbaddr: NO_OFFSET,
        sk_ack_backlog: NO_OFFSET,
        sk_max_ack_backlog: NO_OFFSET,
        sk_rmem_alloc: NO_OFFSET,
        sk_rcvbuf: NO_OFFSET,
        skb_sk: NO_OFFSET,
        skb_head: NO_OFFSET,
        skb_network_header: NO_OFFSET,
        skb_transport_header: NO_OFFSET,
        skb_tail: NO_OFFSET,
        skb_dev: NO_OFFSET,
        dev_nd_net: NO_OFFSET,
        file_f_inode: NO_OFFSET,
        inode_i_mode: NO_OFFSET,
        sk_drops: NO_OFFSET,
        icsk_accept_queue_qlen: NO_OFFSET,
        task_tgid: NO_OFFSET,
        task_files: NO_OFFSET,
        files_fdt: NO_OFFSET,
        fdt_fd: NO_OFFSET,
        file_private_data: NO_OFFSET,
        socket_sk: NO_OFFSET,
        socket_ino: NO_OFFSET,
        inet_sport: NO_OFFSET,
        sk_protocol: NO_OFFSET,
        task_comm: NO_OFFSET,
        task_cgroups: NO_OFFSET,
        css_set_dfl_cgrp: NO_OFFSET,
        cgroup_kn: NO_OFFSET,
        kernfs_node_id: NO_OFFSET,
        task_group_leader: NO_OFFSET,
        task_thread_pid: NO_OFFSET,
        pid_level: NO_OFFSET,
        pid_numbers: NO_OFFSET,
        upid_nr: NO_OFFSET,
        upid_size: NO_OFFSET,
        skc_ipv6only_bit: NO_OFFSET,
        _pad: 0,
        states: TcpStates {
            established: NO_OFFSET,
            syn_sent: NO_OFFSET,
            syn_recv: NO_OFFSET,
            fin_wait1: NO_OFFSET,
            time_wait: NO_OFFSET,
            close: NO_OFFSET,
            close_wait: NO_OFFSET,
            last_ack: NO_OFFSET,
            listen: NO_OFFSET,
            new_syn_recv: NO_OFFSET,
        },
    };
}

/// What only userspace needs: aya's `Pod`, so that the loader can read records and maps and
/// write the globals as bytes.
#[cfg(feature = "user")]
mod user {
    use super::{
        Abort, ClosedConnection, ConnectionKey, EventHeader, FoldCount, FoldKey, FoldedEvents,
        HotCount, KernelOffsets, ListenerHistory, ListenerKey, ListenerRecord, Owner,
        RawTracepoint, RecordWithPacket,
    };

    // SAFETY (all fourteen): `#[repr(C)]`, `Copy`, fields of plain integers and byte arrays, so every
    // bit pattern is a valid value, and no hidden padding (`layouts_have_no_hidden_padding`).
    unsafe impl aya::Pod for EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RawTracepoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: repr(C), integer fields only, no padding (72 bytes, 8-aligned).
    unsafe impl aya::Pod for ListenerRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnectionKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ClosedConnection {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Owner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Abort {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FoldKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FoldedEvents {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FoldCount {}
    // SAFETY: as above.
    unsafe impl aya::Pod for HotCount {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RecordWithPacket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerHistory {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<EventHeader>(), 48);
        assert_eq!(core::mem::size_of::<Owner>(), 48);
        assert_eq!(core::mem::size_of::<FoldCount>(), 24);
        assert_eq!(core::mem::size_of::<HotCount>(), 64 + 24 + 8);
        assert_eq!(core::mem::size_of::<ConnectionKey>(), 48);
        assert_eq!(core::mem::size_of::<ClosedConnection>(), 56);
        assert_eq!(core::mem::size_of::<Endpoints>(), 40);
        assert_eq!(
            core::mem::size_of::<SocketFacts>(),
            8 + 32 + 48 + 56 + 8 + 40 + 8 + 16 + 64
        );
        assert_eq!(core::mem::size_of::<Abort>(), 64);
        assert_eq!(core::mem::size_of::<ListenerKey>(), 24);
        assert_eq!(core::mem::size_of::<ListenerHistory>(), 8 + 48 + 48 + 8 + 8);
        assert_eq!(core::mem::size_of::<RawTracepoint>(), 48 + 280 + RAW_LEN);
        assert_eq!(core::mem::size_of::<ArgsRecord>(), 48 + 280);
        assert_eq!(core::mem::size_of::<KernelOffsets>() % 8, 0);
        assert_eq!(core::mem::size_of::<FoldKey>(), 64);
        assert_eq!(
            core::mem::size_of::<FoldedEvents>(),
            24 + 48 + 280 + RAW_LEN
        );
        assert_eq!(core::mem::size_of::<Packet>(), 8 + PACKET_BYTES);
        assert_eq!(
            core::mem::size_of::<RecordWithPacket>(),
            core::mem::size_of::<RawTracepoint>() + core::mem::size_of::<Packet>()
        );
        assert_eq!(core::mem::size_of::<Packet>() % 8, 0);
        // The kernel's ring buffer aligns records to 8 bytes; keep the record a multiple of it.
        assert_eq!(core::mem::size_of::<RawTracepoint>() % 8, 0);
    }

    #[test]
    fn record_kind_round_trips() {
        for kind in [
            RecordKind::ResetSent,
            RecordKind::ResetReceived,
            RecordKind::QueueDrop,
            RecordKind::ResetSentNoSocket,
        ] {
            assert_eq!(RecordKind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(RecordKind::from_u8(0), None);
    }
}
