//! `--port` and `--netns` in the kernel: an event whose ends use none of the ports, or that
//! happened in none of the namespaces, is dropped before it is folded or sent, so a storm the
//! operator filtered out costs only this check. (`--pid` is checked earlier, in
//! `record::emit_with`, from the running task and the socket's owner.) Userspace checks the same
//! filters again on the attributed event.

use aya_ebpf::{macros::map, maps::HashMap};
use rst_trace_common::{Endpoints, MAX_NETNS_FILTER, MAX_PORT_FILTER};

/// Ports kept when `FILTER_BY_PORT` is set.
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORT_FILTER, 0);

/// Network namespace inodes kept when `FILTER_BY_NETNS` is set.
#[map]
static NETNS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_NETNS_FILTER, 0);

/// Set by userspace when `--port` is given.
#[unsafe(no_mangle)]
static FILTER_BY_PORT: u8 = 0;

/// Set by userspace when `--netns` is given.
#[unsafe(no_mangle)]
static FILTER_BY_NETNS: u8 = 0;

/// Whether an event with these ends, in this namespace, passes `--port` and `--netns`.
#[inline(always)]
pub fn keeps(ends: &Endpoints, netns: u32) -> bool {
    if global!(FILTER_BY_PORT) != 0 {
        // SAFETY: the values are only tested for presence.
        let kept = |port: u16| port != 0 && unsafe { PORTS.get(port) }.is_some();
        if !kept(ends.local_port) && !kept(ends.remote_port) {
            return false;
        }
    }
    // SAFETY: as above.
    global!(FILTER_BY_NETNS) == 0 || unsafe { NETNS.get(netns) }.is_some()
}
