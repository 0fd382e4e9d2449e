//! Listener drops from the listener iterators: a pass finds every TCP listener of every network
//! namespace with its queues and its drop counter (`sk_drops`, which `tcp_listendrop` bumps for
//! each SYN or final ACK the listener drops), and the process holding it. Nothing here enters a
//! namespace or dumps a socket table each second.
//!
//! The first pass walks every open file on the host (`iter/task_file`): it finds the listeners
//! that were there before rst-trace and puts them in the kernel's `LISTENERS` map, which the
//! owner programs keep from then on (`listen()` adds, close removes). Every later pass walks
//! only that map (`iter/bpf_map_elem`, [`MapPasses`]), so its cost grows with listeners, not
//! with open files, namespaces or the established hash. A pass over the map holds no socket
//! file, so a process closing a listener during a pass still does the close's last release
//! (and sends its resets) itself. Where the kernel refuses the map iterator, every pass walks
//! the open files.
//!
//! `sk_drops` does not say which queue was full; the namespace's counters (`ListenOverflows`,
//! `TCPReqQFullDrop` in `/proc/PID/net/netstat` of a process in that namespace) do. They are read
//! once when a namespace is first seen and again only when one of its listeners dropped, and each
//! counter's increase is split between the listeners whose `sk_drops` moved, so that the reported
//! drops add up exactly to the counters.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, anyhow, bail};
use aya::{Btf, Ebpf, maps::Map, programs::Iter};
use rst_trace_common::{KernelOffsets, ListenerRecord, NO_OFFSET};

use crate::{
    decoded::Task,
    listeners::{self, DropKind, ListenerDrop, ListenerQueue, NetnsCounters},
};

/// The iterator program's name in the kernel crate.
pub const PROGRAM: &str = "listeners";
/// The map iterator's program, and the map it walks.
pub const MAP_PROGRAM: &str = "listener_map";
const LISTENERS_MAP: &str = "LISTENERS";

/// The offsets the iterator reads; with any missing, listener drops come from sampling.
pub fn usable(offsets: &KernelOffsets) -> Result<(), String> {
    let needed = [
        ("file.f_inode", offsets.file_f_inode),
        ("inode.i_mode", offsets.inode_i_mode),
        ("file.private_data", offsets.file_private_data),
        ("socket.sk", offsets.socket_sk),
        ("socket_alloc.vfs_inode.i_ino", offsets.socket_ino),
        ("sock.sk_protocol", offsets.sk_protocol),
        ("sock.sk_drops", offsets.sk_drops),
        ("sock.sk_ack_backlog", offsets.sk_ack_backlog),
        ("sock.sk_max_ack_backlog", offsets.sk_max_ack_backlog),
        (
            "inet_connection_sock.icsk_accept_queue.qlen",
            offsets.icsk_accept_queue_qlen,
        ),
        ("task_struct.tgid", offsets.task_tgid),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, offset)| *offset == NO_OFFSET)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not in this kernel's BTF: {}", missing.join(", ")))
    }
}

/// Loads the iterator (`iter/task_file`, 5.8+) into `ebpf`, whose globals are already set.
pub fn load(ebpf: &mut Ebpf, btf: &Btf) -> anyhow::Result<()> {
    let program: &mut Iter = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?
        .try_into()?;
    program
        .load("task_file", btf)
        .context("the kernel refused the listener iterator (iter/task_file)")?;
    Ok(())
}

/// Starts one pass: the file to read it from. Each pass is a new link and iterator (a syscall
/// each); the walk itself runs as the file is read.
pub fn start_pass(ebpf: &mut Ebpf) -> anyhow::Result<File> {
    let program: &mut Iter = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?
        .try_into()?;
    let link = program
        .attach()
        .context("cannot create a listener iterator link")?;
    let link = program.take_link(link)?;
    link.into_file()
        .context("cannot open the listener iterator")
}

/// Passes over the kernel's `LISTENERS` map: the map iterator's link, on which each pass opens
/// a new iterator (one syscall; the walk runs as the file is read).
pub struct MapPasses {
    link: OwnedFd,
}

