//! Listener queues: SYNs dropped because a listener's accept queue or SYN queue was full.
//!
//! On 6.18 a SYN dropped for a full accept queue, or for a full SYN queue with syncookies off,
//! leaves no tracepoint event: only the counters of its network namespace
//! (`/proc/net/netstat`, `TcpExt: ListenOverflows ListenDrops TCPReqQFullDrop ...`) and the
//! listener table (netlink sock_diag, what `ss -lnt` shows) tell. This module samples both in
//! every network namespace on the host ([`network_namespaces`], [`sample`]) and turns counter
//! increases into drops per listener ([`Watcher`]).
//!
//! Queue limits as the kernel applies them: a listener with backlog N (`accept_max`, the Send-Q of
//! `ss -lnt`) drops SYNs only once its accept queue holds N + 1 connections (`sk_acceptq_is_full`
//! is `sk_ack_backlog > sk_max_ack_backlog`), and its SYN queue is full once it holds more than N
//! request sockets (`inet_csk_reqsk_queue_is_full`, `>` since 6.10 and `>=` before). So a listener
//! whose `accept_len` equals `accept_max` is not full yet.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};
use nix::sched::{CloneFlags, setns};

/// The kernel's state for request sockets (SYN received, SYN-ACK sent, final ACK awaited). The
/// sock_diag crate has no flag for it; inet_diag reports these sockets with state `SYN_RECV`.
const TCP_NEW_SYN_RECV: u8 = 12;

/// A network namespace rst-trace can look into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// Inode of the namespace in nsfs: the id `ip netns identify`, `lsns` and
    /// `/proc/PID/ns/net` show.
    pub inode: u64,
    /// How to enter it: a path such as `/proc/PID/ns/net` or `/run/netns/NAME`.
    pub path: PathBuf,
}

/// Every network namespace on the host, once each (by inode): from `/run/netns/*` (namespaces
/// made with `ip netns add`, which may have no process in them; listed first because their path
/// outlives any process), `/proc/*/ns/net` and `/proc/*/task/*/ns/net` (threads may sit in
/// another namespace than their process).
pub fn network_namespaces() -> Vec<Netns> {
    // Every namespace file lives on the one nsfs device: this tells a bind-mounted namespace in
    // /run/netns from a file left behind by a namespace deleted without its unmount.
    let Ok(nsfs_dev) = fs::metadata("/proc/thread-self/ns/net").map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let mut consider = |path: PathBuf| {
        if let Ok(metadata) = fs::metadata(&path)
            && metadata.dev() == nsfs_dev
            && seen.insert(metadata.ino())
        {
            found.push(Netns {
                inode: metadata.ino(),
                path,
            });
        }
    };
    for entry in read_dir_paths(Path::new("/run/netns")) {
        consider(entry);
    }
    for process in read_dir_paths(Path::new("/proc")) {
        if !is_pid(&process) {
            continue;
        }
        consider(process.join("ns/net"));
        for task in read_dir_paths(&process.join("task")) {
            consider(task.join("ns/net"));
        }
    }
    found
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default()
}

fn is_pid(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
}

/// One TCP listening socket and its queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerQueue {
    /// Inode of the network namespace it listens in.
    pub netns: u64,
    pub local: SocketAddr,
    /// Connections established and waiting for `accept()` (Recv-Q of `ss -lnt`).
    pub accept_len: u32,
    /// The backlog in force, `min(listen() backlog, somaxconn)` (Send-Q of `ss -lnt`). The queue
    /// holds `accept_max + 1` connections before SYNs are dropped.
    pub accept_max: u32,
    /// Connections waiting in the SYN queue (request sockets, state NEW_SYN_RECV, for this
    /// listener's address and port).
    pub syn_queue: u32,
    /// Socket inode, to find the owning process (`/proc/*/fd`).
    pub inode: u64,
    /// The process holding the socket's file, when the listener iterator saw it (sampling
    /// leaves it to be found from `inode`).
    pub holder: Option<crate::decoded::Task>,
}

impl ListenerQueue {
    /// The accept queue holds more than the backlog: the kernel drops SYNs now.
    pub fn accept_queue_full(&self) -> bool {
        self.accept_len > self.accept_max
    }

    /// The SYN queue holds as many request sockets as the backlog. 6.10+ accepts one more before
    /// dropping, older kernels none; `>=` flags both (a backlog of 0 still needs one request).
    pub fn syn_queue_full(&self) -> bool {
        self.syn_queue > 0 && self.syn_queue >= self.accept_max
    }

    fn key(&self) -> (SocketAddr, u64) {
        (self.local, self.inode)
    }
}

/// The counters of one network namespace that tell of listener drops (`TcpExt` in
/// `/proc/net/netstat`).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsCounters {
    /// SYNs or final ACKs dropped because an accept queue was full.
    pub listen_overflows: u64,
    /// Every SYN or final ACK a listener dropped, whatever the reason (includes the above).
    pub listen_drops: u64,
    /// SYNs dropped because a SYN queue was full and syncookies were off.
    pub req_q_full_drop: u64,
    /// SYNs answered with a syncookie because a SYN queue was full (not dropped).
    pub req_q_full_do_cookies: u64,
}

