//! The event model every sink prints: one reset sent, reset received or queue drop, as
//! attribution built it.
//!
//! Field names and meanings are a contract with users' scripts (the NDJSON schema in the README):
//! fields may be added, never renamed.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::{Serialize, Serializer, ser::SerializeStruct};

use crate::{
    cause::Cause,
    container::Container,
    decoded::Task,
    kernel_enums::{Reason, TcpState},
    pcap::CapturedPacket,
};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ResetSent,
    ResetReceived,
    QueueDrop,
}

impl EventKind {
    /// The short word of the text output.
    pub fn label(self) -> &'static str {
        match self {
            Self::ResetSent => "SENT",
            Self::ResetReceived => "RECV",
            Self::QueueDrop => "DROP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One end of a connection. Port 0 stands for "any port": the end of a folded event whose port
/// changed with every connection; it is written `null` in JSON and `*` in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut out = serializer.serialize_struct("Endpoint", 2)?;
        out.serialize_field("addr", &self.addr)?;
        out.serialize_field("port", &(self.port != 0).then_some(self.port))?;
        out.end()
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr: addr.ip(),
            port: addr.port(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    /// `1.2.3.4:80`, `[::1]:80`. IPv4 is written by hand: explanations name both ends of every
    /// event, and the formatting machinery was a seventh of rst-trace's time at storm rates.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port == 0 {
            return match self.addr {
                IpAddr::V4(ip) => f.pad(&format!("{ip}:*")),
                IpAddr::V6(ip) => f.pad(&format!("[{ip}]:*")),
            };
        }
        let IpAddr::V4(ip) = self.addr else {
            return SocketAddr::new(self.addr, self.port).fmt(f);
        };
        let mut text = [0u8; 21];
        let mut len = 0;
        let mut push = |bytes: &[u8]| {
            text[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        for (index, octet) in ip.octets().into_iter().enumerate() {
            if index > 0 {
                push(b".");
            }
            push(decimal(u32::from(octet), &mut [0; 5]));
        }
        push(b":");
        push(decimal(u32::from(self.port), &mut [0; 5]));
        // Only ASCII digits, dots and a colon were written.
        f.pad(std::str::from_utf8(&text[..len]).unwrap_or_default())
    }
}

/// The decimal digits of `value` (at most 99999), written into the end of `buf`.
fn decimal(mut value: u32, buf: &mut [u8; 5]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 || start == 0 {
            return &buf[start..];
        }
    }
}

/// Where the process of an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessSource {
    /// The socket's owner.
    Owner,
    /// The task that was running when the event fired.
    Context,
    /// The process listening where the connection waits in the accept queue: nobody has
    /// accepted it yet.
    Listener,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    /// The thread (equal to `pid` for a single-threaded process).
    pub tid: u32,
    pub comm: String,
    pub source: ProcessSource,
    /// The pid inside the process's own PID namespace (a container's view), when it differs.
    pub ns_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Queue {
    pub len: u32,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub name: &'static str,
    pub delta: u64,
}

/// Who closed a connection before the reset, and how long before. Printed as `pid`, `comm` and
/// `seconds_ago` (to the millisecond); the closer's thread and cgroup serve attribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedBy {
    pub closer: Task,
    pub ago: Duration,
}

impl Serialize for ClosedBy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("ClosedBy", 3)?;
        out.serialize_field("pid", &self.closer.pid)?;
        out.serialize_field("comm", &self.closer.comm)?;
        let seconds_ago = (self.ago.as_secs_f64() * 1000.0).round() / 1000.0;
        out.serialize_field("seconds_ago", &seconds_ago)?;
        out.end()
    }
}

/// The listener that last listened where a connection was refused: who closed it, its
/// container, and how long before the event. Printed as `pid`, `comm`, `container` and
/// `seconds_ago` (to the millisecond).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastListener {
    pub closer: Task,
    pub container: Option<Container>,
    pub ago: Duration,
}

impl Serialize for LastListener {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("LastListener", 4)?;
        out.serialize_field("pid", &self.closer.pid)?;
        out.serialize_field("comm", &self.closer.comm)?;
        out.serialize_field("container", &self.container)?;
        let seconds_ago = (self.ago.as_secs_f64() * 1000.0).round() / 1000.0;
        out.serialize_field("seconds_ago", &seconds_ago)?;
        out.end()
    }
}

/// One event as the sinks print it, built by attribution from a [`crate::decoded::Decoded`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    #[serde(serialize_with = "rfc3339_nanos")]
    pub time: jiff::Timestamp,
    pub kind: EventKind,
    /// The kernel's reason name (`NO_SOCKET`), null where the kernel gives none.
    pub reason: Option<Reason>,
    /// TCP state of the socket without the `TCP_` prefix, null when there was no socket.
    pub state: Option<TcpState>,
    pub family: Option<Family>,
    /// This host's end.
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub process: Option<Process>,
    pub cause: Option<Cause>,
    /// One line that says why, in the operator's words.
    pub explanation: Option<String>,
    pub netns: Option<u64>,
    /// cgroup v2 path of `process`.
    pub cgroup: Option<String>,
    pub container: Option<Container>,
    pub sock_cookie: Option<u64>,
    /// For resets after the application closed the connection: who closed it, how long before.
    pub closed_by: Option<ClosedBy>,
    /// For queue drops: the queue's length and limit at the drop (or the interval's maximum).
    pub queue: Option<Queue>,
    /// For queue drops: how many drops this event stands for.
    pub drops: Option<u64>,
    /// For queue drops seen through a kernel counter: the counter and its increase.
    pub counter: Option<Counter>,
    /// With `--stack`: the kernel stack where the reset or drop was generated, innermost first.
    pub stack: Option<Vec<String>>,
    /// For events the kernel counted instead of sending one by one (a storm): how many this
    /// event stands for, and when the first and last of them happened. Null for single events.
    pub folded: Option<Folded>,
    /// With `--pcap`: the packet the event is about (not in the JSON; written to the pcapng).
    #[serde(skip)]
    pub packet: Option<CapturedPacket>,
    /// For refused connections (`port_closed`, `connection_refused`): the listener that last
    /// listened there, closed before the event; null when none is known.
    pub last_listener: Option<LastListener>,
}

