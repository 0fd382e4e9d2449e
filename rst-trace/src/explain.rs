//! Explanations, in an operator's words: the one line printed under each event, and what
//! `rst-trace explain CAUSE` prints about a cause. The rules that decide the cause are in
//! [`crate::cause`]; this module only puts a decided cause into words.

use std::{fmt, time::Duration};

use crate::{
    cause::Cause,
    event::{Endpoint, Event, EventKind, Process},
    kernel_enums::{Reason, TcpState},
};

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

/// The reset this host sent on the same connection, when the other end is on this host too.
pub struct PeerReset<'a> {
    pub cause: Cause,
    /// Its own line, without notes about its own end.
    pub explanation: &'a str,
}

/// The one line printed under an event. `exchange_completed`: everything this host sent had been
/// acknowledged before a received reset. `no_listener_since_start`: for a refused connection,
/// the kernel's record knows of no listener closed where it went since rst-trace started (the
/// one it knows is in `event.last_listener`).
pub fn event_line(
    event: &Event,
    cause: Cause,
    peer: Option<PeerReset<'_>>,
    exchange_completed: bool,
    no_listener_since_start: bool,
) -> String {
    let cause_line = |event: &Event, cause: Cause| {
        let mut line = explain_cause(event, cause);
        if no_listener_since_start && matches!(cause, Cause::PortClosed | Cause::ConnectionRefused)
        {
            line.push_str("; nothing has listened there since rst-trace started");
        }
        line
    };
    let mut line = match peer {
        // Both ends are here and the sender's side explains the reset.
        Some(sent) if sent.cause == cause => {
            format!(
                "the other end is on this host and sent it: {}",
                sent.explanation
            )
        }
        // The refusal says it all: nothing listens there.
        Some(_) if cause == Cause::ConnectionRefused => cause_line(event, cause),
        Some(sent) if cause == Cause::PeerAbort => {
            format!(
                "the other end is on this host and reset the connection: {}",
                sent.explanation
            )
        }
        Some(sent) => format!(
            "{}; the other end is on this host: {}",
            cause_line(event, cause),
            sent.explanation
        ),
        None => cause_line(event, cause),
    };
    if event.kind == EventKind::ResetReceived && exchange_completed {
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
    let closer = event.closed_by.as_ref().map(|closed| {
        format!(
            "{} (pid {}) closed it {} before",
            closed.closer.comm,
            closed.closer.pid,
            ago(closed.ago)
        )
    });
    // Who last listened where a connection was refused, and when it stopped.
    let since = event
        .last_listener
        .as_ref()
        .map_or_else(String::new, |last| {
            format!(
                " since {} (pid {}) closed its listener {} ago",
                last.closer.comm,
                last.closer.pid,
                ago(last.ago)
            )
        });
    match cause {
        Cause::PortClosed => format!(
            "nothing listens on {local}{since}: the SYN from {remote} was refused (no process \
             owns a closed port)"
        ),
        Cause::HalfOpen => format!(
            "a segment from {remote} (not a SYN) arrived for a connection {local} does not know: \
             the peer believes it still exists"
        ),
        Cause::ConnectionRefused => {
            format!(
                "{process} connected to {remote}, where nothing listens{since} (connection refused)"
            )
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
            event
                .reason
                .as_ref()
                .map_or("invalid segment", Reason::name)
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
            event.reason.as_ref().map_or("-", Reason::name),
            event.state.as_ref().map_or("-", TcpState::name)
        ),
    }
}

/// What `rst-trace explain CAUSE` prints.
pub struct Explanation {
    pub meaning: &'static str,
    /// How it shows up in applications: the error strings people search for.
    pub symptoms: &'static [&'static str],
    pub fix: &'static str,
}