/// What one network namespace looked like at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub netns: u64,
    pub counters: NetnsCounters,
    pub listeners: Vec<ListenerQueue>,
    /// `net.ipv4.tcp_syncookies` of that namespace (0 off, 1 when a SYN queue is full, 2 always).
    pub syncookies: Option<u8>,
    /// `net.core.somaxconn` of that namespace: the ceiling on every listener's backlog.
    pub somaxconn: Option<u32>,
}

/// Reads one namespace: enters it in a short-lived thread (setns changes only the calling
/// thread, and the thread ends with it), dumps TCP listeners (IPv4 and IPv6) and request sockets
/// with netlink sock_diag, and reads the counters and sysctls.
pub fn sample(netns: &Netns) -> Result<Sample> {
    let file = File::open(&netns.path).with_context(|| {
        format!(
            "cannot open network namespace {} at {} (it may be gone; rst-trace needs root)",
            netns.inode,
            netns.path.display()
        )
    })?;
    // A /proc/PID path can lead to another namespace once PID is reused.
    let inode = file.metadata().map(|m| m.ino()).unwrap_or_default();
    if inode != netns.inode {
        bail!(
            "network namespace {} is gone: {} now leads to namespace {inode}",
            netns.inode,
            netns.path.display()
        );
    }
    let inode = netns.inode;
    let reader = thread::Builder::new()
        .name(format!("netns-{inode}"))
        .spawn(move || -> Result<Sample> {
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| {
                format!(
                    "cannot enter network namespace {inode}: rst-trace needs root (CAP_SYS_ADMIN)"
                )
            })?;
            sample_current(inode)
        })
        .context("cannot start a thread to read a network namespace")?;
    reader
        .join()
        .map_err(|_| anyhow!("the thread reading network namespace {inode} panicked"))?
}

/// Sampling made cheap for a long-lived thread (the fallback where the kernel refuses the
/// listener iterator): the thread enters each namespace itself and comes back (no thread per
/// namespace per tick), reads the counters, and dumps listeners only when a counter moved or
/// the namespace is new, request sockets (which walk the host-wide established hash) only when
/// `TCPReqQFullDrop` moved. Namespaces whose last dump found no listener are passed over until
/// the next rescan.
pub struct Sampler {
    home: File,
    /// Per namespace: the counters and whether it had listeners, at its last sample.
    last: std::collections::HashMap<u64, (NetnsCounters, bool)>,
}

impl Sampler {
    /// For the calling thread, which must be one that may leave its namespace (not the main
    /// thread of a process others share namespaces with: setns changes only this thread).
    pub fn new() -> Result<Self> {
        let home = File::open("/proc/thread-self/ns/net")
            .context("cannot open /proc/thread-self/ns/net")?;
        Ok(Self {
            home,
            last: std::collections::HashMap::new(),
        })
    }

    /// The sample to observe for `netns`, or None when nothing there can have dropped since
    /// its last sample. `rescan`: also namespaces that had no listener.
    pub fn sample(&mut self, netns: &Netns, rescan: bool) -> Result<Option<Sample>> {
        let last = self.last.get(&netns.inode).copied();
        if let Some((_, false)) = last
            && !rescan
        {
            return Ok(None);
        }
        let file = File::open(&netns.path).with_context(|| {
            format!(
                "cannot open network namespace {} at {}",
                netns.inode,
                netns.path.display()
            )
        })?;
        if file.metadata().map(|m| m.ino()).unwrap_or_default() != netns.inode {
            bail!("network namespace {} is gone", netns.inode);
        }
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| {
            format!(
                "cannot enter network namespace {}: rst-trace needs CAP_SYS_ADMIN",
                netns.inode
            )
        })?;
        let sample = self.sample_here(netns.inode, last);
        // Back home whatever happened: the next namespace's path may be relative to it.
        setns(&self.home, CloneFlags::CLONE_NEWNET)
            .context("cannot go back to rst-trace's own network namespace")?;
        let sample = sample?;
        if let Some(sample) = &sample {
            self.last
                .insert(netns.inode, (sample.counters, !sample.listeners.is_empty()));
        }
        Ok(sample)
    }

    fn sample_here(
        &self,
        netns: u64,
        last: Option<(NetnsCounters, bool)>,
    ) -> Result<Option<Sample>> {
        let counters = counters_current()?;
        let requests = match last {
            Some((before, _)) if before == counters => return Ok(None),
            Some((before, _)) => counters.req_q_full_drop != before.req_q_full_drop,
            // First sample: the baseline, listeners only.
            None => false,
        };
        sample_current_with(netns, counters, requests).map(Some)
    }

    /// Forgets namespaces that no longer exist.
    pub fn retain(&mut self, alive: impl Fn(u64) -> bool) {
        self.last.retain(|netns, _| alive(*netns));
    }
}

