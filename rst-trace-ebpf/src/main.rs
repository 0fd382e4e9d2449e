//! The kernel side of rst-trace: small and boring on purpose.
//!
//! Two programs report resets (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`): they read what
//! only the kernel can know at that moment (the socket's state, owner and flags, the segment that
//! found no socket), filter early, reserve a ring buffer record, copy the tracepoint's raw record
//! verbatim and submit. Three more keep the socket-owner map current from connection set-up and
//! teardown only (connect, listen, accept, close, destroy), never from per-packet or per-send
//! events, and remember the last listener on each address (`LAST_LISTENERS`). Decoding, naming and
//! every decision that needs a table live in userspace. A record that does not fit in the ring
//! buffer is counted in `LOST`, never dropped silently. With `--pcap` (`PCAP`), a record sent
//! about a packet (a reset's segment, a dropped packet) carries the packet's first bytes
//! ([`skb::copy_packet`]); without it, the verifier prunes that code.
//!
//! Where the kernel takes BTF tracepoints, `*_btf` twins of the reset, set-state and destroy
//! programs serve those tracepoints instead: the same code (generic over [`read::Access`]) reading
//! kernel structs with plain loads rather than a probe read per field, and putting what the raw
//! record would hold into the facts. Nothing here zeroes or copies a byte array by assignment:
//! the BPF backend turns that into a byte-at-a-time loop (see [`read::zero`]).
//!
//! This file declares the maps and the globals userspace sets at load time; the programs are in
//! [`programs`] (one file per hook family), and what they share in [`record`] (building and
//! submitting a record), [`sock`] (socket reads), [`skb`] (segment reads), [`task`] (the running
//! task) and [`read`] (probe reads and plain loads).
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use rst_trace_common::{
    Abort, ClosedConnection, ConnectionKey, KernelOffsets, ListenerHistory, ListenerKey,
    MAX_CLOSED_CONNECTIONS, MAX_DROP_REASONS, MAX_LISTENER_ADDRESSES, MAX_LISTENERS,
    MAX_OWNED_SOCKETS, MAX_PID_FILTER, MAX_STACKS, Owner,
};

#[macro_use]
mod macros;
mod filter;
mod fold;
mod programs;
mod read;
mod record;
mod skb;
mod sock;
mod task;

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

/// TCP listener (socket address) -> the process that listened, or that held its file when the
/// first listener pass found it: what each later pass walks (`iter/bpf_map_elem`), so that a
/// pass costs as many steps as there are listeners, not open files. Not LRU: a listener must
/// not be pushed out by others; entries go when the listener closes or is destroyed, or when a
/// pass finds the socket is no listener any more.
#[map]
static LISTENERS: HashMap<u64, Owner> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Connection -> who closed it and when, kept after the socket is gone.
#[map]
static CLOSED: LruHashMap<ConnectionKey, ClosedConnection> =
    LruHashMap::with_max_entries(MAX_CLOSED_CONNECTIONS, 0);

/// Connection (the aborting end's view) -> who aborted it and how, read by the other end's
/// received reset when both ends are on this host (see `Abort`).
#[map]
static ABORTS: LruHashMap<ConnectionKey, Abort> =
    LruHashMap::with_max_entries(MAX_CLOSED_CONNECTIONS, 0);

/// Listening address -> its last listener: who listened and who closed it when (see
/// `ListenerHistory`). Userspace reads it for refused connections and queued ones.
#[map]
static LAST_LISTENERS: LruHashMap<ListenerKey, ListenerHistory> =
    LruHashMap::with_max_entries(MAX_LISTENER_ADDRESSES, 0);

/// Kernel stacks of events, with `--stack`.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(MAX_STACKS, 0);

/// The benchmark reference program's own ring buffer (see `programs::bench`). Tiny here,
/// because every load of the object creates it; `bench-reference` sizes it up at load time.
#[map]
static BENCH_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Bytes waiting in `EVENTS` whose crossing wakes the reader (set from the ring size).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u32 = 0;

/// Set by userspace when `--stack` is given: stacks cost a walk per event.
#[unsafe(no_mangle)]
static RECORD_STACKS: u8 = 0;

/// Set by userspace when `tcp:tcp_send_reset` passes a reason (6.10+): its third argument.
#[unsafe(no_mangle)]
static SEND_RESET_REASON_ARG: u8 = 0;

/// Set by userspace when BTF tracepoint programs may call `bpf_get_socket_cookie` (5.12+);
/// the verifier drops the call where it is 0.
#[unsafe(no_mangle)]
static SOCKET_COOKIE_HELPER: u8 = 0;

/// Set by userspace when `--pcap` is given: records about a packet carry its first bytes.
#[unsafe(no_mangle)]
static PCAP: u8 = 0;

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
