//! What the programs read from a segment's `sk_buff`: its IP and TCP headers in one probe read
//! ([`Segment`]), the flags and namespace of a segment that found no socket, and a connection's
//! two ends as the segment carries them, for records that have none of their own.

use rst_trace_common::{Endpoints, PACKET_BYTES, Packet, SocketFacts, facts};

use crate::read::{Access, copy_in, load};
use crate::sock::{AF_INET, AF_INET6};

/// The flags byte of a TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// Where a segment's headers are, read once from its `sk_buff`: the first 64 bytes from the IP
/// header on, which hold the TCP header's ports and flags too when the IP header has no options
/// (20 bytes for IPv4, 40 for IPv6), so that one probe read serves both.
pub struct Segment {
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
    pub fn fill<A: Access>(&mut self, skb: u64) {
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

/// With `--pcap`: the packet's first [`PACKET_BYTES`] from its IP header on, in one probe read,
/// and how many of them are the packet's linear data (userspace keeps no more). False when the
/// skb has no IP header to start from. Reading past a short packet's end reads the buffer's
/// unused room or its `skb_shared_info`, which follow the data in the same allocation.
///
/// # Safety
/// `packet` must be valid for writes.
#[inline(always)]
pub unsafe fn copy_packet<A: Access>(skb: u64, packet: *mut Packet) -> bool {
    let head = load::<A, u64>(skb, offset!(skb_head)).unwrap_or(0);
    let network = load::<A, u16>(skb, offset!(skb_network_header)).unwrap_or(u16::MAX);
    let tail = load::<A, u32>(skb, offset!(skb_tail)).unwrap_or(0);
    if head == 0 || network == u16::MAX || tail <= u32::from(network) {
        return false;
    }
    // SAFETY: per the caller; `bytes` has PACKET_BYTES bytes.
    unsafe {
        (*packet).linear_len = tail - u32::from(network);
        (*packet)._pad = 0;
        copy_in(
            (&raw mut (*packet).bytes).cast(),
            PACKET_BYTES,
            head + u64::from(network),
        )
    }
}

/// The flags of the segment a reset answers and, when there is no socket to say so, the
/// namespace it arrived in.
#[inline(always)]
pub fn segment_facts<A: Access>(segment: &Segment, no_socket: bool, facts: &mut SocketFacts) {
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

/// A connection's two ends from the segment that met it: its source is the remote end; its
/// destination is this host's end where the socket gave none (`sock::local_end` fills that
/// first when there is a socket). For records without ends of their own: a reset sent with no
/// socket, a listener's reset of a stray segment, a queue drop.
#[inline(always)]
pub fn segment_ends(segment: &Segment, ends: &mut Endpoints) {
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
pub fn copy_address(from: *const u8, to: &mut [u8; 16], len: usize) {
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
