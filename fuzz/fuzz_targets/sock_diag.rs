//! What the kernel answers the listener sampler: one sock_diag dump datagram (netlink messages
//! back to back) -> `listeners::parse_sock_diag_datagram`, then the listener queues built from the
//! sockets it reported; and /proc/net/netstat text -> `listeners::parse_netstat`.
//!
//! To fuzz another parser of kernel replies (a BPF iterator's records, say), point `replies`
//! at it: the target only needs a function from bytes to a result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rst_trace::listeners;

fn replies(datagram: &[u8]) {
    let mut sockets = Vec::new();
    if listeners::parse_sock_diag_datagram(datagram, &mut sockets).is_ok() {
        std::hint::black_box(listeners::listener_queues(1, &sockets));
    }
}

fuzz_target!(|data: &[u8]| {
    replies(data);
    if let Ok(text) = std::str::from_utf8(data) {
        std::hint::black_box(listeners::parse_netstat(text).ok());
    }
});