impl MapPasses {
    /// Loads the map iterator (`iter/bpf_map_elem`, 5.8+) into `ebpf` and attaches it to
    /// `LISTENERS`. aya 0.14 attaches iterators to no target, so the link is made here.
    pub fn load(ebpf: &mut Ebpf, btf: &Btf) -> anyhow::Result<Self> {
        let program: &mut Iter = ebpf
            .program_mut(MAP_PROGRAM)
            .ok_or_else(|| anyhow!("program {MAP_PROGRAM} missing from the object"))?
            .try_into()?;
        program
            .load("bpf_map_elem", btf)
            .context("the kernel refused the listener map iterator (iter/bpf_map_elem)")?;
        // Both descriptors belong to `ebpf`, which outlives the link (the link holds its own
        // references to the program and the map once made).
        let program_fd = program.fd()?.as_fd().as_raw_fd();
        let map_fd = match ebpf.map(LISTENERS_MAP) {
            Some(Map::HashMap(data)) => data.fd().as_fd().as_raw_fd(),
            _ => bail!("map {LISTENERS_MAP} missing from the object"),
        };
        let link = map_iter_link(program_fd, map_fd)
            .context("cannot attach the listener map iterator to its map")?;
        Ok(Self { link })
    }

    /// Starts one pass: the file to read it from.
    pub fn start_pass(&self) -> anyhow::Result<File> {
        /// `union bpf_attr` for BPF_ITER_CREATE.
        #[repr(C)]
        struct IterCreate {
            link_fd: u32,
            flags: u32,
        }
        let attr = IterCreate {
            link_fd: self.link.as_raw_fd() as u32,
            flags: 0,
        };
        let fd = bpf(BPF_ITER_CREATE, &attr).context("cannot open the listener map iterator")?;
        Ok(File::from(fd))
    }
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// BPF_LINK_CREATE of an `iter/bpf_map_elem` program for one map.
fn map_iter_link(program_fd: RawFd, map_fd: RawFd) -> anyhow::Result<OwnedFd> {
    /// `union bpf_attr`'s `link_create` with `iter_info`.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        iter_info: u64,
        iter_info_len: u32,
        _pad: u32,
    }
    // `union bpf_iter_link_info`'s `map` (its first member in every kernel).
    let map_fd = map_fd as u32;
    let attr = LinkCreate {
        prog_fd: program_fd as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        iter_info: &raw const map_fd as u64,
        iter_info_len: size_of::<u32>() as u32,
        _pad: 0,
    };
    Ok(bpf(BPF_LINK_CREATE, &attr)?)
}

/// The bpf(2) system call for a command that returns a new descriptor.
fn bpf<T>(command: libc::c_long, attr: &T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `command`, valid for its
    // size, which is passed; the kernel reads only that many bytes (any pointer inside points
    // at a live local of the caller).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reads a pass to its end: every listener once (a socket shared by several processes is
/// reported by the first that holds it), with its `sk_drops`.
pub fn read_pass(mut file: File) -> anyhow::Result<Vec<(ListenerQueue, u32)>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .context("cannot read the listener iterator")?;
    let mut seen = HashSet::new();
    let mut listeners = Vec::new();
    for chunk in bytes.chunks_exact(size_of::<ListenerRecord>()) {
        // SAFETY: the chunk holds exactly one record, written by the kernel program from the
        // same repr(C) type; every bit pattern is valid for its integer fields.
        let record = unsafe { chunk.as_ptr().cast::<ListenerRecord>().read_unaligned() };
        if seen.insert(record.socket_ino) {
            listeners.push((queue_of(&record), record.drops));
        }
    }
    Ok(listeners)
}

fn queue_of(record: &ListenerRecord) -> ListenerQueue {
    let ip = if record.family == 10 {
        IpAddr::V6(Ipv6Addr::from(record.addr))
    } else {
        let [a, b, c, d, ..] = record.addr;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    };
    let comm_len = record.comm.iter().position(|&b| b == 0).unwrap_or(16);
    ListenerQueue {
        netns: u64::from(record.netns),
        local: SocketAddr::new(ip, record.port),
        accept_len: record.accept_len,
        accept_max: record.accept_max,
        syn_queue: record.syn_queue,
        inode: record.socket_ino,
        holder: (record.tgid != 0).then(|| Task {
            pid: record.tgid,
            tid: record.tgid,
            comm: String::from_utf8_lossy(&record.comm[..comm_len]).into_owned(),
            cgroup_id: 0,
            ns_pid: None,
        }),
    }
}

