//! The "storm + needles + capture" workload's check: the resets tcpdump saw on lo, matched
//! against rst-trace's JSON events and the needles' records. Every RST on the wire must be
//! accounted for by a `reset_sent` event (one by one, or in a folded event's count), and every
//! rare reset must be its own event, at both ends, with the cause and process its needle
//! implies.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::needles::{NeedleKind, Record};

/// One RST on the wire: (sender, receiver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rst {
    pub from: (IpAddr, u16),
    pub to: (IpAddr, u16),
}

/// The RSTs in a capture file, read with `tcpdump -r FILE -n -q` (one line per packet:
/// `IP 127.0.0.1.20001 > 127.0.0.1.40312: tcp 0`). On lo each packet is captured once.
pub fn read_pcap(path: &Path) -> anyhow::Result<Vec<Rst>> {
    let out = Command::new("tcpdump")
        .args(["-r"])
        .arg(path)
        .args(["-n", "-q", "-t"])
        .output()
        .context("could not run tcpdump -r")?;
    if !out.status.success() {
        bail!(
            "tcpdump -r {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| parse_packet(line).with_context(|| format!("tcpdump -r printed {line:?}")))
        .collect()
}

/// `IP 127.0.0.1.20001 > 127.0.0.1.40312: tcp 0` (or `IP6 ::1.20001 > ::1.40312: tcp 0`).
fn parse_packet(line: &str) -> Option<Rst> {
    let mut fields = line.split_whitespace();
    if !matches!(fields.next()?, "IP" | "IP6") {
        return None;
    }
    let end = |text: &str| -> Option<(IpAddr, u16)> {
        let (addr, port) = text.rsplit_once('.')?;
        Some((addr.parse().ok()?, port.parse().ok()?))
    };
    let from = end(fields.next()?)?;
    if fields.next()? != ">" {
        return None;
    }
    let to = end(fields.next()?.strip_suffix(':')?)?;
    Some(Rst { from, to })
}

/// One of rst-trace's JSON events, the fields the matching needs. A port of `None` is a folded
/// event's varying end (JSON `null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub sent: bool,
    pub local: (IpAddr, Option<u16>),
    pub remote: (IpAddr, Option<u16>),
    /// `folded.count`, or None for an event written one by one.
    pub folded: Option<u64>,
    pub cause: String,
    pub pid: Option<u64>,
}

impl Event {
    /// None for events that are not resets (queue drops) or lack their ends.
    fn from_json(value: &Value) -> Option<Self> {
        let sent = match value["kind"].as_str()? {
            "reset_sent" => true,
            "reset_received" => false,
            _ => return None,
        };
        let end = |end: &Value| -> Option<(IpAddr, Option<u16>)> {
            let port = match &end["port"] {
                Value::Null => None,
                port => Some(u16::try_from(port.as_u64()?).ok()?),
            };
            Some((end["addr"].as_str()?.parse().ok()?, port))
        };
        Some(Self {
            sent,
            local: end(&value["local"])?,
            remote: end(&value["remote"])?,
            folded: value["folded"]["count"].as_u64(),
            cause: value["cause"].as_str().unwrap_or_default().to_string(),
            pid: value["process"]["pid"].as_u64(),
        })
    }

    /// The RST this event is an end of: (sender pattern, receiver pattern).
    fn rst(&self) -> ((IpAddr, Option<u16>), (IpAddr, Option<u16>)) {
        if self.sent {
            (self.local, self.remote)
        } else {
            (self.remote, self.local)
        }
    }

    fn count(&self) -> u64 {
        self.folded.unwrap_or(1)
    }
}

/// rst-trace's NDJSON output: its reset events (other lines and kinds are left out).
pub fn parse_events(ndjson: &str) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    for line in ndjson.lines().filter(|line| !line.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("rst-trace printed a line that is not JSON: {line:?}"))?;
        events.extend(Event::from_json(&value));
    }
    Ok(events)
}

/// How one needle's resets fared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindFigures {
    /// Resets the needle made (its records).
    pub made: u64,
    /// Of those, on the wire (in tcpdump's capture).
    pub on_wire: u64,
    /// Ends (sent, received) reported as an event of their own, and of those, with the cause
    /// and process the needle implies.
    pub sent_own: u64,
    pub sent_right: u64,
    pub received_own: u64,
    pub received_right: u64,
}

impl KindFigures {
    fn add(&mut self, other: &Self) {
        self.made += other.made;
        self.on_wire += other.on_wire;
        self.sent_own += other.sent_own;
        self.sent_right += other.sent_right;
        self.received_own += other.received_own;
        self.received_right += other.received_right;
    }

    /// Ends reported as their own event, of both ends of every reset made.
    pub fn own_ratio(&self) -> Option<f64> {
        ratio(self.sent_own + self.received_own, 2 * self.made)
    }

    /// Ends with the right cause and process, of both ends of every reset made.
    pub fn right_ratio(&self) -> Option<f64> {
        ratio(self.sent_right + self.received_right, 2 * self.made)
    }
}

