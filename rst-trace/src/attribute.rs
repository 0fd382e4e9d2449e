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
    enrich::{CgroupResolver, SocketHolders, process_cgroup},
    event::{
        ClosedByView, Counter, Endpoint, Event, EventKind, Family, KernelFacts, Process,
        ProcessSource, Queue, Task,
    },
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

/// An event waiting in arrival order until it is attributed.
struct Pending {
    /// Taken out while a waiting event is attributed in place. Boxed: an event is over 600
    /// bytes, and moving it in and out of the queue cost more than attributing it.
    event: Option<Box<Event>>,
    /// Attributed and ready to go out.
    ready: bool,
    /// CLOCK_MONOTONIC after which a waiting received reset is attributed without a peer.
    deadline_ns: u64,
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

    /// Takes an event in; attributed events come out of [`Attributor::release`] in the order
    /// they went in. A received reset on an established connection waits up to [`HOLD`] for the
    /// reset this host may have sent on the same connection, which explains it.
    pub fn push(&mut self, event: Event) {
        let mut event = Box::new(event);
        match event.kind {
            EventKind::ResetReceived => {
                let peer = self.peer_of(&event);
                let pairable = !matches!(event.state.as_deref(), Some("SYN_SENT" | "CLOSE_WAIT"));
                if peer.is_none()
                    && pairable
                    && let (Some(local), Some(remote)) = (event.local, event.remote)
                {
                    let seq = self.first_seq + self.pending.len() as u64;
                    self.waiting.insert((local, remote), seq);
                    let deadline_ns = event.ktime_ns + HOLD.as_nanos() as u64;
                    self.pending.push_back(Pending {
                        event: Some(event),
                        ready: false,
                        deadline_ns,
                    });
                    return;
                }
                self.attribute(&mut event, peer);
            }
            EventKind::ResetSent => {
                self.attribute(&mut event, None);
                // The other end's received reset may already be waiting for this one.
                if let (Some(local), Some(remote)) = (event.local, event.remote)
                    && let Some(seq) = self.waiting.remove(&(remote, local))
                    && let Some(index) = seq.checked_sub(self.first_seq)
                    && let Some(slot) = self.pending.get_mut(index as usize)
                    && !slot.ready
                    && let Some(mut waiting) = slot.event.take()
                {
                    let sent = self.recent_sent.remove(&(local, remote));
                    self.attribute(&mut waiting, sent);
                    let slot = &mut self.pending[index as usize];
                    slot.event = Some(waiting);
                    slot.ready = true;
                }
            }
            EventKind::QueueDrop => {
                self.attribute(&mut event, None);
                if event.cause == Some(Cause::AcceptQueueFull)
                    && let (Some(netns), Some(local)) = (event.netns, event.local)
                {
                    *self
                        .reported_listen_overflows
                        .entry((netns, local.port))
                        .or_default() += event.drops.unwrap_or(1);
                }
            }
        }
        self.pending.push_back(Pending {
            event: Some(event),
            ready: true,
            deadline_ns: 0,
        });
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
        let mut event = Event {
            time: jiff::Timestamp::now(),
            kind: EventKind::QueueDrop,
            reason: None,
            state: Some("LISTEN".to_string()),
            family: Some(Family::of(listener.local.ip())),
            local: Some(listener.local.into()),
            remote: None,
            process: None,
            cause: Some(cause),
            explanation: None,
            netns: Some(listener.netns),
            cgroup: None,
            container: None,
            sock_cookie: None,
            closed_by: None,
            queue: Some(Queue {
                len: queue_len,
                max: listener.accept_max,
            }),
            drops: Some(drops),
            counter: Some(Counter {
                name: drop.counter,
                delta: drop.counter_delta,
            }),
            stack: None,
            ktime_ns: 0,
            kernel: KernelFacts {
                socket_ino: (listener.inode != 0).then_some(listener.inode),
                full_socket: true,
                has_socket_file: true,
                ..KernelFacts::default()
            },
        };
        self.attribute(&mut event, None);
        if let (Some(note), Some(explanation)) = (&drop.note, event.explanation.as_mut()) {
            explanation.push_str(&format!(" ({note})"));
        }
        Some(event)
    }