/// Reads only the counters of one namespace, entering it in a short-lived thread: for a
/// namespace no process is in (made with `ip netns add`), whose `/proc/PID/net` nobody has.
pub fn sample_counters(netns: &Netns) -> Result<NetnsCounters> {
    let file = File::open(&netns.path)
        .with_context(|| format!("cannot open network namespace {}", netns.path.display()))?;
    let inode = netns.inode;
    thread::Builder::new()
        .name(format!("netns-{inode}"))
        .spawn(move || -> Result<NetnsCounters> {
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| {
                format!("cannot enter network namespace {inode} (needs CAP_SYS_ADMIN)")
            })?;
            let netstat = fs::read_to_string("/proc/thread-self/net/netstat")
                .context("cannot read /proc/thread-self/net/netstat")?;
            parse_netstat(&netstat)
        })
        .context("cannot start a thread to read a network namespace")?
        .join()
        .map_err(|_| anyhow!("the thread reading network namespace {inode} panicked"))?
}

/// Reads the namespace the calling thread is in. /proc/thread-self/net follows the thread's
/// namespace (/proc/self/net the main thread's), and /proc/sys/net follows the namespace of the
/// thread that opens it; the netlink socket is created here, so it dumps this namespace.
fn sample_current(netns: u64) -> Result<Sample> {
    let counters = counters_current()?;
    sample_current_with(netns, counters, true)
}

/// The calling thread's namespace's counters.
fn counters_current() -> Result<NetnsCounters> {
    let netstat = fs::read_to_string("/proc/thread-self/net/netstat")
        .context("cannot read /proc/thread-self/net/netstat (is /proc mounted?)")?;
    parse_netstat(&netstat)
}

/// [`sample_current`] with the counters already read; request sockets (SYN queues) only when
/// `requests`.
fn sample_current_with(netns: u64, counters: NetnsCounters, requests: bool) -> Result<Sample> {
    let mut sockets = Vec::new();
    for family in [AF_INET, AF_INET6] {
        sockets.extend(dump_tcp(family, requests)?);
    }
    Ok(Sample {
        netns,
        counters,
        listeners: listener_queues(netns, &sockets),
        syncookies: read_sysctl("/proc/sys/net/ipv4/tcp_syncookies"),
        somaxconn: read_sysctl("/proc/sys/net/core/somaxconn"),
    })
}

fn read_sysctl<T: std::str::FromStr>(path: &str) -> Option<T> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Listening sockets with their SYN queues counted from the request sockets beside them.
pub fn listener_queues(netns: u64, sockets: &[InetResponseHeader]) -> Vec<ListenerQueue> {
    let mut listeners: Vec<ListenerQueue> = sockets
        .iter()
        .filter(|s| s.state == TCP_LISTEN)
        .map(|s| ListenerQueue {
            netns,
            local: SocketAddr::new(s.socket_id.source_address, s.socket_id.source_port),
            // For a listener inet_diag reports the accept queue length as rqueue and the
            // backlog as wqueue.
            accept_len: s.recv_queue,
            accept_max: s.send_queue,
            syn_queue: 0,
            inode: u64::from(s.inode),
            holder: None,
        })
        .collect();
    for request in sockets.iter().filter(|s| s.state != TCP_LISTEN) {
        let local = SocketAddr::new(
            request.socket_id.source_address,
            request.socket_id.source_port,
        );
        if let Some(index) = owning_listener(&listeners, local) {
            listeners[index].syn_queue += 1;
        }
    }
    listeners
}

/// The listener a request socket for `local` belongs to: the one bound to that address, else a
/// wildcard of the same family, else (for IPv4) a dual-stack `[::]`. Listeners sharing a port
/// with SO_REUSEPORT cannot be told apart here; the first one gets the request.
fn owning_listener(listeners: &[ListenerQueue], local: SocketAddr) -> Option<usize> {
    let same_port = |l: &ListenerQueue| l.local.port() == local.port();
    listeners
        .iter()
        .position(|l| same_port(l) && l.local.ip() == local.ip())
        .or_else(|| {
            listeners.iter().position(|l| {
                same_port(l)
                    && l.local.ip().is_unspecified()
                    && l.local.is_ipv4() == local.is_ipv4()
            })
        })
        .or_else(|| {
            listeners.iter().position(|l| {
                same_port(l)
                    && local.is_ipv4()
                    && l.local.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
            })
        })
}

/// Dumps the TCP listeners and request sockets of one address family in the calling thread's
/// network namespace.
fn dump_tcp(family: u8, requests: bool) -> Result<Vec<InetResponseHeader>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)
        .context("cannot open a netlink sock_diag socket (is the kernel built with INET_DIAG?)")?;
    socket
        .bind_auto()
        .context("cannot bind a netlink sock_diag socket")?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .context("cannot connect a netlink sock_diag socket to the kernel")?;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // Request sockets live in the established hash, which a dump walks whole (every
            // bucket, host-wide); listeners alone take only the listening hash.
            states: if requests {
                StateFlags::LISTEN | StateFlags::from_bits_retain(1 << TCP_NEW_SYN_RECV)
            } else {
                StateFlags::LISTEN
            },
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket
        .send(&bytes, 0)
        .context("cannot send a sock_diag request to the kernel")?;

    let mut sockets = Vec::new();
    // The kernel fills a dump datagram up to 32 KiB at most.
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut buffer[..], 0)
            .context("cannot read the sock_diag reply from the kernel")?;
        if size == 0 {
            bail!("the kernel ended the sock_diag reply without its closing message");
        }
        if parse_sock_diag_datagram(&buffer[..size], &mut sockets)? == DumpProgress::Done {
            return Ok(sockets);
        }
    }
}