pub fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// What a run of the workload showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matched {
    /// RSTs tcpdump captured.
    pub wire: u64,
    /// Whether rst-trace's events were matched (not in a no-tracer run).
    pub traced: bool,
    /// Wire RSTs accounted for by `reset_sent` events (one by one or folded), and by
    /// `reset_received` events.
    pub sent_accounted: u64,
    pub received_accounted: u64,
    /// Events (folded ones by their count) with no RST on the wire left to match: should be 0.
    pub sent_unmatched: u64,
    pub received_unmatched: u64,
    pub kinds: BTreeMap<NeedleKind, KindFigures>,
}

impl Matched {
    pub fn add(&mut self, other: &Self) {
        self.wire += other.wire;
        self.traced |= other.traced;
        self.sent_accounted += other.sent_accounted;
        self.received_accounted += other.received_accounted;
        self.sent_unmatched += other.sent_unmatched;
        self.received_unmatched += other.received_unmatched;
        for (kind, figures) in &other.kinds {
            self.kinds.entry(*kind).or_default().add(figures);
        }
    }

    /// Every needle kind together.
    pub fn rare(&self) -> KindFigures {
        let mut all = KindFigures::default();
        for figures in self.kinds.values() {
            all.add(figures);
        }
        all
    }
}

/// Matches the wire, the needles' records and (where a tracer ran) rst-trace's events.
pub fn matched(wire: &[Rst], records: &[Record], events: Option<&[Event]>) -> Matched {
    let mut out = Matched {
        wire: wire.len() as u64,
        traced: events.is_some(),
        ..Matched::default()
    };
    let mut on_wire: HashMap<Rst, u64> = HashMap::new();
    for rst in wire {
        *on_wire.entry(*rst).or_default() += 1;
    }
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let needle_rst = |record: &Record| {
        let (from, to) = record.ports();
        Rst {
            from: (loopback, from),
            to: (loopback, to),
        }
    };
    {
        let mut left = on_wire.clone();
        for record in records {
            let figures = out.kinds.entry(record.kind).or_default();
            figures.made += 1;
            if let Some(n) = left.get_mut(&needle_rst(record)).filter(|n| **n > 0) {
                *n -= 1;
                figures.on_wire += 1;
            }
        }
    }
    let Some(events) = events else {
        return out;
    };

    for sent in [true, false] {
        let (accounted, unmatched) = account(&on_wire, events.iter().filter(|e| e.sent == sent));
        if sent {
            (out.sent_accounted, out.sent_unmatched) = (accounted, unmatched);
        } else {
            (out.received_accounted, out.received_unmatched) = (accounted, unmatched);
        }
    }

    // The events written one by one, by (direction, sender, receiver).
    let mut own: HashMap<(bool, Rst), Vec<&Event>> = HashMap::new();
    for event in events.iter().filter(|e| e.folded.is_none()) {
        let ((from_addr, Some(from_port)), (to_addr, Some(to_port))) = event.rst() else {
            continue;
        };
        let rst = Rst {
            from: (from_addr, from_port),
            to: (to_addr, to_port),
        };
        own.entry((event.sent, rst)).or_default().push(event);
    }
    for record in records {
        let (sent_cause, received_cause) = record.kind.causes();
        let figures = out.kinds.entry(record.kind).or_default();
        for (sent, cause) in [(true, sent_cause), (false, received_cause)] {
            let Some(event) = own
                .get_mut(&(sent, needle_rst(record)))
                .and_then(|events| events.pop())
            else {
                continue;
            };
            let right = event.cause == cause && event.pid == Some(u64::from(record.pid));
            if sent {
                figures.sent_own += 1;
                figures.sent_right += u64::from(right);
            } else {
                figures.received_own += 1;
                figures.received_right += u64::from(right);
            }
        }
    }
    out
}