/// A listener as the previous pass left it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    netns: u64,
    drops: u32,
    accept_full: bool,
    syn_full: bool,
}

/// A listener whose `sk_drops` moved since the previous pass.
#[derive(Debug, Clone)]
struct Moved {
    queue: ListenerQueue,
    drops: u64,
    accept_full: bool,
    syn_full: bool,
}

/// Keeps each listener's `sk_drops` and each namespace's counters between passes and turns their
/// increases into drops per listener.
#[derive(Default)]
pub struct IterWatcher {
    previous: Option<HashMap<u64, Seen>>,
    counters: HashMap<u64, NetnsCounters>,
    sources: CounterSources,
}

impl IterWatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// The drops since the previous pass, reading namespace counters from `/proc`.
    pub fn observe(&mut self, pass: Vec<(ListenerQueue, u32)>) -> Vec<ListenerDrop> {
        let mut sources = std::mem::take(&mut self.sources);
        // The host's namespaces are listed at most once a pass, and only if needed.
        sources.namespaces = None;
        let drops = self.observe_with(pass, |netns, holders| sources.read(netns, holders));
        self.sources = sources;
        drops
    }

    /// The drops since the previous pass; `counters` reads a namespace's counters given the
    /// processes holding its listeners. The first pass only sets the baseline; a listener that
    /// appears later counts its drops from its creation (`sk_drops` starts at 0).
    pub fn observe_with(
        &mut self,
        pass: Vec<(ListenerQueue, u32)>,
        mut counters: impl FnMut(u64, &[u32]) -> Option<NetnsCounters>,
    ) -> Vec<ListenerDrop> {
        let first = self.previous.is_none();
        let previous = self.previous.take().unwrap_or_default();
        let mut now = HashMap::new();
        let mut moved: HashMap<u64, Vec<Moved>> = HashMap::new();
        let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
        for (queue, drops) in pass {
            let before = previous.get(&queue.inode);
            let delta = match before {
                Some(before) => u64::from(drops.wrapping_sub(before.drops)),
                None if first => 0,
                None => u64::from(drops),
            };
            let seen = Seen {
                netns: queue.netns,
                drops,
                accept_full: queue.accept_queue_full(),
                syn_full: queue.syn_queue_full(),
            };
            now.insert(queue.inode, seen);
            let pids = holders.entry(queue.netns).or_default();
            if let Some(holder) = &queue.holder {
                pids.push(holder.pid);
            }
            if delta > 0 {
                moved.entry(queue.netns).or_default().push(Moved {
                    accept_full: seen.accept_full || before.is_some_and(|b| b.accept_full),
                    syn_full: seen.syn_full || before.is_some_and(|b| b.syn_full),
                    queue,
                    drops: delta,
                });
            }
        }
        // Namespaces that lost a listener get a new baseline: drops of a closed listener are
        // in the counters but in no listener's sk_drops.
        let lost_a_listener: HashSet<u64> = previous
            .iter()
            .filter(|(inode, _)| !now.contains_key(inode))
            .map(|(_, seen)| seen.netns)
            .collect();
        let mut reports = Vec::new();
        for (netns, pids) in &holders {
            let listeners = moved.remove(netns);
            // A namespace none of whose listeners was there at the previous pass is most
            // likely new, and a new namespace's counters start at 0: its first drops are
            // split against that rather than reported without counters.
            let all_new = !first
                && listeners
                    .as_ref()
                    .is_some_and(|l| l.iter().all(|m| !previous.contains_key(&m.queue.inode)))
                && !previous.values().any(|seen| seen.netns == *netns);
            let known = self
                .counters
                .get(netns)
                .copied()
                .or_else(|| all_new.then(NetnsCounters::default));
            if listeners.is_none() && known.is_some() && !lost_a_listener.contains(netns) {
                continue;
            }
            let current = counters(*netns, pids);
            match (listeners, known, current) {
                (Some(listeners), Some(before), Some(after)) => {
                    reports.extend(split(&listeners, &before, &after));
                }
                (Some(listeners), _, _) => reports.extend(by_sk_drops(&listeners)),
                (None, _, _) => {}
            }
            match current {
                Some(after) => self.counters.insert(*netns, after),
                None => self.counters.remove(netns),
            };
        }
        self.counters.retain(|netns, _| holders.contains_key(netns));
        self.previous = Some(now);
        reports
    }
}