    /// Events attributed by now, in order; with `flush`, everything (at the end of a trace).
    pub fn release(&mut self, now_ns: u64, flush: bool) -> Vec<Box<Event>> {
        let mut out = Vec::new();
        while let Some(front) = self.pending.front() {
            if !front.ready && !flush && now_ns < front.deadline_ns {
                break;
            }
            let Some(pending) = self.pending.pop_front() else {
                break;
            };
            let seq = self.first_seq;
            self.first_seq += 1;
            let Some(mut event) = pending.event else {
                continue;
            };
            if !pending.ready {
                if let (Some(local), Some(remote)) = (event.local, event.remote)
                    && self.waiting.get(&(local, remote)) == Some(&seq)
                {
                    self.waiting.remove(&(local, remote));
                }
                self.attribute(&mut event, None);
            }
            out.push(event);
        }
        out
    }

    fn attribute(&mut self, event: &mut Event, peer: Option<SentReset>) {
        let cause = classify(event, peer.as_ref().map(|sent| sent.cause));
        event.cause = Some(cause);

        let mut nobody = None;
        match self.process_task(event, cause) {
            Attribution::Process(task, source) => {
                event.cgroup = match task.cgroup_id {
                    0 => process_cgroup(task.pid),
                    id => self.cgroups.path(id),
                };
                event.container = event.cgroup.as_deref().and_then(Container::from_cgroup);
                event.process = Some(Process {
                    pid: task.pid,
                    tid: task.tid,
                    comm: task.comm,
                    source,
                    ns_pid: self.ns_pid(task.pid),
                });
            }
            Attribution::Nobody(why) => nobody = Some(why),
        }
        event.closed_by = event.kernel.closed_by.as_ref().map(|closed| ClosedByView {
            pid: closed.closer.pid,
            comm: closed.closer.comm.clone(),
            seconds_ago: (closed.ago.as_secs_f64() * 1000.0).round() / 1000.0,
        });
        // Summary and metrics never print explanations: at storm rates the strings cost.
        let explanation = if self.explanations {
            explain(event, cause, peer.as_ref())
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
                ktime_ns: event.ktime_ns,
                local,
                remote,
                cause,
                // Without this end's "no process named" note: it is about this end.
                explanation,
            });
        }
    }

    /// The process to name, and where it came from.
    fn process_task(&mut self, event: &Event, cause: Cause) -> Attribution {
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
    fn peer_of(&mut self, event: &Event) -> Option<SentReset> {
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

/// ` (2/1)`: a queue's length and limit.
fn queue(event: &Event) -> String {
    event
        .queue
        .map_or_else(String::new, |q| format!(" ({}/{})", q.len, q.max))
}

/// `3 connection attempts` (with the counter that saw them).
fn dropped(event: &Event, what: &str) -> String {
    let drops = event.drops.unwrap_or(1);
    let plural = if drops == 1 { "" } else { "s" };
    match &event.counter {
        Some(counter) => format!(
            "{drops} {what}{plural} (kernel counter {} +{})",
            counter.name, counter.delta
        ),
        None => format!("{drops} {what}{plural}"),
    }
}

fn who(process: Option<&Process>) -> String {
    process.map_or_else(
        || "a process".to_string(),
        |p| format!("{} (pid {})", p.comm, p.pid),
    )
}

fn endpoint(end: Option<Endpoint>) -> String {
    end.map_or_else(|| "?".to_string(), |end| end.to_string())
}

fn ago(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 1.0 {
        format!("{} ms", duration.as_millis())
    } else if secs < 120.0 {
        format!("{secs:.1} s")
    } else {
        format!("{:.0} min", secs / 60.0)
    }
}

/// The one line printed under an event.
fn explain(event: &Event, cause: Cause, peer: Option<&SentReset>) -> String {
    let mut line = match peer {
        // Both ends are here and the sender's side explains the reset.
        Some(sent) if sent.cause == cause => {
            format!(
                "the other end is on this host and sent it: {}",
                sent.explanation
            )
        }
        // The refusal says it all: nothing listens there.
        Some(_) if cause == Cause::ConnectionRefused => explain_cause(event, cause),
        Some(sent) if cause == Cause::PeerAbort => {
            format!(
                "the other end is on this host and reset the connection: {}",
                sent.explanation
            )
        }
        Some(sent) => format!(
            "{}; the other end is on this host: {}",
            explain_cause(event, cause),
            sent.explanation
        ),
        None => explain_cause(event, cause),
    };
    let facts = &event.kernel;
    if event.kind == EventKind::ResetReceived && facts.all_sent_acked {
        // S13: a client that aborts after reading the response; the request itself completed.
        line.push_str(
            "; the exchange had completed: everything this host sent had been acknowledged \
             before the reset",
        );
    }
    line
}

fn explain_cause(event: &Event, cause: Cause) -> String {
    let process = who(event.process.as_ref());
    let local = endpoint(event.local);
    let remote = endpoint(event.remote);
    let facts = &event.kernel;
    let closer = facts.closed_by.as_ref().map(|closed| {
        format!(
            "{} (pid {}) closed it {} before",
            closed.closer.comm,
            closed.closer.pid,
            ago(closed.ago)
        )
    });
    match cause {
        Cause::PortClosed => format!(
            "nothing listens on {local}: the SYN from {remote} was refused (no process owns a \
             closed port)"
        ),
        Cause::HalfOpen => format!(
            "a segment from {remote} (not a SYN) arrived for a connection {local} does not know: \
             the peer believes it still exists"
        ),
        Cause::ConnectionRefused => {
            format!("{process} connected to {remote}, where nothing listens (connection refused)")
        }
        Cause::LingerAbort => {
            format!("{process} closed the connection with SO_LINGER {{on, 0}}, aborting it")
        }
        Cause::UnreadDataClose => format!(
            "{process} closed the connection with unread data in its receive buffer, which forces \
             a reset"
        ),
        Cause::DataAfterClose => match closer {
            Some(closer) => format!(
                "data from {remote} arrived for a connection the application had closed: {closer}"
            ),
            None => format!(
                "data from {remote} arrived for a connection the application on {local} had \
                 already closed"
            ),
        },
        Cause::StaleConnectionReuse => format!(
            "{process} sent on a connection {remote} had already closed (CLOSE_WAIT): make the \
             client's idle timeout shorter than the server's keep-alive timeout, or retry \
             idempotent requests"
        ),
        Cause::ListenerClosed => format!(
            "{process} closed the listener on port {} while this connection waited in its accept \
             queue",
            event.local.map_or(0, |end| end.port)
        ),
        Cause::Timewait => format!("a segment from {remote} arrived for {local} in TIME_WAIT"),
        Cause::KeepaliveTimeout => format!(
            "keep-alive probes from {local} to {remote} went unanswered; the kernel gave up on \
             the connection of {process}"
        ),
        Cause::MemoryPressure => {
            "the kernel aborted the connection under orphan-socket or TCP memory limits".to_string()
        }
        Cause::InvalidPacket => format!(
            "the kernel rejected a segment from {remote} ({})",
            event.reason.as_deref().unwrap_or("invalid segment")
        ),
        Cause::SocketDestroyed => format!("{process} destroyed the socket (tcp_abort, ss -K)"),
        Cause::PeerAbort => {
            format!("{remote} reset the connection; nothing on this host explains it")
        }
        Cause::AcceptQueueFull => format!(
            "the accept queue of {process}'s listener on {local} was full{}: {} dropped; accept \
             faster, or raise the listen() backlog and net.core.somaxconn in its network namespace",
            queue(event),
            dropped(event, "connection attempt"),
        ),
        Cause::SynQueueFull => format!(
            "the SYN queue of {process}'s listener on {local} was full and syncookies are off: {} \
             dropped; enable net.ipv4.tcp_syncookies or raise tcp_max_syn_backlog and the backlog",
            dropped(event, "SYN"),
        ),
        Cause::SocketBacklogFull => format!(
            "{process} held its socket {local} while its backlog filled: a segment from {remote} \
             was dropped"
        ),
        Cause::ReceiveBufferFull => format!(
            "the receive buffer of {process}'s socket {local} was full{}: data from {remote} was \
             dropped; read faster or raise SO_RCVBUF / net.ipv4.tcp_rmem",
            queue(event),
        ),
        Cause::CpuBacklogFull => format!(
            "the per-CPU input backlog was full (net.core.netdev_max_backlog): a packet from \
             {remote} was dropped before TCP saw it"
        ),
        Cause::Other => format!(
            "kernel reason {} in state {}",
            event.reason.as_deref().unwrap_or("-"),
            event.state.as_deref().unwrap_or("-")
        ),
    }
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

    #[test]
    fn durations_read_naturally() {
        assert_eq!(ago(Duration::from_millis(250)), "250 ms");
        assert_eq!(ago(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(ago(Duration::from_secs(600)), "10 min");
    }
}