/// Takes each event's RSTs off the wire: events one by one first (their exact ends), then
/// folded ones (their count, from the RSTs their ends match). Returns (RSTs accounted for,
/// events' RSTs with none left to match).
fn account<'a>(wire: &HashMap<Rst, u64>, events: impl Iterator<Item = &'a Event>) -> (u64, u64) {
    let mut left = wire.clone();
    let (mut accounted, mut unmatched) = (0, 0);
    let (single, folded): (Vec<&Event>, Vec<&Event>) = events.partition(|e| e.folded.is_none());
    for event in single {
        let ((from_addr, Some(from_port)), (to_addr, Some(to_port))) = event.rst() else {
            unmatched += 1;
            continue;
        };
        let rst = Rst {
            from: (from_addr, from_port),
            to: (to_addr, to_port),
        };
        match left.get_mut(&rst).filter(|n| **n > 0) {
            Some(n) => {
                *n -= 1;
                accounted += 1;
            }
            None => unmatched += 1,
        }
    }
    for event in folded {
        let (from, to) = event.rst();
        let fits = |end: (IpAddr, u16), pattern: (IpAddr, Option<u16>)| {
            end.0 == pattern.0 && pattern.1.is_none_or(|port| port == end.1)
        };
        let mut wanted = event.count();
        for (rst, n) in left.iter_mut() {
            if wanted == 0 {
                break;
            }
            if *n > 0 && fits(rst.from, from) && fits(rst.to, to) {
                let taken = wanted.min(*n);
                *n -= taken;
                wanted -= taken;
                accounted += taken;
            }
        }
        unmatched += wanted;
    }
    (accounted, unmatched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lo(port: u16) -> (IpAddr, u16) {
        (IpAddr::from([127, 0, 0, 1]), port)
    }

    fn rst(from: u16, to: u16) -> Rst {
        Rst {
            from: lo(from),
            to: lo(to),
        }
    }

    #[test]
    fn reads_tcpdump_lines() {
        assert_eq!(
            parse_packet("IP 127.0.0.1.20001 > 127.0.0.1.40312: tcp 0"),
            Some(rst(20001, 40312))
        );
        assert_eq!(
            parse_packet("IP6 ::1.20001 > ::1.40312: tcp 0"),
            Some(Rst {
                from: ("::1".parse().expect("addr"), 20001),
                to: ("::1".parse().expect("addr"), 40312),
            })
        );
        assert_eq!(parse_packet("ARP, Request who-has 127.0.0.1"), None);
    }

    #[test]
    fn reads_rst_trace_events() {
        let ndjson = concat!(
            r#"{"kind":"reset_sent","local":{"addr":"127.0.0.1","port":20001},"#,
            r#""remote":{"addr":"127.0.0.1","port":null},"cause":"port_closed","process":null,"#,
            r#""folded":{"count":7,"first":"x","last":"y"}}"#,
            "\n",
            r#"{"kind":"reset_received","local":{"addr":"127.0.0.1","port":40000},"#,
            r#""remote":{"addr":"127.0.0.1","port":20003},"cause":"linger_abort","#,
            r#""process":{"pid":42},"folded":null}"#,
            "\n",
            r#"{"kind":"queue_drop","local":{"addr":"127.0.0.1","port":80},"remote":null}"#,
            "\n"
        );
        let events = parse_events(ndjson).expect("events");
        assert_eq!(events.len(), 2, "the queue drop is left out");
        assert_eq!(events[0].folded, Some(7));
        assert_eq!(events[0].remote.1, None);
        assert_eq!(events[0].pid, None);
        assert_eq!(events[1].pid, Some(42));
        assert_eq!(
            events[1].rst(),
            ((lo(20003).0, Some(20003)), (lo(40000).0, Some(40000)))
        );
        assert!(parse_events("not json\n").is_err());
    }

    fn event(sent: bool, local: u16, remote: u16, folded: Option<u64>, cause: &str) -> Event {
        let end = |port: u16| (lo(0).0, (port != 0).then_some(port));
        Event {
            sent,
            local: end(local),
            remote: end(remote),
            folded,
            cause: cause.to_string(),
            pid: Some(42),
        }
    }

    #[test]
    fn every_rst_is_accounted_for_once() {
        // The storm: 5 RSTs from the closed port to three client ports; a linger-0 abort.
        let wire = vec![
            rst(20001, 40000),
            rst(20001, 40001),
            rst(20001, 40001),
            rst(20001, 40002),
            rst(20001, 40003),
            rst(40100, 20003),
        ];
        let records = vec![Record {
            kind: NeedleKind::Linger,
            pid: 42,
            client_port: 40100,
            server_port: 20003,
        }];
        let events = vec![
            event(true, 20001, 40000, None, "port_closed"),
            event(true, 20001, 0, Some(4), "port_closed"),
            event(false, 0, 20001, Some(3), "connection_refused"),
            event(true, 40100, 20003, None, "linger_abort"),
            event(false, 20003, 40100, None, "peer_abort"),
            // No such RST: counted as unmatched.
            event(true, 20001, 49999, None, "port_closed"),
        ];
        let m = matched(&wire, &records, Some(&events));
        assert_eq!(m.wire, 6);
        assert_eq!((m.sent_accounted, m.sent_unmatched), (6, 1));
        assert_eq!((m.received_accounted, m.received_unmatched), (4, 0));
        assert_eq!(
            m.kinds[&NeedleKind::Linger],
            KindFigures {
                made: 1,
                on_wire: 1,
                sent_own: 1,
                sent_right: 1,
                received_own: 1,
                received_right: 0,
            },
            "the received end has the wrong cause"
        );
        assert_eq!(m.rare().own_ratio(), Some(1.0));
        assert_eq!(m.rare().right_ratio(), Some(0.5));

        // A folded count larger than the wire holds is unmatched beyond it.
        let m = matched(
            &wire,
            &[],
            Some(&[event(true, 20001, 0, Some(9), "port_closed")]),
        );
        assert_eq!((m.sent_accounted, m.sent_unmatched), (5, 4));

        // Without a tracer only the needles' resets are checked against the wire.
        let m = matched(&wire[..5], &records, None);
        assert!(!m.traced);
        assert_eq!(m.kinds[&NeedleKind::Linger].on_wire, 0);
    }
}
