//! What the programs read from a socket: its first bytes at once ([`SockHead`]), the
//! connection's identity (the key of the recently-closed map), its own two ends, its owner and
//! closer from the maps, and the facts about it a reset's cause needs (state, flags, linger,
//! acknowledged bytes, queue depth). Time-wait and request sockets are smaller objects than full
//! ones: only `sock_common` is read from them.

use aya_ebpf::helpers::generated;
use rst_trace_common::{
    ConnectionKey, Endpoints, ListenerKey, NO_OFFSET, NO_SK_STATE, RecordKind, SocketFacts, facts,
};

use crate::read::{Access, copy, copy_in, field, load, read_into};
use crate::{ABORTS, CLOSED, OWNERS};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Bytes of `struct sock_common` read at once from its start: the IPv4 address pair, the port
/// pair, family and state sit there on every kernel (`skc_addrpair`, `skc_portpair`), so one
/// probe read replaces six. Fields beyond it are read on their own.
const SOCK_HEAD_LEN: usize = 24;

/// Word-sized fields only: the BPF backend zeroes and copies anything else byte by byte.
pub struct SockHead<A> {
    bytes: [u64; SOCK_HEAD_LEN / 8],
    valid: u64,
    access: core::marker::PhantomData<A>,
}

impl<A: Access> SockHead<A> {
    #[inline(always)]
    /// Fills a zeroed head from `sk` (plain loads need no copy).
    pub fn fill(&mut self, sk: u64) {
        if sk != 0 && !A::DIRECT {
            // SAFETY: the buffer has SOCK_HEAD_LEN bytes.
            let read = unsafe { copy_in(self.bytes.as_mut_ptr().cast(), SOCK_HEAD_LEN, sk) };
            self.valid = u64::from(read);
        }
    }

