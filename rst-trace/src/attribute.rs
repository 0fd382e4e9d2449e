//! Attribution: which process, which container and which cause an event belongs to.
//!
//! The kernel programs record each socket's owner when it connects, listens or is accepted, and
//! who closed a connection. Here that becomes the event's `process` (the owner, never whatever
//! task a softirq interrupted), its cgroup and container, its cause with a one-line explanation,
//! and the pairing of both ends of a connection when both are on this host.

use std::{collections::VecDeque, fs, time::Duration};

use foldhash::HashMap;

use crate::{
    cause::{Cause, classify, fires_in_closing_process},
    container::Container,
    decoded::{Decoded, KernelFacts, Task},
    enrich::{CgroupResolver, SocketHolders, process_cgroup},
    event::{Counter, Endpoint, Event, EventKind, Process, ProcessSource, Queue},
    explain::{self, PeerReset},
    kernel_enums::TcpState,
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
}

impl Attributor {
    pub fn new(cgroups: CgroupResolver) -> Self {
        Self {
            reported_listen_overflows: HashMap::default(),
            cgroups,
            sockets: SocketHolders::default(),
            ns_pids: HashMap::default(),
            recent_sent: HashMap::default(),
            sent_order: VecDeque::new(),
            pending: VecDeque::new(),
            first_seq: 0,
            waiting: HashMap::default(),
            explanations: true,
        }
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
                    out.push(self.attribute(*decoded, None, stack));
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

        let (mut process, mut cgroup, mut container, mut nobody) = (None, None, None, None);
        match self.process_task(&decoded, cause) {
            Attribution::Process(task, source) => {
                cgroup = match task.cgroup_id {
                    0 => process_cgroup(task.pid),
                    id => self.cgroups.path(id),
                };
                container = cgroup.as_deref().and_then(Container::from_cgroup);
                process = Some(Process {
                    pid: task.pid,
                    tid: task.tid,
                    ns_pid: self.ns_pid(task.pid),
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
        });
        // Summary and metrics never print explanations: at storm rates the strings cost.
        let explanation = if self.explanations {
            let peer = peer.as_ref().map(|sent| PeerReset {
                cause: sent.cause,
                explanation: &sent.explanation,
            });
            explain::event_line(&event, cause, peer, exchange_completed)
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
                local,
                remote,
                cause,
                // Without this end's "no process named" note: it is about this end.
                explanation,
            });
        }
        event
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
    use super::*;

    #[test]
    fn reads_the_innermost_pid_namespace() {
        let status = "Name:\tnginx\nTgid:\t4321\nPid:\t4321\nNSpid:\t4321\t7\n";
        assert_eq!(innermost_ns_pid(status), Some(7));
        assert_eq!(innermost_ns_pid("Name:\tx\nNSpid:\t12\n"), Some(12));
        assert_eq!(innermost_ns_pid("Name:\tx\n"), None);
    }
}
