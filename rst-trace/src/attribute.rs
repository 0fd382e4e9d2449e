//! Attribution: which process, which container and which cause an event belongs to.
//!
//! The kernel programs record each socket's owner when it connects, listens or is accepted, and
//! who closed a connection. Here that becomes the event's `process` (the owner, never whatever
//! task a softirq interrupted), its cgroup and container, its cause with a one-line explanation,
//! and the pairing of both ends of a connection when both are on this host.

use std::{
    collections::VecDeque,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use foldhash::HashMap;

use crate::{
    cause::{Cause, classify, fires_in_closing_process},
    container::Container,
    container_names::ContainerNames,
    decoded::{Decoded, KernelFacts, Task},
    enrich::{CgroupResolver, SocketHolders, process_cgroup},
    event::{
        Counter, Endpoint, Event, EventKind, Folded, LastListener, Process, ProcessSource, Queue,
    },
    explain::{self, PeerReset},
    kernel_enums::TcpState,
    last_listener::{History, Listeners},
    listeners::{DropKind, ListenerDrop},
};

/// How long a sent reset waits for the other end's received reset.
const PAIRING_WINDOW: Duration = Duration::from_secs(2);
/// How long a received reset waits for the other end's sent reset: on loopback the kernel
/// delivers the reset (and fires tcp_receive_reset) before tcp_send_reset fires in the sender.
pub const HOLD: Duration = Duration::from_millis(100);
const PAIRING_CAPACITY: usize = 4096;
const NS_PID_CACHE: usize = 4096;

/// A reset this host sent, remembered to explain the reset the other end (also on this host)
/// received.
struct SentReset {
    ktime_ns: u64,
    /// The sender's network namespace: where a refused connection's listener was.
    netns: Option<u64>,
    local: Endpoint,
    remote: Endpoint,
    cause: Cause,
    explanation: String,
}

/// Who an event belongs to.
enum Attribution {
    Process(Task, ProcessSource),
    /// No process to name, and why.
    Nobody(&'static str),
}

/// An event in arrival order, until it goes out.
enum Pending {
    /// A received reset waiting for its partner until `deadline_ns` (CLOCK_MONOTONIC), after
    /// which it is attributed without one. Boxed: moving a decoded event in and out of the
    /// queue cost more than attributing it.
    Waiting {
        decoded: Box<Decoded>,
        stack: Option<Vec<String>>,
        deadline_ns: u64,
    },
    /// Attributed and ready to go out.
    Ready(Box<Event>),
    /// Only while a waiting event is being attributed in place.
    Attributing,
}

/// A connection as (this end, the other end).
type Ends = (Endpoint, Endpoint);

pub struct Attributor {
    /// Accept-queue drops the kernel reported itself (kfree_skb), per (netns, port), since the
    /// last listener sample: the namespace counter counts them too.
    reported_listen_overflows: HashMap<(u64, u16), u64>,
    cgroups: CgroupResolver,
    /// Container and pod names from the runtimes' state files.
    names: ContainerNames,
    sockets: SocketHolders,
    ns_pids: HashMap<u32, Option<u32>>,
    /// Resets sent in the last [`PAIRING_WINDOW`], by (sender's end, receiver's end), and their
    /// order for expiry. Maps, not scans: storms bring tens of thousands a second.
    recent_sent: HashMap<Ends, SentReset>,
    sent_order: VecDeque<(u64, Ends)>,
    /// Events in arrival order; `first_seq` numbers the front one.
    pending: VecDeque<Pending>,
    first_seq: u64,
    /// Received resets waiting for their partner, by (receiver's end, sender's end) -> seq.
    waiting: HashMap<Ends, u64>,
    /// Write the one-line explanations (off when no output prints them).
    explanations: bool,
    /// The kernel's record of who listened where.
    listeners: Listeners,
}

impl Attributor {
    pub fn new(cgroups: CgroupResolver) -> Self {
        Self {
            reported_listen_overflows: HashMap::default(),
            cgroups,
            names: ContainerNames::default(),
            sockets: SocketHolders::default(),
            ns_pids: HashMap::default(),
            recent_sent: HashMap::default(),
            sent_order: VecDeque::new(),
            pending: VecDeque::new(),
            first_seq: 0,
            waiting: HashMap::default(),
            explanations: true,
            listeners: Listeners::none(),
        }
    }

    /// Reads container names from these runtime roots instead of the defaults.
    pub fn with_container_names(mut self, names: ContainerNames) -> Self {
        self.names = names;
        self
    }

    /// Reads who listened where from `listeners` (the kernel's record), for refused and queued
    /// connections.
    pub fn with_listeners(mut self, listeners: Listeners) -> Self {
        self.listeners = listeners;
        self
    }

    /// Leaves `explanation` empty, for outputs that never print it (summary, metrics).
    pub fn without_explanations(mut self) -> Self {
        self.explanations = false;
        self
    }

    /// Takes a decoded event (and its symbolized stack, with `--stack`) in; attributed events
    /// come out of [`Attributor::release`] in the order they went in. A received reset on an
    /// established connection waits up to [`HOLD`] for the reset this host may have sent on the
    /// same connection, which explains it.
    pub fn push(&mut self, decoded: Decoded, stack: Option<Vec<String>>) {
        let event = match decoded.kind {
            EventKind::ResetReceived => {
                let peer = self.peer_of(&decoded);
                let pairable =
                    !matches!(decoded.state, Some(TcpState::SynSent | TcpState::CloseWait));
                if peer.is_none()
                    && pairable
                    && let (Some(local), Some(remote)) = (decoded.local, decoded.remote)
                {
                    let seq = self.first_seq + self.pending.len() as u64;
                    self.waiting.insert((local, remote), seq);
                    let deadline_ns = decoded.ktime_ns + HOLD.as_nanos() as u64;
                    self.pending.push_back(Pending::Waiting {
                        decoded: Box::new(decoded),
                        stack,
                        deadline_ns,
                    });
                    return;
                }
                self.attribute(decoded, peer, stack)
            }
            EventKind::ResetSent => {
                let event = self.attribute(decoded, None, stack);
                // The other end's received reset may already be waiting for this one.
                if let (Some(local), Some(remote)) = (event.local, event.remote)
                    && let Some(seq) = self.waiting.remove(&(remote, local))
                    && let Some(index) = seq.checked_sub(self.first_seq)
                {
                    self.attribute_waiting(index as usize, (local, remote));
                }
                event
            }
            EventKind::QueueDrop => {
                let event = self.attribute(decoded, None, stack);
                if event.cause == Some(Cause::AcceptQueueFull)
                    && let (Some(netns), Some(local)) = (event.netns, event.local)
                {
                    *self
                        .reported_listen_overflows
                        .entry((netns, local.port))
                        .or_default() += event.drops.unwrap_or(1);
                }
                event
            }
        };
        self.pending.push_back(Pending::Ready(event));
    }

    /// Attributes the received reset waiting at `index` with the reset this host just sent on
    /// `sent` (sender's end, receiver's end).
    fn attribute_waiting(&mut self, index: usize, sent: Ends) {
        let Some(slot) = self.pending.get_mut(index) else {
            return;
        };
        match std::mem::replace(slot, Pending::Attributing) {
            Pending::Waiting { decoded, stack, .. } => {
                let peer = self.recent_sent.remove(&sent);
                let event = self.attribute(*decoded, peer, stack);
                self.pending[index] = Pending::Ready(event);
            }
            other => *slot = other,
        }
    }

    /// The event for drops a listener sample found, less those the kernel already reported
    /// one by one; None when nothing is left to report.
    pub fn listener_drop_event(&mut self, drop: &ListenerDrop) -> Option<Event> {
        let listener = &drop.listener;
        let (cause, queue_len) = match drop.kind {
            DropKind::AcceptQueueFull => (Cause::AcceptQueueFull, listener.accept_len),
            DropKind::SynQueueFull => (Cause::SynQueueFull, listener.syn_queue),
        };
        let mut drops = drop.drops;
        if cause == Cause::AcceptQueueFull {
            let key = (listener.netns, listener.local.port());
            drops = drops.saturating_sub(self.reported_listen_overflows.remove(&key).unwrap_or(0));
        }
        if drops == 0 {
            return None;
        }
        // What the kernel's counters and socket table said.
        let sampled = Decoded {
            kind: EventKind::QueueDrop,
            time: jiff::Timestamp::now(),
            ktime_ns: 0,
            reason: None,
            state: Some(TcpState::Listen),
            local: Some(listener.local.into()),
            remote: None,
            netns: Some(listener.netns),
            sock_cookie: None,
            queue: Some(Queue {
                len: queue_len,
                max: listener.accept_max,
            }),
            drops: Some(drops),
            counter: Some(Counter {
                name: drop.counter,
                delta: drop.counter_delta,
            }),
            sampled_cause: Some(cause),
            kernel: KernelFacts {
                owner: listener.holder.clone(),
                socket_ino: (listener.inode != 0).then_some(listener.inode),
                full_socket: true,
                has_socket_file: true,
                ..KernelFacts::default()
            },
            stack_id: None,
        };
        let mut event = self.attribute(sampled, None, None);
        if let (Some(note), Some(explanation)) = (&drop.note, event.explanation.as_mut()) {
            explanation.push_str(&format!(" ({note})"));
        }
        Some(*event)
    }

    /// Events attributed by now, in order; with `flush`, everything (at the end of a trace).
    pub fn release(&mut self, now_ns: u64, flush: bool) -> Vec<Box<Event>> {
        let mut out = Vec::new();
        while let Some(front) = self.pending.front() {
            if let Pending::Waiting { deadline_ns, .. } = front
                && !flush
                && now_ns < *deadline_ns
            {
                break;
            }
            let Some(pending) = self.pending.pop_front() else {
                break;
            };
            let seq = self.first_seq;
            self.first_seq += 1;
            match pending {
                Pending::Ready(event) => out.push(event),
                Pending::Waiting { decoded, stack, .. } => {
                    if let (Some(local), Some(remote)) = (decoded.local, decoded.remote)
                        && self.waiting.get(&(local, remote)) == Some(&seq)
                    {
                        self.waiting.remove(&(local, remote));
                    }
                    // The sender's event never came (folded or lost): the kernel's record of
                    // its abort stands in for it.
                    let peer = self.abort_peer(&decoded);
                    out.push(self.attribute(*decoded, peer, stack));
                }
                Pending::Attributing => {}
            }
        }
        out
    }

    /// Builds the printed event: cause, process, cgroup, container and explanation.
    fn attribute(
        &mut self,
        decoded: Decoded,
        peer: Option<SentReset>,
        stack: Option<Vec<String>>,
    ) -> Box<Event> {
        let cause = classify(&decoded, peer.as_ref().map(|sent| sent.cause));
        let history = self.listener_history(&decoded, cause, peer.as_ref());
        let last_listener = match &history {
            History::Closed(closed) => Some(LastListener {
                container: self.cgroup_and_container(&closed.closer).1,
                closer: closed.closer.clone(),
                ago: Duration::from_nanos(decoded.ktime_ns.saturating_sub(closed.closed_ns)),
            }),
            _ => None,
        };

        let (mut process, mut cgroup, mut container, mut nobody) = (None, None, None, None);
        match self.process_task(&decoded, cause) {
            Attribution::Process(task, source) => {
                (cgroup, container) = self.cgroup_and_container(&task);
                // The kernel's reading at the time, else /proc's now (gone with the process).
                let ns_pid = match task.ns_pid {
                    Some(ns_pid) => Some(ns_pid).filter(|ns_pid| *ns_pid != task.pid),
                    None => self.ns_pid(task.pid),
                };
                process = Some(Process {
                    pid: task.pid,
                    tid: task.tid,
                    ns_pid,
                    comm: task.comm,
                    source,
                });
            }
            Attribution::Nobody(why) => nobody = Some(why),
        }
        let family = decoded.family();
        let exchange_completed = decoded.kernel.all_sent_acked;
        let mut event = Box::new(Event {
            time: decoded.time,
            kind: decoded.kind,
            reason: decoded.reason,
            state: decoded.state,
            family,
            local: decoded.local,
            remote: decoded.remote,
            process,
            cause: Some(cause),
            explanation: None,
            netns: decoded.netns,
            cgroup,
            container,
            sock_cookie: decoded.sock_cookie,
            closed_by: decoded.kernel.closed_by,
            queue: decoded.queue,
            drops: decoded.drops,
            counter: decoded.counter,
            stack,
            folded: None,
            packet: decoded.kernel.packet,
            last_listener,
        });
        // Summary and metrics never print explanations: at storm rates the strings cost.
        let explanation = if self.explanations {
            let peer = peer.as_ref().map(|sent| PeerReset {
                cause: sent.cause,
                explanation: &sent.explanation,
            });
            let none_since_start = history == History::NoneSinceStart;
            explain::event_line(&event, cause, peer, exchange_completed, none_since_start)
        } else {
            String::new()
        };
        event.explanation = (self.explanations).then(|| match nobody {
            Some(why) if cause != Cause::PortClosed => {
                format!("{explanation} (no process named: {why})")
            }
            _ => explanation.clone(),
        });

        if event.kind == EventKind::ResetSent
            && let (Some(local), Some(remote)) = (event.local, event.remote)
        {
            self.remember_sent(SentReset {
                ktime_ns: decoded.ktime_ns,
                netns: decoded.netns,
                local,
                remote,
                cause,
                // Without this end's "no process named" note: it is about this end.
                explanation,
            });
        }
        event
    }

    /// The cgroup path and container of a process.
    fn cgroup_and_container(&mut self, task: &Task) -> (Option<String>, Option<Container>) {
        let cgroup = match task.cgroup_id {
            0 => process_cgroup(task.pid),
            id => self.cgroups.path(id),
        };
        let mut container = cgroup.as_deref().and_then(Container::from_cgroup);
        if let Some(container) = container.as_mut() {
            self.names.fill(container);
        }
        (cgroup, container)
    }

    /// For a refused connection: the listener that last listened where it went. A refused
    /// connect finds its listener in its own namespace when the refusal came from there
    /// (loopback) or from the namespace of the reset this host sent for it.
    fn listener_history(
        &mut self,
        event: &Decoded,
        cause: Cause,
        peer: Option<&SentReset>,
    ) -> History {
        match cause {
            Cause::PortClosed => {
                self.listeners
                    .closed_before(event.netns, event.local, event.ktime_ns)
            }
            Cause::ConnectionRefused => {
                let netns = match peer {
                    Some(sent) => sent.netns,
                    None if event.remote.is_some_and(|end| end.addr.is_loopback()) => event.netns,
                    None => None,
                };
                self.listeners
                    .closed_before(netns, event.remote, event.ktime_ns)
            }
            _ => History::Unknown,
        }
    }

    /// The process to name, and where it came from.
    fn process_task(&mut self, event: &Decoded, cause: Cause) -> Attribution {
        let facts = &event.kernel;
        let source = |task: &Task| match &facts.context {
            Some(context) if context.pid == task.pid => ProcessSource::Context,
            _ => ProcessSource::Owner,
        };
        // Connections still in a listener's accept queue belong to nobody yet: any owner recorded
        // at their address is a dead socket's. The process closing the listener sent these.
        if event.kind == EventKind::ResetSent
            && cause == Cause::ListenerClosed
            && let Some(context) = &facts.context
        {
            return Attribution::Process(context.clone(), ProcessSource::Context);
        }
        if let Some(owner) = &facts.owner {
            return Attribution::Process(owner.clone(), source(owner));
        }
        if event.kind == EventKind::ResetSent
            && fires_in_closing_process(cause)
            && let Some(context) = &facts.context
        {
            // Sent by close() itself: the running task is the process that closed the socket.
            return Attribution::Process(context.clone(), ProcessSource::Context);
        }
        if let Some(closed) = &facts.closed_by {
            return Attribution::Process(closed.closer.clone(), source(&closed.closer));
        }
        if let Some(inode) = facts.socket_ino
            && let Some(holder) = self.sockets.holder(inode)
        {
            let source = source(&holder);
            return Attribution::Process(holder, source);
        }
        // Still in a listener's accept queue (a full socket nobody holds a file for): the
        // connection is the listener's until a process accepts it.
        if event.kind == EventKind::ResetReceived
            && facts.full_socket
            && !facts.has_socket_file
            && matches!(
                event.state,
                Some(TcpState::Established | TcpState::CloseWait)
            )
            && let Some(listener) =
                self.listeners
                    .listener_of(event.netns, event.local, event.ktime_ns)
        {
            return Attribution::Process(listener, ProcessSource::Listener);
        }
        Attribution::Nobody(
            match (
                facts.full_socket,
                facts.segment.is_some(),
                facts.context.is_some(),
            ) {
                _ if event.state.is_none() => "no socket matched, so no process owns it",
                (true, _, _) if !facts.has_socket_file => {
                    "the socket had no file: it was never accepted, or its process had closed it"
                }
                (true, _, _) => {
                    "its owner is unknown: the socket was set up before rst-trace started"
                }
                _ => "its owner is unknown: the connection was set up before rst-trace started",
            },
        )
    }

    /// An event the kernel folded: `decoded` is the first of `count` events of one key, and
    /// the event stands for all of them. It is attributed at once (a received reset takes its
    /// partner from a recent sent reset, or from the kernel's record of the abort); the port
    /// of the end that is not the service end varied, and is left out, and so are what a
    /// coarse key left out (`coarse` 1: the remote address; 2: the service port too).
    pub fn folded_event(
        &mut self,
        mut decoded: Decoded,
        folded: Folded,
        service_local: bool,
        coarse: u8,
    ) -> Box<Event> {
        // Pairing needs the first event's real ends.
        let peer = match self.peer_of(&decoded) {
            Some(sent) => Some(sent),
            None => self.abort_peer(&decoded),
        };
        // Left out before attributing, so that the explanation names the ends as printed, not
        // the first event's as if they were all of them.
        let ephemeral = if service_local {
            decoded.remote.as_mut()
        } else {
            decoded.local.as_mut()
        };
        if let Some(end) = ephemeral {
            end.port = 0;
        }
        if coarse >= 1
            && let Some(remote) = decoded.remote.as_mut()
        {
            remote.addr = match remote.addr {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
        }
        if coarse >= 2 {
            for end in [decoded.local.as_mut(), decoded.remote.as_mut()]
                .into_iter()
                .flatten()
            {
                end.port = 0;
            }
        }
        let mut event = self.attribute(decoded, peer, None);
        event.folded = Some(folded);
        event
    }

    /// The reset the other end sent, rebuilt from the kernel's record of its abort (see
    /// [`crate::decoded::PeerAbort`]): the same cause and explanation its own event would have
    /// given.
    fn abort_peer(&mut self, received: &Decoded) -> Option<SentReset> {
        if received.kind != EventKind::ResetReceived {
            return None;
        }
        let abort = received.kernel.peer_abort.as_ref()?;
        let (local, remote) = (received.local?, received.remote?);
        let sender = Decoded {
            kind: EventKind::ResetSent,
            state: Some(TcpState::Close),
            local: Some(remote),
            remote: Some(local),
            kernel: KernelFacts {
                context: Some(abort.closer.clone()),
                linger_zero: abort.linger_zero,
                full_socket: true,
                has_socket_file: abort.has_socket_file,
                ..KernelFacts::default()
            },
            ..Decoded::new(EventKind::ResetSent, received.time, received.ktime_ns)
        };
        // Attributing a sent reset remembers it for its partner: that is this event.
        let _ = self.attribute(sender, None, None);
        self.recent_sent.remove(&(remote, local))
    }

    /// The reset this host sent on the same connection before `event`, when the other end is
    /// here too.
    fn peer_of(&mut self, event: &Decoded) -> Option<SentReset> {
        self.forget_old(event.ktime_ns);
        if event.kind != EventKind::ResetReceived {
            return None;
        }
        let (local, remote) = (event.local?, event.remote?);
        self.recent_sent.remove(&(remote, local))
    }

    fn remember_sent(&mut self, sent: SentReset) {
        if self.sent_order.len() >= PAIRING_CAPACITY
            && let Some((ktime, ends)) = self.sent_order.pop_front()
        {
            self.forget_sent(ktime, ends);
        }
        let ends = (sent.local, sent.remote);
        self.sent_order.push_back((sent.ktime_ns, ends));
        self.recent_sent.insert(ends, sent);
    }

    fn forget_old(&mut self, now_ns: u64) {
        let window = PAIRING_WINDOW.as_nanos() as u64;
        while let Some(&(ktime, ends)) = self.sent_order.front() {
            if now_ns.saturating_sub(ktime) <= window {
                break;
            }
            self.sent_order.pop_front();
            self.forget_sent(ktime, ends);
        }
    }

    /// Forgets a remembered reset unless a newer one on the same connection replaced it.
    fn forget_sent(&mut self, ktime: u64, ends: Ends) {
        if self
            .recent_sent
            .get(&ends)
            .is_some_and(|sent| sent.ktime_ns == ktime)
        {
            self.recent_sent.remove(&ends);
        }
    }

    /// The pid inside the process's own PID namespace, from `/proc/<pid>/status` (`NSpid`), when
    /// it differs from the host pid.
    fn ns_pid(&mut self, pid: u32) -> Option<u32> {
        if let Some(cached) = self.ns_pids.get(&pid) {
            return *cached;
        }
        if self.ns_pids.len() >= NS_PID_CACHE {
            self.ns_pids.clear();
        }
        let ns_pid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| innermost_ns_pid(&status))
            .filter(|ns_pid| *ns_pid != pid);
        self.ns_pids.insert(pid, ns_pid);
        ns_pid
    }
}

/// The last number of the `NSpid:` line: the pid in the innermost namespace.
pub fn innermost_ns_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().last())
        .and_then(|pid| pid.parse().ok())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        decoded::Segment,
        kernel_enums::{DropReason, Reason, ResetReason},
        listeners::ListenerQueue,
    };

    const MS: u64 = 1_000_000;
    const HOLD_NS: u64 = HOLD.as_nanos() as u64;

    /// A task no /proc entry exists for (above any pid_max), in no cgroup the test resolves.
    fn task(pid: u32, comm: &str) -> Task {
        Task {
            pid,
            tid: pid,
            comm: comm.to_string(),
            cgroup_id: 1,
            ns_pid: None,
        }
    }

    fn end(text: &str) -> Option<Endpoint> {
        text.parse::<SocketAddr>().ok().map(Endpoint::from)
    }

    const CLIENT: &str = "127.0.0.1:40000";
    const SERVER: &str = "127.0.0.1:8080";
    const OTHER: &str = "127.0.0.1:9999";

    /// A reset this host sent at `at_ms` from `local` to `remote`, closed with SO_LINGER 0 by
    /// the socket's owner.
    fn linger_sent(at_ms: u64, local: &str, remote: &str) -> Decoded {
        Decoded {
            ktime_ns: at_ms * MS,
            reason: Some(Reason::Reset(ResetReason::TcpAbortOnLinger)),
            state: Some(TcpState::Close),
            local: end(local),
            remote: end(remote),
            kernel: KernelFacts {
                owner: Some(task(5_000_001, "client")),
                full_socket: true,
                has_socket_file: true,
                linger_zero: true,
                ..KernelFacts::default()
            },
            ..Decoded::for_test(EventKind::ResetSent)
        }
    }

    /// A reset for a segment no socket matched (the sender's view of a half-open connection).
    fn no_socket_sent(at_ms: u64, local: &str, remote: &str) -> Decoded {
        Decoded {
            ktime_ns: at_ms * MS,
            reason: Some(Reason::Reset(ResetReason::NoSocket)),
            local: end(local),
            remote: end(remote),
            kernel: KernelFacts {
                segment: Some(Segment(0x18)),
                ..KernelFacts::default()
            },
            ..Decoded::for_test(EventKind::ResetSent)
        }
    }

    /// A reset this host received at `at_ms` on `local`'s socket in `state`.
    fn received(at_ms: u64, state: TcpState, local: &str, remote: &str) -> Decoded {
        Decoded {
            ktime_ns: at_ms * MS,
            state: Some(state),
            local: end(local),
            remote: end(remote),
            kernel: KernelFacts {
                owner: Some(task(5_000_002, "server")),
                full_socket: true,
                has_socket_file: true,
                ..KernelFacts::default()
            },
            ..Decoded::for_test(EventKind::ResetReceived)
        }
    }

    enum Step {
        Push(Box<Decoded>),
        /// Release at this CLOCK_MONOTONIC time (ns), flushing or not; expect these events out.
        Release(u64, bool, &'static [Out]),
    }

    /// An event expected out of `release`: kind, cause, and how its explanation begins.
    type Out = (EventKind, Cause, &'static str);

    const SENT_LINGER: Out = (
        EventKind::ResetSent,
        Cause::LingerAbort,
        "client (pid 5000001) closed the connection with SO_LINGER",
    );
    const PAIRED_LINGER: Out = (
        EventKind::ResetReceived,
        Cause::LingerAbort,
        "the other end is on this host and sent it: client (pid 5000001) closed",
    );
    const UNPAIRED: Out = (
        EventKind::ResetReceived,
        Cause::PeerAbort,
        "127.0.0.1:40000 reset the connection; nothing on this host explains it",
    );

    #[test]
    fn pairs_and_holds_resets_by_connection_and_time() {
        use Step::Release;
        let push = |decoded| Step::Push(Box::new(decoded));
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "sent first: the received reset pairs at once",
                vec![
                    push(linger_sent(0, CLIENT, SERVER)),
                    push(received(1, TcpState::Established, SERVER, CLIENT)),
                    Release(MS, false, &[SENT_LINGER, PAIRED_LINGER]),
                ],
            ),
            (
                "received first (loopback's order): held until the sent reset, order kept",
                vec![
                    push(received(0, TcpState::Established, SERVER, CLIENT)),
                    Release(0, false, &[]),
                    push(linger_sent(1, CLIENT, SERVER)),
                    Release(MS, false, &[PAIRED_LINGER, SENT_LINGER]),
                ],
            ),
            (
                "no partner: held for HOLD, then a peer abort",
                vec![
                    push(received(0, TcpState::Established, SERVER, CLIENT)),
                    Release(HOLD_NS - 1, false, &[]),
                    Release(HOLD_NS, false, &[UNPAIRED]),
                ],
            ),
            (
                "a held reset keeps later events behind it",
                vec![
                    push(received(0, TcpState::Established, SERVER, CLIENT)),
                    push(linger_sent(1, OTHER, SERVER)),
                    Release(MS, false, &[]),
                    Release(HOLD_NS, false, &[UNPAIRED, SENT_LINGER]),
                ],
            ),
            (
                "flush releases a held reset at once",
                vec![
                    push(received(0, TcpState::Established, SERVER, CLIENT)),
                    Release(0, true, &[UNPAIRED]),
                ],
            ),
            (
                "a refused connect is never held",
                vec![
                    push(received(0, TcpState::SynSent, SERVER, CLIENT)),
                    Release(
                        0,
                        false,
                        &[(
                            EventKind::ResetReceived,
                            Cause::ConnectionRefused,
                            "server (pid 5000002) connected to 127.0.0.1:40000, where nothing",
                        )],
                    ),
                ],
            ),
            (
                "a sent reset older than the pairing window explains nothing",
                vec![
                    push(linger_sent(0, CLIENT, SERVER)),
                    push(received(3_000, TcpState::Established, SERVER, CLIENT)),
                    Release(3_000 * MS + HOLD_NS, false, &[SENT_LINGER, UNPAIRED]),
                ],
            ),
            (
                "a reset sent from the end that received one is not its partner",
                vec![
                    push(linger_sent(0, SERVER, CLIENT)),
                    push(received(1, TcpState::Established, SERVER, CLIENT)),
                    Release(MS, false, &[SENT_LINGER]),
                    Release(MS + HOLD_NS, false, &[UNPAIRED]),
                ],
            ),
            (
                "a half-open sender's view does not explain the received reset",
                vec![
                    push(no_socket_sent(0, CLIENT, SERVER)),
                    push(received(1, TcpState::Established, SERVER, CLIENT)),
                    Release(
                        MS,
                        false,
                        &[
                            (
                                EventKind::ResetSent,
                                Cause::HalfOpen,
                                "a segment from 127.0.0.1:8080 (not a SYN) arrived",
                            ),
                            (
                                EventKind::ResetReceived,
                                Cause::PeerAbort,
                                "the other end is on this host and reset the connection: a \
                                 segment from 127.0.0.1:8080",
                            ),
                        ],
                    ),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut attributor = Attributor::new(CgroupResolver::with_root(None));
            for step in steps {
                match step {
                    Step::Push(decoded) => attributor.push(*decoded, None),
                    Release(now_ns, flush, expected) => {
                        let out: Vec<(EventKind, Option<Cause>, String)> = attributor
                            .release(now_ns, flush)
                            .into_iter()
                            .map(|e| (e.kind, e.cause, e.explanation.unwrap_or_default()))
                            .collect();
                        assert_eq!(out.len(), expected.len(), "{name}: {out:?}");
                        for ((kind, cause, line), (want_kind, want_cause, start)) in
                            out.iter().zip(expected.iter())
                        {
                            assert_eq!(
                                (*kind, *cause),
                                (*want_kind, Some(*want_cause)),
                                "{name}: {out:?}"
                            );
                            assert!(line.starts_with(start), "{name}: {line}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn listener_samples_report_only_drops_the_kernel_did_not() {
        let listener = ListenerQueue {
            netns: 7,
            local: "127.0.0.1:8080".parse().unwrap(),
            accept_len: 5,
            accept_max: 4,
            syn_queue: 0,
            inode: 0,
            holder: None,
        };
        let sample = |drops| ListenerDrop {
            kind: DropKind::AcceptQueueFull,
            listener: listener.clone(),
            drops,
            counter: "ListenOverflows",
            counter_delta: drops,
            note: Some("shared".to_string()),
        };
        let overflow = |at_ms| Decoded {
            ktime_ns: at_ms * MS,
            reason: Some(Reason::Drop(DropReason::TcpListenOverflow)),
            local: end(SERVER),
            netns: Some(7),
            drops: Some(1),
            ..Decoded::for_test(EventKind::QueueDrop)
        };
        let mut attributor = Attributor::new(CgroupResolver::with_root(None));
        attributor.push(overflow(0), None);
        attributor.push(overflow(1), None);
        let out = attributor.release(MS, false);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|e| e.cause == Some(Cause::AcceptQueueFull)));

        // Two of the sample's five were reported one by one already.
        let event = attributor.listener_drop_event(&sample(5)).unwrap();
        assert_eq!(event.drops, Some(3));
        assert_eq!(event.cause, Some(Cause::AcceptQueueFull));
        assert_eq!(event.state, Some(TcpState::Listen));
        assert_eq!(event.queue, Some(Queue { len: 5, max: 4 }));
        let explanation = event.explanation.unwrap();
        assert!(
            explanation
                .contains("(5/4): 3 connection attempts (kernel counter ListenOverflows +5)"),
            "{explanation}"
        );
        assert!(explanation.ends_with(" (shared)"), "{explanation}");
        // The count starts again after each sample; a sample with nothing left is no event.
        assert!(attributor.listener_drop_event(&sample(2)).is_some());
        attributor.push(overflow(2), None);
        assert!(attributor.listener_drop_event(&sample(1)).is_none());
    }

    /// The kernel's record of listeners: 127.0.0.1:8080 listened on by pid 5000003 since 1 s,
    /// and 0.0.0.0:9001 listened on from 1 s to 2 s by pid 5000004, which closed it.
    fn recorded_listeners() -> Listeners {
        use rst_trace_common::{COMM_LEN, ListenerHistory, ListenerKey, Owner};
        let owner = |tgid: u32, name: &str, since_ns: u64| {
            let mut comm = [0u8; COMM_LEN];
            comm[..name.len()].copy_from_slice(name.as_bytes());
            Owner {
                tgid,
                pid: tgid,
                cgroup_id: 1,
                since_ns,
                comm,
                ns_tgid: 1,
                _pad: 0,
            }
        };
        let key = |text: &str| crate::last_listener::candidate_keys(7, end(text).unwrap())[0];
        let table: std::collections::HashMap<ListenerKey, ListenerHistory> = [
            (
                key(SERVER),
                ListenerHistory {
                    sk: 1,
                    owner: owner(5_000_003, "server", 1_000 * MS),
                    ..ListenerHistory::default()
                },
            ),
            (
                key("0.0.0.0:9001"),
                ListenerHistory {
                    sk: 2,
                    owner: owner(5_000_004, "gunicorn", 1_000 * MS),
                    closer: owner(5_000_004, "gunicorn", 2_000 * MS),
                    closed_ns: 2_000 * MS,
                    ..ListenerHistory::default()
                },
            ),
        ]
        .into_iter()
        .collect();
        Listeners::new(Box::new(table))
    }

    #[test]
    fn a_refused_connection_names_the_last_listener_there() {
        let mut attributor =
            Attributor::new(CgroupResolver::with_root(None)).with_listeners(recorded_listeners());
        let syn = |at_ms, to: &str| Decoded {
            netns: Some(7),
            kernel: KernelFacts {
                segment: Some(Segment(0x02)),
                ..KernelFacts::default()
            },
            ..no_socket_sent(at_ms, to, CLIENT)
        };
        // Bound to 0.0.0.0, refused on 127.0.0.1, 3.2 s after its close.
        attributor.push(syn(5_200, "127.0.0.1:9001"), None);
        // Nothing ever listened on 9002.
        attributor.push(syn(5_300, "127.0.0.1:9002"), None);
        let out = attributor.release(6_000 * MS, false);
        assert_eq!(out.len(), 2);
        let last = out[0].last_listener.as_ref().expect("the closed listener");
        assert_eq!(
            (last.closer.pid, last.closer.comm.as_str(), last.ago),
            (5_000_004, "gunicorn", Duration::from_millis(3_200))
        );
        assert_eq!(
            out[0].explanation.as_deref(),
            Some(
                "nothing listens on 127.0.0.1:9001 since gunicorn (pid 5000004) closed its \
                 listener 3.2 s ago: the SYN from 127.0.0.1:40000 was refused (no process owns a \
                 closed port)"
            )
        );
        assert_eq!(out[1].last_listener, None);
        assert_eq!(
            out[1].explanation.as_deref(),
            Some(
                "nothing listens on 127.0.0.1:9002: the SYN from 127.0.0.1:40000 was refused (no \
                 process owns a closed port); nothing has listened there since rst-trace started"
            )
        );
    }

    #[test]
    fn a_connection_nobody_accepted_yet_belongs_to_the_listener() {
        let mut attributor =
            Attributor::new(CgroupResolver::with_root(None)).with_listeners(recorded_listeners());
        let queued = Decoded {
            netns: Some(7),
            kernel: KernelFacts {
                full_socket: true,
                has_socket_file: false,
                ..KernelFacts::default()
            },
            ..received(3_000, TcpState::Established, SERVER, CLIENT)
        };
        attributor.push(queued.clone(), None);
        let out = attributor.release(3_000 * MS, true);
        let process = out[0].process.as_ref().expect("the listener's process");
        assert_eq!(
            (process.pid, process.comm.as_str(), process.source),
            (5_000_003, "server", ProcessSource::Listener)
        );
        // The kernel read its pid in its namespace (1) at listen(); /proc is not asked.
        assert_eq!(process.ns_pid, Some(1));
        // Accepted (it has a file): no listener is named.
        let accepted = Decoded {
            kernel: KernelFacts {
                has_socket_file: true,
                ..queued.kernel.clone()
            },
            ..queued
        };
        attributor.push(accepted, None);
        let out = attributor.release(3_000 * MS, true);
        assert_eq!(out[0].process, None);
    }

    #[test]
    fn reads_the_innermost_pid_namespace() {
        let status = "Name:\tnginx\nTgid:\t4321\nPid:\t4321\nNSpid:\t4321\t7\n";
        assert_eq!(innermost_ns_pid(status), Some(7));
        assert_eq!(innermost_ns_pid("Name:\tx\nNSpid:\t12\n"), Some(12));
        assert_eq!(innermost_ns_pid("Name:\tx\n"), None);
    }

    #[test]
    fn folded_events_leave_out_what_varied_among_their_events() {
        let folded = Folded {
            count: 5_000,
            first: jiff::Timestamp::UNIX_EPOCH,
            last: jiff::Timestamp::UNIX_EPOCH,
        };
        let syn_to_closed_port = || Decoded {
            kernel: KernelFacts {
                segment: Some(Segment(0x02)),
                ..KernelFacts::default()
            },
            ..no_socket_sent(0, SERVER, "10.1.2.3:40000")
        };
        // (coarse, remote end as printed, explanation)
        for (coarse, remote, explanation) in [
            (
                0,
                "10.1.2.3:*",
                "nothing listens on 127.0.0.1:8080: the SYN from 10.1.2.3:* was refused",
            ),
            (
                1,
                "0.0.0.0:*",
                "nothing listens on 127.0.0.1:8080: the SYN from 0.0.0.0:* was refused",
            ),
            (
                2,
                "0.0.0.0:*",
                "nothing listens on 127.0.0.1:*: the SYN from 0.0.0.0:* was refused",
            ),
        ] {
            let mut attributor = Attributor::new(CgroupResolver::new());
            let event = attributor.folded_event(syn_to_closed_port(), folded, true, coarse);
            assert_eq!(event.folded, Some(folded));
            assert_eq!(
                event.remote.map(|end| end.to_string()).as_deref(),
                Some(remote)
            );
            let text = event.explanation.unwrap_or_default();
            assert!(text.starts_with(explanation), "coarse {coarse}: {text}");
        }
    }
}