/// Splits a namespace's counter increases between the listeners whose `sk_drops` moved: each
/// queue's drops go first to listeners whose queue was full, each taking at most its own drops;
/// what is left (drops counted between the two reads) goes to the first of them.
fn split(listeners: &[Moved], before: &NetnsCounters, after: &NetnsCounters) -> Vec<ListenerDrop> {
    let overflows = after
        .listen_overflows
        .saturating_sub(before.listen_overflows);
    let syn_drops = after.req_q_full_drop.saturating_sub(before.req_q_full_drop);
    let accept = share(overflows, listeners, |m| m.accept_full, |m, _| m.drops);
    let syn = share(
        syn_drops,
        listeners,
        |m| m.syn_full,
        |m, index| m.drops.saturating_sub(accept[index]),
    );
    let mut reports = Vec::new();
    for (kind, counter, delta, shares) in [
        (
            DropKind::AcceptQueueFull,
            "ListenOverflows",
            overflows,
            &accept,
        ),
        (DropKind::SynQueueFull, "TCPReqQFullDrop", syn_drops, &syn),
    ] {
        let sharing = shares.iter().filter(|&&n| n > 0).count();
        for (listener, &drops) in listeners.iter().zip(shares.iter()) {
            if drops == 0 {
                continue;
            }
            let note = (sharing > 1).then(|| {
                format!(
                    "{counter} rose by {delta} in this network namespace; {sharing} listeners \
                     dropped, so it is split between them by their own drop counters (sk_drops)"
                )
            });
            reports.push(ListenerDrop {
                kind,
                listener: listener.queue.clone(),
                drops,
                counter,
                counter_delta: delta,
                note,
            });
        }
    }
    reports
}

/// `total` shared between `listeners`: those `full` first, then the rest, in order, each up to
/// its `room`; any remainder to the first listener in that order.
fn share(
    total: u64,
    listeners: &[Moved],
    full: impl Fn(&Moved) -> bool,
    room: impl Fn(&Moved, usize) -> u64,
) -> Vec<u64> {
    let mut shares = vec![0; listeners.len()];
    let mut order: Vec<usize> = (0..listeners.len()).collect();
    order.sort_by_key(|&i| (!full(&listeners[i]), std::cmp::Reverse(listeners[i].drops)));
    let mut left = total;
    for &i in &order {
        let take = room(&listeners[i], i).min(left);
        shares[i] += take;
        left -= take;
    }
    if left > 0
        && let Some(&first) = order.first()
    {
        shares[first] += left;
    }
    shares
}

/// Without the namespace's counters: each listener's own `sk_drops` increase, pinned on the
/// queue that was full (the SYN queue only when it alone was).
fn by_sk_drops(listeners: &[Moved]) -> Vec<ListenerDrop> {
    listeners
        .iter()
        .map(|m| ListenerDrop {
            kind: if m.syn_full && !m.accept_full {
                DropKind::SynQueueFull
            } else {
                DropKind::AcceptQueueFull
            },
            listener: m.queue.clone(),
            drops: m.drops,
            counter: "sk_drops",
            counter_delta: m.drops,
            note: Some(
                "the counters of its network namespace could not be read (no process of that \
                 namespace is visible), so the queue is judged by which was full"
                    .to_string(),
            ),
        })
        .collect()
}