/// Events of one kind, addresses, service port and process that the kernel counted in one
/// second past the first `--fold-after`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Folded {
    pub count: u64,
    #[serde(serialize_with = "rfc3339_nanos")]
    pub first: jiff::Timestamp,
    #[serde(serialize_with = "rfc3339_nanos")]
    pub last: jiff::Timestamp,
}

impl Event {
    /// How many resets or drops this event stands for: a folded event's count, a counter's
    /// drops, or one.
    pub fn count(&self) -> u64 {
        self.folded.map_or(1, |folded| folded.count) * self.drops.unwrap_or(1)
    }

    /// The port of the service end: the one listened on or connected to, not a client's
    /// ephemeral port, by the same rule as the kernel's folding key: this host's end for drops,
    /// listeners and resets no socket matched, the remote end of a connect, else the end whose
    /// port is not in `ip_local_port_range` (the smaller port when that does not tell).
    pub fn service_port(&self) -> Option<u16> {
        let local = self.local.map(|end| end.port).filter(|port| *port != 0);
        let remote = self.remote.map(|end| end.port).filter(|port| *port != 0);
        let (Some(local), Some(remote)) = (local, remote) else {
            return local.or(remote);
        };
        let local_is_service = match (self.kind, self.state.as_ref()) {
            (EventKind::QueueDrop, _) => true,
            (_, None | Some(TcpState::Listen | TcpState::SynRecv | TcpState::NewSynRecv)) => true,
            (_, Some(TcpState::SynSent)) => false,
            _ => {
                let (low, high) = ephemeral_ports();
                let ephemeral = |port: u16| (low..=high).contains(&port);
                match (ephemeral(local), ephemeral(remote)) {
                    (true, false) => false,
                    (false, true) => true,
                    _ => local <= remote,
                }
            }
        };
        Some(if local_is_service { local } else { remote })
    }

    /// Either end uses `port`.
    pub fn has_port(&self, port: u16) -> bool {
        [self.local, self.remote]
            .iter()
            .flatten()
            .any(|end| end.port == port)
    }
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }
}

/// `net.ipv4.ip_local_port_range` of this host's namespace, where connecting sockets take their
/// port from (Linux's defaults when unreadable), read once.
pub fn ephemeral_ports() -> (u16, u16) {
    static RANGE: std::sync::OnceLock<(u16, u16)> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut ports = text.split_whitespace().map(str::parse::<u16>);
                Some((ports.next()?.ok()?, ports.next()?.ok()?))
            })
            .unwrap_or((32768, 60999))
    })
}

/// RFC 3339 in UTC with nanoseconds, always nine digits so that lines sort as text.
pub fn format_rfc3339_nanos(time: jiff::Timestamp) -> String {
    let seconds = jiff::Timestamp::from_second(time.as_second()).unwrap_or(time);
    format!(
        "{}.{:09}Z",
        seconds.strftime("%Y-%m-%dT%H:%M:%S"),
        time.subsec_nanosecond()
    )
}

fn rfc3339_nanos<S: Serializer>(time: &jiff::Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_rfc3339_nanos(*time))
}

#[cfg(test)]
impl Event {
    /// An event of `kind` with nothing else known, for tests to fill in with struct update
    /// syntax.
    pub(crate) fn for_test(kind: EventKind) -> Self {
        Self {
            time: jiff::Timestamp::UNIX_EPOCH,
            kind,
            reason: None,
            state: None,
            family: None,
            local: None,
            remote: None,
            process: None,
            cause: None,
            explanation: None,
            netns: None,
            cgroup: None,
            container: None,
            sock_cookie: None,
            closed_by: None,
            queue: None,
            drops: None,
            counter: None,
            stack: None,
            folded: None,
            packet: None,
            last_listener: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_print_as_socket_addresses() {
        for text in [
            "0.0.0.0:1",
            "255.255.255.255:65535",
            "10.1.20.3:8080",
            "127.0.0.1:9",
            "[::1]:80",
            "[2001:db8::1]:443",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let endpoint = Endpoint::from(addr);
            assert_eq!(endpoint.to_string(), text);
            assert_eq!(endpoint.to_string(), addr.to_string());
        }
        // Port 0: the any-port end of a folded event.
        for (text, json) in [
            ("127.0.0.1:0", r#"{"addr":"127.0.0.1","port":null}"#),
            ("[::1]:0", r#"{"addr":"::1","port":null}"#),
        ] {
            let endpoint = Endpoint::from(text.parse::<SocketAddr>().unwrap());
            assert_eq!(endpoint.to_string(), text.replace(":0", ":*"));
            assert_eq!(serde_json::to_string(&endpoint).unwrap(), json);
        }
        let padded = Endpoint::from("1.2.3.4:5".parse::<SocketAddr>().unwrap());
        assert_eq!(format!("{padded:<12}|"), "1.2.3.4:5   |");
    }
}