    /// A member of `sk` at a BTF offset: from the head when it lies there, else read.
    #[inline(always)]
    pub fn field<T: Copy>(&self, sk: u64, offset: u32) -> Option<T> {
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
    pub fn ipv4(&self, sk: u64, offset: u32, out: &mut [u8; 16]) -> bool {
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

/// What the socket behind a reset says about it. Fields beyond `sock_common` are read only from
/// full sockets: a time-wait or request socket is a smaller object.
#[inline(always)]
pub fn socket_facts<A: Access>(
    sk: u64,
    head: &SockHead<A>,
    kind: RecordKind,
    facts: &mut SocketFacts,
) {
    facts.sk_state = head
        .field::<u8>(sk, offset!(skc_state))
        .unwrap_or(NO_SK_STATE);
    facts.sk_cookie = if A::DIRECT && global!(crate::SOCKET_COOKIE_HELPER) != 0 {
        // What the classic tracepoints record: the cookie, made now if the socket had none.
        // Tracing programs may call the helper from 5.12 on; before, the cookie is read as it
        // is (0 when nothing asked for it yet).
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
        if linger_zero::<A>(sk) {
            facts.flags |= facts::LINGER_ZERO;
        }
        if state == offset!(states.syn_sent) {
            // A refused connect: nothing was sent, closed or aborted on it (the storm case).
            return;
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
    if !connection_key(sk, head, facts.netns, key) {
        return;
    }
    // SAFETY: the value is copied out at once.
    if let Some(closed) = unsafe { CLOSED.get(key as &ConnectionKey) } {
        // SAFETY: both are valid `ClosedConnection`s.
        unsafe { copy(&raw mut facts.closed, closed) };
    }
    if kind == RecordKind::ResetReceived {
        // The other end's view of the connection: did it abort, on this host, just now?
        let local_port = key.local_port;
        key.local_port = u16::from_be(key.remote_port_be);
        key.remote_port_be = local_port.to_be();
        swap_addresses(key);
        key.netns = 0;
        // SAFETY: the value is copied out at once.
        if let Some(abort) = unsafe { ABORTS.get(key as &ConnectionKey) } {
            // SAFETY: both are valid `Abort`s.
            unsafe { copy(&raw mut facts.peer_abort, abort) };
        }
    }
}

/// SO_LINGER on with a zero timeout: close() aborts the connection with a reset.
#[inline(always)]
pub fn linger_zero<A: Access>(sk: u64) -> bool {
    let linger_bit = offset!(sock_linger_bit);
    linger_bit < 64
        && load::<A, u64>(sk, offset!(sk_flags)).is_some_and(|f| f & (1 << linger_bit) != 0)
        && load::<A, i64>(sk, offset!(sk_lingertime)) == Some(0)
}

/// Swaps a key's local and remote addresses with word loads and stores.
#[inline(always)]
fn swap_addresses(key: &mut ConnectionKey) {
    let local = key.local_addr.as_mut_ptr().cast::<u64>();
    let remote = key.remote_addr.as_mut_ptr().cast::<u64>();
    // SAFETY: both are 16 bytes at 8-byte aligned offsets of an 8-byte aligned key.
    unsafe {
        for i in 0..2 {
            let word = local.add(i).read();
            local.add(i).write(remote.add(i).read());
            remote.add(i).write(word);
        }
    }
}

/// The queue a segment met at this socket, and its limit: a listener's accept queue, any other
/// socket's receive memory. Read for queue drops and for resets whose ends come from the
/// segment (see `record::emit_with`), after [`socket_facts`] has read the state.
#[inline(always)]
pub fn queue_depth(sk: u64, facts: &mut SocketFacts) {
    let listening = u32::from(facts.sk_state) == offset!(states.listen);
    let (len, max) = if listening {
        (offset!(sk_ack_backlog), offset!(sk_max_ack_backlog))
    } else {
        (offset!(sk_rmem_alloc), offset!(sk_rcvbuf))
    };
    facts.queue_len = field::<u32>(sk, len).unwrap_or(0);
    facts.queue_max = field::<u32>(sk, max).unwrap_or(0);
}

/// This host's end as `sock_common` holds it (family, `skc_num`, local address), for a
/// connection whose remote end comes from the segment (`skb::segment_ends`).
#[inline(always)]
pub fn local_end<A: Access>(sk: u64, head: &SockHead<A>, ends: &mut Endpoints) {
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

/// The connection's identity as `sock_common` holds it (same layout in every socket kind),
/// written into `key`; false when the socket is not IPv4 or IPv6.
#[inline(always)]
pub fn connection_key<A: Access>(
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

/// Where a listener listens (its namespace, family, bound address and port), written into
/// `key`; false when the socket is not IPv4 or IPv6 or has no port yet. The port comes from
/// `inet_sport`: closing a listener clears `skc_num` before the state change is traced.
#[inline(always)]
pub fn listener_key<A: Access>(sk: u64, head: &SockHead<A>, key: &mut ListenerKey) -> bool {
    let Some(family) = head.field::<u16>(sk, offset!(skc_family)) else {
        return false;
    };
    key.netns = netns_of_sock::<A>(sk);
    key.family = family;
    key.port = load::<A, u16>(tcp_sock::<A>(sk), offset!(inet_sport)).map_or(0, u16::from_be);
    if key.port == 0 {
        key.port = head.field::<u16>(sk, offset!(skc_num)).unwrap_or(0);
    }
    let read = match family {
        AF_INET => head.ipv4(sk, offset!(skc_rcv_saddr), &mut key.addr),
        AF_INET6 => read_into(sk, offset!(skc_v6_rcv_saddr), &mut key.addr, 16),
        _ => false,
    };
    read && key.port != 0
}

/// The network namespace's inode number (`sk->__sk_common.skc_net->ns.inum`).
#[inline(always)]
pub fn netns_of_sock<A: Access>(sk: u64) -> u32 {
    load::<A, u64>(sk, offset!(skc_net))
        .and_then(|net| load::<A, u32>(net, offset!(net_inum)))
        .unwrap_or(0)
}

/// This socket's own ends, as the classic tracepoints record them: from `sock_common`, with a
/// full socket's local port from `inet_sport` (close() has cleared `skc_num` by the time it
/// sends a reset).
#[inline(always)]
pub fn socket_ends<A: Access>(sk: u64, head: &SockHead<A>, full: bool, ends: &mut Endpoints) {
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
pub fn tcp_sock<A: Access>(sk: u64) -> u64 {
    if A::DIRECT {
        // SAFETY: `sk` is a typed socket pointer, as the helper requires.
        unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) as u64 }
    } else {
        sk
    }
}