impl Cause {
    pub fn explain(self) -> Explanation {
        use Cause::*;
        let (meaning, symptoms, fix): (&str, &[&str], &str) = match self {
            PortClosed => (
                "A SYN arrived for a port with no listening socket, so this host answered with a \
                 reset. Nothing was listening: the service is down, restarting, listening on \
                 another address or port, or not started in this network namespace. When a \
                 listener there closed while rst-trace ran, the event names the process that \
                 closed it and how long before (`last_listener`).",
                &[
                    "ECONNREFUSED",
                    "Connection refused",
                    "connect() failed (111: Connection refused)",
                    "502 Bad Gateway",
                ],
                "Start the service or point clients at the right address and port; check `ss -lnt` \
                 in the right network namespace. During restarts, keep the socket open (socket \
                 activation, SO_REUSEPORT hand-over) or retry connects.",
            ),
            HalfOpen => (
                "A segment that was not a SYN arrived for a connection this host does not know, so \
                 it answered with a reset. The peer still believes a connection exists: this host \
                 rebooted or lost the state, a NAT or load balancer mapping changed, or the \
                 connection was destroyed here while the peer was away.",
                &[
                    "Connection reset by peer",
                    "ECONNRESET",
                    "broken pipe after a failover",
                ],
                "Find why the connection state was lost (reboot, conntrack/NAT timeout shorter than \
                 the idle time, failover). Use TCP keep-alive or application pings shorter than \
                 NAT idle timeouts.",
            ),
            ConnectionRefused => (
                "This host tried to connect and the peer answered the SYN with a reset: nothing \
                 listens on that address and port. When the peer is on this host and a listener \
                 there closed while rst-trace ran, the event names that process (`last_listener`).",
                &[
                    "ECONNREFUSED",
                    "Connection refused",
                    "connect() failed (111: Connection refused)",
                    "502 Bad Gateway",
                ],
                "Check the upstream is running and listening on that address and port; check the \
                 address the client resolved. For proxies, check the upstream block.",
            ),
            LingerAbort => (
                "A process closed the connection with SO_LINGER on and a zero timeout, which \
                 aborts it with a reset instead of a FIN. Some clients (Jedis, some pools, load \
                 balancer health checks) do this on purpose to avoid TIME_WAIT.",
                &[
                    "Connection reset by peer (on the other end)",
                    "recv() failed (104: Connection reset by peer)",
                ],
                "Usually harmless when the application finished its exchange. If the peer loses \
                 data, stop setting SO_LINGER {on, 0} and close normally.",
            ),
            UnreadDataClose => (
                "A process closed the connection while unread data sat in its receive buffer; the \
                 kernel must then reset instead of closing cleanly (RFC 2525). Typical: a server \
                 answers one request and closes while the client already sent another (pipelining, \
                 or an error response sent before reading the whole body).",
                &[
                    "Connection reset by peer",
                    "unexpected EOF",
                    "Broken pipe",
                    "upstream prematurely closed connection",
                ],
                "Read (or drain) the request before closing; shut down the write side first and \
                 read until EOF; do not pipeline to servers that close after one response.",
            ),
            DataAfterClose => (
                "Data arrived for a connection this host's application had already closed, so the \
                 kernel answered with a reset. Classic case: an HTTP server closed an idle \
                 keep-alive connection, and the client reused it from its pool afterwards.",
                &[
                    "Connection reset by peer",
                    "unexpected end of stream",
                    "ECONNRESET on the first request after idle",
                ],
                "Make clients' idle timeout shorter than the server's keep-alive timeout, or have \
                 the clients retry idempotent requests on a fresh connection.",
            ),
            StaleConnectionReuse => (
                "This host sent on a connection the peer had already closed (the socket was in \
                 CLOSE_WAIT: the peer's FIN had arrived), and the peer answered with a reset. A \
                 connection pool reused a connection after the server's keep-alive timeout.",
                &[
                    "Connection reset by peer",
                    "unexpected end of stream",
                    "NoHttpResponseException",
                    "RemoteDisconnected",
                    "ECONNRESET after an idle period",
                ],
                "Make the client pool's idle timeout shorter than the server's keep-alive timeout \
                 (or validate connections before reuse), or retry idempotent requests.",
            ),
            ListenerClosed => (
                "A listening socket was closed while connections waited in its accept queue; each \
                 was reset. The server stopped or restarted without draining.",
                &[
                    "Connection reset by peer right after connect",
                    "ECONNRESET during deploys",
                ],
                "Drain before stopping: stop accepting new connections elsewhere (load balancer), \
                 accept what is queued, then close; or hand the socket over (SO_REUSEPORT, socket \
                 activation).",
            ),
            Timewait => (
                "A segment arrived for a connection in TIME_WAIT that could not be accepted \
                 (usually a stray or very late segment), so this host answered with a reset.",
                &["Connection reset by peer"],
                "Usually harmless. If it recurs, look for a peer reusing ports too fast or a \
                 middlebox replaying segments.",
            ),
            KeepaliveTimeout => (
                "TCP keep-alive probes went unanswered, so the kernel gave up on the connection and \
                 reset it. The peer vanished (crashed, network cut, firewall dropping) without \
                 closing.",
                &[
                    "ETIMEDOUT",
                    "Connection timed out",
                    "read: connection timed out",
                ],
                "Find out why the peer went silent (host down, firewall or NAT state expired). \
                 Tune keep-alive (tcp_keepalive_time/intvl/probes) to notice sooner if needed.",
            ),
            MemoryPressure => (
                "The kernel reset the connection because of orphan-socket or TCP memory limits \
                 (too many orphaned sockets, or tcp_mem exhausted).",
                &[
                    "Connection reset by peer",
                    "kernel: TCP: out of memory -- consider tuning tcp_mem",
                    "too many orphaned sockets",
                ],
                "Raise net.ipv4.tcp_max_orphans or tcp_mem, or find what leaves so many orphaned \
                 connections (peers that never read).",
            ),
            InvalidPacket => (
                "A segment with an unacceptable ACK, sequence number, flags, timestamp (PAWS) or \
                 SYN arrived, and the kernel answered with a reset.",
                &[
                    "Connection reset by peer",
                    "sporadic resets behind NAT or load balancers",
                ],
                "Look for middleboxes rewriting sequence numbers or timestamps, NAT reusing ports, \
                 or broken TCP stacks; compare with `nstat` PAWS and bad-ACK counters.",
            ),
            SocketDestroyed => (
                "The socket was destroyed administratively (`ss -K`, SOCK_DESTROY, a BPF or \
                 netlink tool), which resets the connection.",
                &[
                    "Connection reset by peer",
                    "Software caused connection abort",
                ],
                "Check which tool or agent kills sockets (the process shown), and why.",
            ),
            PeerAbort => (
                "The peer reset an established connection, and nothing on this host explains it: \
                 the peer application aborted the connection (SO_LINGER 0, a crash, a timeout in \
                 the client), or a middlebox reset it.",
                &[
                    "Connection reset by peer",
                    "recv() failed (104: Connection reset by peer)",
                    "ECONNRESET",
                ],
                "Look at the peer: its logs, its timeouts, a proxy or firewall between the two.",
            ),
            AcceptQueueFull => (
                "A listener's accept queue was full (the application accepts too slowly, or its \
                 listen() backlog is too small), so the kernel dropped the connection.",
                &[
                    "connect timeouts under load",
                    "SYN retransmits",
                    "ss -lnt: Recv-Q above Send-Q",
                    "TcpExtListenOverflows",
                ],
                "Accept faster (more workers), raise the listen() backlog and net.core.somaxconn \
                 in that network namespace.",
            ),
            SynQueueFull => (
                "A listener's SYN queue was full and syncookies were off, so the kernel dropped \
                 new SYNs (a SYN flood, or a burst larger than tcp_max_syn_backlog).",
                &["connect timeouts", "TcpExtTCPReqQFullDrop"],
                "Enable net.ipv4.tcp_syncookies, raise tcp_max_syn_backlog and the listen backlog.",
            ),
            SocketBacklogFull => (
                "Packets arrived while the socket was owned by a process and its backlog was full, \
                 so the kernel dropped them.",
                &["retransmits", "TcpExtTCPBacklogDrop"],
                "The process holds the socket lock too long, or the receive buffer is too small; \
                 raise rmem and read faster.",
            ),
            ReceiveBufferFull => (
                "The socket's receive buffer was full, so the kernel dropped incoming data.",
                &["retransmits", "zero window", "TcpExtTCPRcvQDrop"],
                "Read faster, or raise SO_RCVBUF / net.ipv4.tcp_rmem.",
            ),
            CpuBacklogFull => (
                "The per-CPU input backlog was full (net.core.netdev_max_backlog), so the kernel \
                 dropped packets before TCP saw them.",
                &["drops in /proc/net/softnet_stat"],
                "Raise net.core.netdev_max_backlog, spread interrupts (RSS/RPS).",
            ),
            Other => (
                "A reset or drop that matches none of the known causes; the kernel's reason name \
                 is still reported.",
                &[],
                "Look at the kernel reason and state in the event.",
            ),
        };
        Explanation {
            meaning,
            symptoms,
            fix,
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "What it means:\n  {}", self.meaning)?;
        if !self.symptoms.is_empty() {
            writeln!(f, "How it shows up:")?;
            for symptom in self.symptoms {
                writeln!(f, "  - {symptom}")?;
            }
        }
        write!(f, "What to change:\n  {}", self.fix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(ago(Duration::from_millis(250)), "250 ms");
        assert_eq!(ago(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(ago(Duration::from_secs(600)), "10 min");
    }

    #[test]
    fn stale_connection_reuse_says_to_shorten_the_client_idle_timeout() {
        let text = Cause::StaleConnectionReuse.explain().to_string();
        assert!(text.contains("idle timeout shorter than the server's keep-alive timeout"));
        assert!(text.contains("retry idempotent requests"));
    }
}