/// Where each namespace's counters are read: `/proc/PID/net/netstat` of a process in it (no
/// setns), found among the listeners' holders, else among every process's and thread's
/// namespaces, else (a namespace made with `ip netns add` and no process left in it) by entering
/// it from `/run/netns`.
#[derive(Default)]
struct CounterSources {
    found: HashMap<u64, PathBuf>,
    namespaces: Option<Vec<listeners::Netns>>,
}

impl CounterSources {
    fn read(&mut self, netns: u64, holders: &[u32]) -> Option<NetnsCounters> {
        if let Some(path) = self.found.get(&netns)
            && let Some(counters) = read_netstat_at(path, netns)
        {
            return Some(counters);
        }
        self.found.remove(&netns);
        for pid in holders {
            let dir = PathBuf::from(format!("/proc/{pid}"));
            if let Some(counters) = read_netstat_at(&dir, netns) {
                self.found.insert(netns, dir);
                return Some(counters);
            }
        }
        let namespace = self
            .namespaces
            .get_or_insert_with(listeners::network_namespaces)
            .iter()
            .find(|ns| ns.inode == netns)?
            .clone();
        // /proc/PID/ns/net or /proc/PID/task/TID/ns/net: netstat lies two levels up.
        if let Some(dir) = namespace.path.parent().and_then(|ns| ns.parent())
            && namespace.path.starts_with("/proc")
        {
            let dir = dir.to_path_buf();
            let counters = read_netstat_at(&dir, netns)?;
            self.found.insert(netns, dir);
            return Some(counters);
        }
        listeners::sample_counters(&namespace).ok()
    }
}