/// Whether a sock_diag dump has more datagrams to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpProgress {
    More,
    /// The datagram held the dump's closing message.
    Done,
}

/// Reads one datagram of a sock_diag dump reply (several netlink messages back to back) and
/// appends the sockets it reports to `sockets`. Public for the fuzz target: it is the parser of
/// what the kernel sends back, and whatever replaces the sampler keeps its own such function.
pub fn parse_sock_diag_datagram(
    datagram: &[u8],
    sockets: &mut Vec<InetResponseHeader>,
) -> Result<DumpProgress> {
    let mut offset = 0;
    while offset < datagram.len() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[offset..])
            .context("the kernel sent a sock_diag reply rst-trace cannot decode")?;
        let length = message.header.length as usize;
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                sockets.push(response.header)
            }
            NetlinkPayload::Done(_) => return Ok(DumpProgress::Done),
            NetlinkPayload::Error(error) => {
                return Err(anyhow!(netlink_errno(error.raw_code()))
                    .context("the kernel refused the sock_diag dump of TCP sockets"));
            }
            _ => {}
        }
        if length == 0 {
            break;
        }
        offset += length;
    }
    Ok(DumpProgress::More)
}

/// The error a netlink error message carries (a negative errno). Not `ErrorMessage::to_io`, whose
/// `abs()` overflows on `i32::MIN`, which a reply can hold.
fn netlink_errno(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(i32::try_from(code.unsigned_abs()).unwrap_or(i32::MAX))
}

/// Reads the counters rst-trace needs from the `/proc/net/netstat` format: pairs of lines, a
/// header (`TcpExt: Name1 Name2 ...`) and the values in the same order (`TcpExt: 1 2 ...`).
pub fn parse_netstat(text: &str) -> Result<NetnsCounters> {
    let mut values = HashMap::new();
    // A values line follows the header line with the same prefix.
    let mut header: Option<(&str, &str)> = None;
    for line in text.lines() {
        let Some((prefix, rest)) = line.split_once(':') else {
            continue;
        };
        match header.take() {
            Some(("TcpExt", names)) if prefix == "TcpExt" => {
                for (name, number) in names.split_whitespace().zip(rest.split_whitespace()) {
                    let number: u64 = number.parse().with_context(|| {
                        format!("TcpExt {name} in /proc/net/netstat is not a number: {number:?}")
                    })?;
                    values.insert(name, number);
                }
            }
            Some((previous, _)) if previous == prefix => {}
            _ => header = Some((prefix, rest)),
        }
    }
    let get = |name: &str| {
        values
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("/proc/net/netstat has no TcpExt {name} counter"))
    };
    Ok(NetnsCounters {
        listen_overflows: get("ListenOverflows")?,
        listen_drops: get("ListenDrops")?,
        req_q_full_drop: get("TCPReqQFullDrop")?,
        req_q_full_do_cookies: get("TCPReqQFullDoCookies")?,
    })
}

/// Which queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKind {
    /// `accept_queue_full`: the application did not accept connections fast enough.
    AcceptQueueFull,
    /// `syn_queue_full`: too many handshakes in progress and syncookies off.
    SynQueueFull,
}

/// SYNs (or final ACKs) one listener dropped between two samples of its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerDrop {
    pub kind: DropKind,
    /// The listener as sampled (its queues at the later sample, or at the earlier one if it
    /// has closed since).
    pub listener: ListenerQueue,
    /// Drops this report stands for: packets, not clients. Each retransmitted SYN counts again
    /// (the first after 1 s), and `ListenOverflows` also counts final ACKs dropped at a full
    /// accept queue.
    pub drops: u64,
    /// The kernel counter that corroborates it (`ListenOverflows`, `TCPReqQFullDrop`).
    pub counter: &'static str,
    /// The counter's increase in the interval.
    pub counter_delta: u64,
    /// Set when the increase had to be shared between several listeners, or when no listener
    /// looked full at sampling time.
    pub note: Option<String>,
}

/// Keeps the previous sample of each namespace and turns counter increases into drops per
/// listener. The counters are per namespace, so a drop is pinned on a listener by its queue:
/// full now, or full at the previous sample.
#[derive(Default)]
pub struct Watcher {
    previous: HashMap<u64, Sample>,
}

impl Watcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// The drops since the previous sample of the same namespace; the first sample of a
    /// namespace only sets the baseline. `ListenOverflows` is used rather than `ListenDrops`,
    /// which also counts SYN queue and other drops.
    pub fn observe(&mut self, sample: Sample) -> Vec<ListenerDrop> {
        let Some(previous) = self.previous.insert(sample.netns, sample.clone()) else {
            return Vec::new();
        };
        let mut drops = attribute(
            &ACCEPT_QUEUE,
            sample
                .counters
                .listen_overflows
                .saturating_sub(previous.counters.listen_overflows),
            &previous,
            &sample,
        );
        drops.extend(attribute(
            &SYN_QUEUE,
            sample
                .counters
                .req_q_full_drop
                .saturating_sub(previous.counters.req_q_full_drop),
            &previous,
            &sample,
        ));
        drops
    }

    /// Forgets namespaces that no longer exist, so a reused inode starts from a new baseline.
    pub fn retain(&mut self, alive: impl Fn(u64) -> bool) {
        self.previous.retain(|netns, _| alive(*netns));
    }
}