/// The counters in `DIR/net/netstat`, if `DIR/ns/net` is still namespace `netns` (a PID can be
/// reused by a process of another namespace).
fn read_netstat_at(dir: &std::path::Path, netns: u64) -> Option<NetnsCounters> {
    if fs::metadata(dir.join("ns/net")).ok()?.ino() != netns {
        return None;
    }
    listeners::parse_netstat(&fs::read_to_string(dir.join("net/netstat")).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETNS: u64 = 4026532000;

    fn listener(port: u16, accept: (u32, u32), syn_queue: u32) -> ListenerQueue {
        ListenerQueue {
            netns: NETNS,
            local: SocketAddr::from(([127, 0, 0, 1], port)),
            accept_len: accept.0,
            accept_max: accept.1,
            syn_queue,
            inode: u64::from(port) + 1000,
            holder: Some(Task {
                pid: 42,
                tid: 42,
                comm: "server".to_string(),
                cgroup_id: 0,
                ns_pid: None,
            }),
        }
    }

    fn counters(overflows: u64, syn: u64) -> NetnsCounters {
        NetnsCounters {
            listen_overflows: overflows,
            listen_drops: overflows + syn,
            req_q_full_drop: syn,
            req_q_full_do_cookies: 0,
        }
    }

    #[test]
    fn the_first_pass_is_the_baseline_and_a_full_listener_gets_the_counter_delta() {
        let mut watcher = IterWatcher::new();
        let full = listener(80, (5, 4), 0);
        let idle = listener(81, (0, 128), 0);
        let reads = std::cell::Cell::new(0);
        let read = |c: NetnsCounters| {
            move |netns: u64, pids: &[u32]| {
                assert_eq!((netns, pids), (NETNS, &[42, 42][..]));
                Some(c)
            }
        };
        let pass = |drops: u32| vec![(full.clone(), drops), (idle.clone(), 0)];
        assert_eq!(watcher.observe_with(pass(7), read(counters(7, 0))), []);
        // Nothing moved: the counters are not read again.
        let drops = watcher.observe_with(pass(7), |_, _| {
            reads.set(reads.get() + 1);
            None
        });
        assert_eq!((drops, reads.get()), (vec![], 0));
        let drops = watcher.observe_with(pass(10), read(counters(10, 0)));
        assert_eq!(
            drops,
            [ListenerDrop {
                kind: DropKind::AcceptQueueFull,
                listener: full.clone(),
                drops: 3,
                counter: "ListenOverflows",
                counter_delta: 3,
                note: None,
            }]
        );
    }

    #[test]
    fn both_queues_and_several_listeners_add_up_to_the_counters() {
        let mut watcher = IterWatcher::new();
        let accept_full = listener(80, (3, 2), 0);
        let syn_full = listener(81, (0, 4), 5);
        let pass = |a: u32, s: u32| vec![(accept_full.clone(), a), (syn_full.clone(), s)];
        watcher.observe_with(pass(0, 0), |_, _| Some(counters(0, 0)));
        // 4 accept-queue drops on port 80, 6 SYN-queue drops on 81; the counters moved one more
        // SYN-queue drop by the time they were read.
        let drops = watcher.observe_with(pass(4, 6), |_, _| Some(counters(4, 7)));
        let summary: Vec<(u16, DropKind, u64, u64)> = drops
            .iter()
            .map(|d| (d.listener.local.port(), d.kind, d.drops, d.counter_delta))
            .collect();
        assert_eq!(
            summary,
            [
                (80, DropKind::AcceptQueueFull, 4, 4),
                (81, DropKind::SynQueueFull, 7, 7),
            ]
        );
        assert!(drops.iter().all(|d| d.note.is_none()), "{drops:#?}");
    }

    #[test]
    fn two_full_listeners_split_the_counter_by_their_own_drops() {
        let mut watcher = IterWatcher::new();
        let a = listener(80, (3, 2), 0);
        let b = listener(81, (9, 8), 0);
        let pass = |x: u32, y: u32| vec![(a.clone(), x), (b.clone(), y)];
        watcher.observe_with(pass(0, 0), |_, _| Some(counters(0, 0)));
        let drops = watcher.observe_with(pass(2, 5), |_, _| Some(counters(7, 0)));
        let shares: Vec<(u16, u64)> = drops
            .iter()
            .map(|d| (d.listener.local.port(), d.drops))
            .collect();
        assert_eq!(shares, [(80, 2), (81, 5)]);
        assert!(
            drops
                .iter()
                .all(|d| d.note.as_deref().is_some_and(|n| n.contains("split")))
        );
    }

    #[test]
    fn a_listener_born_after_start_counts_from_zero_and_without_counters_uses_sk_drops() {
        let mut watcher = IterWatcher::new();
        watcher.observe_with(vec![], |_, _| None);
        let late = listener(82, (0, 4), 5);
        let drops = watcher.observe_with(vec![(late.clone(), 3)], |_, _| None);
        assert_eq!(drops.len(), 1, "{drops:#?}");
        assert_eq!(
            (drops[0].kind, drops[0].drops, drops[0].counter),
            (DropKind::SynQueueFull, 3, "sk_drops")
        );
    }

    #[test]
    fn a_namespace_born_with_drops_is_split_against_zero_counters() {
        let mut watcher = IterWatcher::new();
        watcher.observe_with(vec![], |_, _| None);
        let late = listener(83, (2, 1), 0);
        let drops = watcher.observe_with(vec![(late.clone(), 4)], |_, _| Some(counters(4, 0)));
        assert_eq!(drops.len(), 1, "{drops:#?}");
        assert_eq!(
            (
                drops[0].kind,
                drops[0].drops,
                drops[0].counter,
                drops[0].counter_delta
            ),
            (DropKind::AcceptQueueFull, 4, "ListenOverflows", 4)
        );
    }

    #[test]
    fn records_become_listeners_with_their_holder() {
        let mut record = ListenerRecord {
            socket_ino: 77,
            drops: 3,
            netns: 9,
            tgid: 1234,
            accept_len: 1,
            accept_max: 2,
            syn_queue: 3,
            family: 2,
            port: 8080,
            ..ListenerRecord::default()
        };
        record.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        record.comm[..5].copy_from_slice(b"nginx");
        let queue = queue_of(&record);
        assert_eq!(queue.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((queue.netns, queue.inode), (9, 77));
        let holder = queue.holder.unwrap();
        assert_eq!((holder.pid, holder.comm.as_str()), (1234, "nginx"));
        record.family = 10;
        record.addr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(queue_of(&record).local, "[::1]:8080".parse().unwrap());
    }
}