/// One queue of a listener, as attribution sees it.
struct Queue {
    kind: DropKind,
    counter: &'static str,
    name: &'static str,
    len: fn(&ListenerQueue) -> u32,
    full: fn(&ListenerQueue) -> bool,
}

const ACCEPT_QUEUE: Queue = Queue {
    kind: DropKind::AcceptQueueFull,
    counter: "ListenOverflows",
    name: "accept queue",
    len: |l| l.accept_len,
    full: ListenerQueue::accept_queue_full,
};

const SYN_QUEUE: Queue = Queue {
    kind: DropKind::SynQueueFull,
    counter: "TCPReqQFullDrop",
    name: "SYN queue",
    len: |l| l.syn_queue,
    full: ListenerQueue::syn_queue_full,
};

/// Pins a counter increase of `delta` on listeners: those whose queue is full in `now` or was in
/// `before` each get all of it (with a note when there are several: the counter is per
/// namespace); with none, the fullest listener gets it with a note saying so.
fn attribute(queue: &Queue, delta: u64, before: &Sample, now: &Sample) -> Vec<ListenerDrop> {
    if delta == 0 {
        return Vec::new();
    }
    let was_full: HashSet<_> = before
        .listeners
        .iter()
        .filter(|l| (queue.full)(l))
        .map(ListenerQueue::key)
        .collect();
    let present: HashSet<_> = now.listeners.iter().map(ListenerQueue::key).collect();
    let mut candidates: Vec<&ListenerQueue> = now
        .listeners
        .iter()
        .filter(|l| (queue.full)(l) || was_full.contains(&l.key()))
        // A listener full at the previous sample and closed since may have dropped them.
        .chain(
            before
                .listeners
                .iter()
                .filter(|l| (queue.full)(l) && !present.contains(&l.key())),
        )
        .collect();
    candidates.sort_by_key(|l| std::cmp::Reverse((queue.len)(l)));

    let report = |listener: &ListenerQueue, note: Option<String>| ListenerDrop {
        kind: queue.kind,
        listener: listener.clone(),
        drops: delta,
        counter: queue.counter,
        counter_delta: delta,
        note,
    };
    match candidates.as_slice() {
        [] => {
            let pool = if now.listeners.is_empty() {
                &before.listeners
            } else {
                &now.listeners
            };
            // Fill against capacity (backlog + 1), so a backlog of 0 divides by nothing.
            let fill =
                |l: &ListenerQueue| f64::from((queue.len)(l)) / (f64::from(l.accept_max) + 1.0);
            // No listener at all: nothing to name, so nothing to report.
            // max_by keeps the last of equals: reversed, the first listed wins a tie.
            let Some(fullest) = pool.iter().rev().max_by(|a, b| fill(a).total_cmp(&fill(b))) else {
                return Vec::new();
            };
            let note = format!(
                "{} rose by {delta} in this network namespace but no listener's {} was full \
                 when sampled; attributed to the fullest ({} of backlog {}).",
                queue.counter,
                queue.name,
                (queue.len)(fullest),
                fullest.accept_max
            );
            vec![report(fullest, Some(note))]
        }
        [only] => vec![report(only, None)],
        several => {
            let note = format!(
                "{} rose by {delta} in this network namespace while {} listeners' {}s were \
                 full; the counter is shared between them, so each report stands for all {delta}.",
                queue.counter,
                several.len(),
                queue.name
            );
            several
                .iter()
                .map(|l| report(l, Some(note.clone())))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/net/netstat` of a network namespace on the development machine (kernel 6.18),
    /// captured after 3 SYNs were dropped at a full accept queue (ListenOverflows 3), 2 at a full
    /// SYN queue with syncookies off (TCPReqQFullDrop 2; ListenDrops counts all 5) and 1 answered
    /// with a syncookie (TCPReqQFullDoCookies 1).
    const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned OutOfWindowIcmps LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab BeyondWindow TSEcrRejected PAWSOldAck PAWSTimewait DelayedACKs DelayedACKLocked DelayedACKLost ListenOverflows ListenDrops TCPHPHits TCPPureAcks TCPHPAcks TCPRenoRecovery TCPSackRecovery TCPSACKReneging TCPSACKReorder TCPRenoReorder TCPTSReorder TCPFullUndo TCPPartialUndo TCPDSACKUndo TCPLossUndo TCPLostRetransmit TCPRenoFailures TCPSackFailures TCPLossFailures TCPFastRetrans TCPSlowStartRetrans TCPTimeouts TCPLossProbes TCPLossProbeRecovery TCPRenoRecoveryFail TCPSackRecoveryFail TCPRcvCollapsed TCPBacklogCoalesce TCPDSACKOldSent TCPDSACKOfoSent TCPDSACKRecv TCPDSACKOfoRecv TCPAbortOnData TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger TCPAbortFailed TCPMemoryPressures TCPMemoryPressuresChrono TCPSACKDiscard TCPDSACKIgnoredOld TCPDSACKIgnoredNoUndo TCPSpuriousRTOs TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPSackShifted TCPSackMerged TCPSackShiftFallback TCPBacklogDrop PFMemallocDrop TCPMinTTLDrop TCPDeferAcceptDrop IPReversePathFilter TCPTimeWaitOverflow TCPReqQFullDoCookies TCPReqQFullDrop TCPRetransFail TCPRcvCoalesce TCPOFOQueue TCPOFODrop TCPOFOMerge TCPChallengeACK TCPSYNChallenge TCPFastOpenActive TCPFastOpenActiveFail TCPFastOpenPassive TCPFastOpenPassiveFail TCPFastOpenListenOverflow TCPFastOpenCookieReqd TCPFastOpenBlackhole TCPSpuriousRtxHostQueues BusyPollRxPackets TCPAutoCorking TCPFromZeroWindowAdv TCPToZeroWindowAdv TCPWantZeroWindowAdv TCPSynRetrans TCPOrigDataSent TCPHystartTrainDetect TCPHystartTrainCwnd TCPHystartDelayDetect TCPHystartDelayCwnd TCPACKSkippedSynRecv TCPACKSkippedPAWS TCPACKSkippedSeq TCPACKSkippedFinWait2 TCPACKSkippedTimeWait TCPACKSkippedChallenge TCPWinProbe TCPKeepAlive TCPMTUPFail TCPMTUPSuccess TCPDelivered TCPDeliveredCE TCPAckCompressed TCPZeroWindowDrop TCPRcvQDrop TCPWqueueTooBig TCPFastOpenPassiveAltKey TcpTimeoutRehash TcpDuplicateDataRehash TCPDSACKRecvSegs TCPDSACKIgnoredDubious TCPMigrateReqSuccess TCPMigrateReqFailure TCPPLBRehash TCPAORequired TCPAOBad TCPAOKeyNotFound TCPAOGood TCPAODroppedIcmps\n\
TcpExt: 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 3 5 0 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 2 0 0 1 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts InECT0Pkts InCEPkts ReasmOverlaps\n\
IpExt: 0 0 0 0 0 0 1160 1160 0 0 0 0 0 20 0 0 0 0\n\
MPTcpExt: MPCapableSYNRX MPCapableSYNTX MPCapableSYNACKRX MPCapableACKRX MPCapableFallbackACK MPCapableFallbackSYNACK MPCapableSYNTXDrop MPCapableSYNTXDisabled MPCapableEndpAttempt MPFallbackTokenInit MPTCPRetrans MPJoinNoTokenFound MPJoinSynRx MPJoinSynBackupRx MPJoinSynAckRx MPJoinSynAckBackupRx MPJoinSynAckHMacFailure MPJoinAckRx MPJoinAckHMacFailure MPJoinRejected MPJoinSynTx MPJoinSynTxCreatSkErr MPJoinSynTxBindErr MPJoinSynTxConnectErr DSSNotMatching DSSCorruptionFallback DSSCorruptionReset InfiniteMapTx InfiniteMapRx DSSNoMatchTCP DataCsumErr OFOQueueTail OFOQueue OFOMerge NoDSSInWindow DuplicateData AddAddr AddAddrTx AddAddrTxDrop EchoAdd EchoAddTx EchoAddTxDrop PortAdd AddAddrDrop MPJoinPortSynRx MPJoinPortSynAckRx MPJoinPortAckRx MismatchPortSynRx MismatchPortAckRx RmAddr RmAddrDrop RmAddrTx RmAddrTxDrop RmSubflow MPPrioTx MPPrioRx MPFailTx MPFailRx MPFastcloseTx MPFastcloseRx MPRstTx MPRstRx SubflowStale SubflowRecover SndWndShared RcvWndShared RcvWndConflictUpdate RcvWndConflict MPCurrEstab Blackhole MPCapableDataFallback MD5SigFallback DssFallback SimultConnectFallback FallbackFailed WinProbe\n\
MPTcpExt: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    /// An input the `sock_diag` fuzz target found (kept in `tests/fixtures/fuzz/sock_diag/`): an
    /// error message whose code is `i32::MIN`. It is an error, not a panic.
    #[test]
    fn an_error_code_of_i32_min_is_an_error_not_a_panic() {
        let input = crate::tracefs::tests::fuzz_input("sock_diag", "errno-i32-min");
        let error = parse_sock_diag_datagram(&input, &mut Vec::new()).expect_err("an error");
        assert!(
            format!("{error:#}")
                .starts_with("the kernel refused the sock_diag dump of TCP sockets"),
            "{error:#}"
        );
        assert_eq!(netlink_errno(-13).raw_os_error(), Some(13));
    }

    /// A netlink message: length, type, flags, sequence, port id, then the payload.
    fn netlink(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        message.extend_from_slice(&1u32.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(payload);
        message
    }

    /// An inet_diag_msg for a listener on 127.0.0.1:8080 with accept queue 3 of 5, inode 77.
    fn inet_diag_listener() -> Vec<u8> {
        let mut msg = vec![libc::AF_INET as u8, TCP_LISTEN, 0, 0];
        msg.extend_from_slice(&8080u16.to_be_bytes()); // sport
        msg.extend_from_slice(&0u16.to_be_bytes()); // dport
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[127, 0, 0, 1]);
        msg.extend_from_slice(&src);
        msg.extend_from_slice(&[0u8; 16]); // dst
        msg.extend_from_slice(&0u32.to_ne_bytes()); // interface
        msg.extend_from_slice(&[0u8; 8]); // cookie
        msg.extend_from_slice(&0u32.to_ne_bytes()); // expires
        msg.extend_from_slice(&3u32.to_ne_bytes()); // rqueue
        msg.extend_from_slice(&5u32.to_ne_bytes()); // wqueue
        msg.extend_from_slice(&0u32.to_ne_bytes()); // uid
        msg.extend_from_slice(&77u32.to_ne_bytes()); // inode
        msg
    }

    #[test]
    fn parses_sock_diag_datagrams_to_the_closing_message() {
        const SOCK_DIAG_BY_FAMILY: u16 = 20;
        const NLMSG_DONE: u16 = 3;
        let mut datagram = netlink(SOCK_DIAG_BY_FAMILY, &inet_diag_listener());
        let mut sockets = Vec::new();
        assert_eq!(
            parse_sock_diag_datagram(&datagram, &mut sockets).unwrap(),
            DumpProgress::More
        );
        datagram.extend(netlink(NLMSG_DONE, &0i32.to_ne_bytes()));
        sockets.clear();
        assert_eq!(
            parse_sock_diag_datagram(&datagram, &mut sockets).unwrap(),
            DumpProgress::Done
        );
        let queues = listener_queues(9, &sockets);
        assert_eq!(queues.len(), 1, "{queues:?}");
        assert_eq!(
            queues[0],
            ListenerQueue {
                netns: 9,
                local: "127.0.0.1:8080".parse().unwrap(),
                accept_len: 3,
                accept_max: 5,
                syn_queue: 0,
                inode: 77,
                holder: None,
            }
        );
        let error = parse_sock_diag_datagram(&[1, 2, 3], &mut sockets).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the kernel sent a sock_diag reply rst-trace cannot decode"
        );
    }

    #[test]
    fn parses_the_tcpext_counters_of_a_real_proc_net_netstat() {
        assert_eq!(
            parse_netstat(NETSTAT).unwrap(),
            NetnsCounters {
                listen_overflows: 3,
                listen_drops: 5,
                req_q_full_drop: 2,
                req_q_full_do_cookies: 1,
            }
        );
    }

    #[test]
    fn a_netstat_without_the_counters_is_an_error() {
        let error = parse_netstat("IpExt: InNoRoutes\nIpExt: 0\n").unwrap_err();
        assert!(error.to_string().contains("ListenOverflows"), "{error}");
        let error = parse_netstat("TcpExt: ListenOverflows\nTcpExt: x\n").unwrap_err();
        assert!(error.to_string().contains("not a number"), "{error}");
    }

    const NETNS: u64 = 4026531840;

    fn listener(port: u16, accept: (u32, u32), syn_queue: u32) -> ListenerQueue {
        ListenerQueue {
            netns: NETNS,
            local: SocketAddr::from(([127, 0, 0, 1], port)),
            accept_len: accept.0,
            accept_max: accept.1,
            syn_queue,
            inode: u64::from(port) + 1000,
            holder: None,
        }
    }

    fn sample(overflows: u64, req_q_full_drop: u64, listeners: Vec<ListenerQueue>) -> Sample {
        Sample {
            netns: NETNS,
            counters: NetnsCounters {
                listen_overflows: overflows,
                listen_drops: overflows + req_q_full_drop,
                req_q_full_drop,
                req_q_full_do_cookies: 0,
            },
            listeners,
            syncookies: Some(0),
            somaxconn: Some(4096),
        }
    }

    #[test]
    fn the_first_sample_of_a_namespace_only_sets_the_baseline() {
        let mut watcher = Watcher::new();
        let full = vec![listener(80, (2, 1), 0)];
        assert_eq!(watcher.observe(sample(100, 7, full.clone())), []);
        let other_netns = Sample {
            netns: NETNS + 1,
            ..sample(500, 9, full.clone())
        };
        assert_eq!(watcher.observe(other_netns), []);
        assert_eq!(
            watcher.observe(sample(100, 7, full)),
            [],
            "no increase, no drop"
        );
    }

    #[test]
    fn a_single_full_listener_gets_exactly_the_delta() {
        let mut watcher = Watcher::new();
        let listeners = vec![listener(80, (0, 128), 0), listener(81, (2, 1), 0)];
        watcher.observe(sample(10, 0, listeners.clone()));
        let drops = watcher.observe(sample(17, 0, listeners.clone()));
        assert_eq!(
            drops,
            [ListenerDrop {
                kind: DropKind::AcceptQueueFull,
                listener: listeners[1].clone(),
                drops: 7,
                counter: "ListenOverflows",
                counter_delta: 7,
                note: None,
            }]
        );
    }

    #[test]
    fn backlog_n_is_full_only_at_n_plus_one() {
        let mut watcher = Watcher::new();
        // Port 80 holds its backlog (1 of 1) and takes one more; port 81 holds 5 of 4: full.
        let listeners = vec![listener(80, (1, 1), 0), listener(81, (5, 4), 0)];
        watcher.observe(sample(0, 0, listeners.clone()));
        let drops = watcher.observe(sample(2, 0, listeners.clone()));
        assert_eq!(drops.len(), 1, "{drops:#?}");
        assert_eq!(drops[0].listener, listeners[1]);
        assert_eq!(drops[0].note, None);
    }

    #[test]
    fn a_listener_full_at_the_previous_sample_gets_the_delta() {
        let mut watcher = Watcher::new();
        watcher.observe(sample(
            0,
            0,
            vec![listener(80, (2, 1), 0), listener(81, (0, 9), 0)],
        ));
        // The application has accepted everything since.
        let now = vec![listener(80, (0, 1), 0), listener(81, (0, 9), 0)];
        let drops = watcher.observe(sample(4, 0, now.clone()));
        assert_eq!(drops.len(), 1, "{drops:#?}");
        assert_eq!((&drops[0].listener, drops[0].drops), (&now[0], 4));
        assert_eq!(drops[0].note, None);
    }

    #[test]
    fn several_full_listeners_share_the_namespace_counter() {
        let mut watcher = Watcher::new();
        let listeners = vec![
            listener(80, (2, 1), 0),
            listener(81, (0, 9), 0),
            listener(82, (9, 8), 0),
        ];
        watcher.observe(sample(0, 0, listeners.clone()));
        let drops = watcher.observe(sample(6, 0, listeners.clone()));
        assert_eq!(drops.len(), 2, "{drops:#?}");
        // Largest queue first.
        assert_eq!(drops[0].listener, listeners[2]);
        assert_eq!(drops[1].listener, listeners[0]);
        for drop in &drops {
            assert_eq!(
                (drop.kind, drop.drops, drop.counter_delta),
                (DropKind::AcceptQueueFull, 6, 6)
            );
            let note = drop.note.as_deref().unwrap_or_default();
            assert!(note.contains("shared"), "{note}");
        }
    }

    #[test]
    fn with_no_full_listener_the_fullest_gets_the_delta_with_a_note() {
        let mut watcher = Watcher::new();
        let listeners = vec![
            listener(80, (3, 9), 0),
            listener(81, (2, 3), 0),
            listener(82, (0, 0), 0),
        ];
        watcher.observe(sample(0, 0, listeners.clone()));
        let drops = watcher.observe(sample(1, 0, listeners.clone()));
        assert_eq!(drops.len(), 1, "{drops:#?}");
        assert_eq!((&drops[0].listener, drops[0].drops), (&listeners[1], 1));
        let note = drops[0].note.as_deref().unwrap_or_default();
        assert!(note.contains("was full when sampled"), "{note}");
    }

    #[test]
    fn syn_queue_drops_go_to_the_listener_whose_syn_queue_is_full() {
        let mut watcher = Watcher::new();
        // Port 81's SYN queue holds backlog + 1 (6.18); port 80 has one handshake in progress.
        let listeners = vec![listener(80, (0, 128), 1), listener(81, (0, 3), 4)];
        watcher.observe(sample(5, 10, listeners.clone()));
        let drops = watcher.observe(sample(5, 250, listeners.clone()));
        assert_eq!(
            drops,
            [ListenerDrop {
                kind: DropKind::SynQueueFull,
                listener: listeners[1].clone(),
                drops: 240,
                counter: "TCPReqQFullDrop",
                counter_delta: 240,
                note: None,
            }]
        );
    }

    #[test]
    fn syn_queue_drops_with_no_full_syn_queue_go_to_the_largest() {
        let mut watcher = Watcher::new();
        let listeners = vec![listener(80, (0, 128), 1), listener(81, (0, 128), 30)];
        watcher.observe(sample(0, 0, listeners.clone()));
        let drops = watcher.observe(sample(0, 3, listeners.clone()));
        assert_eq!(drops.len(), 1, "{drops:#?}");
        assert_eq!(
            (drops[0].kind, &drops[0].listener),
            (DropKind::SynQueueFull, &listeners[1])
        );
        assert!(drops[0].note.is_some());
    }

    #[test]
    fn request_sockets_belong_to_the_listener_on_their_address_and_port() {
        let at = |ip: &str, port| SocketAddr::new(ip.parse().unwrap(), port);
        let mut listeners = vec![
            listener(80, (0, 1), 0),
            listener(80, (0, 1), 0),
            listener(443, (0, 1), 0),
        ];
        listeners[0].local = at("0.0.0.0", 80);
        listeners[1].local = at("10.0.0.1", 80);
        listeners[2].local = at("::", 443);
        assert_eq!(owning_listener(&listeners, at("10.0.0.1", 80)), Some(1));
        assert_eq!(owning_listener(&listeners, at("127.0.0.1", 80)), Some(0));
        // An IPv4 SYN at a dual-stack [::] listener makes an IPv4 request socket.
        assert_eq!(owning_listener(&listeners, at("127.0.0.1", 443)), Some(2));
        assert_eq!(owning_listener(&listeners, at("::1", 443)), Some(2));
        assert_eq!(owning_listener(&listeners, at("::1", 80)), None);
    }
}
