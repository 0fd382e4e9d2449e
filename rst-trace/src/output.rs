//! Sinks: how events reach the operator. One line of text per event, or NDJSON.

use std::io::{self, Write};

use crate::event::Event;

/// Output format of the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub struct Sink<W: Write> {
    format: Format,
    out: W,
    time_zone: jiff::tz::TimeZone,
    wrote_header: bool,
}

impl<W: Write> Sink<W> {
    pub fn new(format: Format, out: W) -> Self {
        Self::with_time_zone(format, out, jiff::tz::TimeZone::system())
    }

    pub fn with_time_zone(format: Format, out: W, time_zone: jiff::tz::TimeZone) -> Self {
        Self {
            format,
            out,
            time_zone,
            wrote_header: false,
        }
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, event)?;
                self.out.write_all(b"\n")
            }
            Format::Text => {
                if !self.wrote_header {
                    self.wrote_header = true;
                    writeln!(self.out, "{}", text_header())?;
                }
                writeln!(self.out, "{}", text_line(event, &self.time_zone))
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

const TEXT_COLUMNS: [(&str, usize); 8] = [
    ("TIME", 15),
    ("DIR", 4),
    ("PID", 7),
    ("COMM", 15),
    ("LOCAL", 23),
    ("REMOTE", 23),
    ("STATE", 11),
    ("REASON", 0),
];

pub fn text_header() -> String {
    join_columns(TEXT_COLUMNS.iter().map(|(name, _)| name.to_string()))
}

/// `02:14:07.123456 SENT -       -               127.0.0.1:9  127.0.0.1:35340  -  NO_SOCKET`
pub fn text_line(event: &Event, time_zone: &jiff::tz::TimeZone) -> String {
    let time = event
        .time
        .to_zoned(time_zone.clone())
        .strftime("%H:%M:%S%.6f")
        .to_string();
    let dash = || "-".to_string();
    let (pid, comm) = match &event.process {
        Some(process) => (process.pid.to_string(), process.comm.clone()),
        None => (dash(), dash()),
    };
    join_columns([
        time,
        event.kind.label().to_string(),
        pid,
        comm,
        event.local.map_or_else(dash, |end| end.to_string()),
        event.remote.map_or_else(dash, |end| end.to_string()),
        event.state.clone().unwrap_or_else(dash),
        event.reason.clone().unwrap_or_else(dash),
    ])
}

fn join_columns(values: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for (value, (_, width)) in values.into_iter().zip(TEXT_COLUMNS) {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&format!("{value:<width$}"));
    }
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Endpoint, EventKind, Family, Process, ProcessSource};

    fn sample() -> Event {
        Event {
            time: jiff::Timestamp::from_nanosecond(1_763_777_647_123_456_789).unwrap(),
            kind: EventKind::ResetSent,
            reason: Some("NO_SOCKET".into()),
            state: None,
            family: Some(Family::Ipv4),
            local: Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port: 9,
            }),
            remote: Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port: 35340,
            }),
            process: None,
            cause: None,
            netns: None,
            cgroup: None,
            sock_cookie: None,
            ktime_ns: 0,
            cgroup_id: None,
        }
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut event = sample();
        event.process = Some(Process {
            pid: 1234,
            tid: 1235,
            comm: "python3".into(),
            source: ProcessSource::Context,
        });
        event.local = Some(Endpoint {
            addr: "::1".parse().unwrap(),
            port: 443,
        });
        event.family = Some(Family::Ipv6);
        event.sock_cookie = Some(8);
        let mut sink = Sink::new(Format::Json, Vec::new());
        sink.write(&event).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "time": "2025-11-22T02:14:07.123456789Z",
                "kind": "reset_sent",
                "reason": "NO_SOCKET",
                "state": null,
                "family": "ipv6",
                "local": {"addr": "::1", "port": 443},
                "remote": {"addr": "127.0.0.1", "port": 35340},
                "process": {"pid": 1234, "tid": 1235, "comm": "python3", "source": "context"},
                "cause": null,
                "netns": null,
                "cgroup": null,
                "sock_cookie": 8
            })
        );
    }

    #[test]
    fn json_time_keeps_nine_digits() {
        let mut event = sample();
        event.time = jiff::Timestamp::from_nanosecond(1_763_777_647_000_000_000).unwrap();
        let mut sink = Sink::new(Format::Json, Vec::new());
        sink.write(&event).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert!(
            text.starts_with(r#"{"time":"2025-11-22T02:14:07.000000000Z","#),
            "{text}"
        );
    }

    #[test]
    fn text_prints_a_header_then_one_line_per_event() {
        let mut sink = Sink::with_time_zone(Format::Text, Vec::new(), jiff::tz::TimeZone::UTC);
        sink.write(&sample()).unwrap();
        let mut received = sample();
        received.kind = EventKind::ResetReceived;
        received.reason = None;
        received.state = Some("SYN_SENT".into());
        received.local = Some(Endpoint {
            addr: "::1".parse().unwrap(),
            port: 35340,
        });
        received.remote = Some(Endpoint {
            addr: "::1".parse().unwrap(),
            port: 9,
        });
        received.process = Some(Process {
            pid: 77,
            tid: 77,
            comm: "curl".into(),
            source: ProcessSource::Context,
        });
        sink.write(&received).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "TIME            DIR  PID     COMM            LOCAL                   REMOTE                  STATE       REASON",
                "02:14:07.123456 SENT -       -               127.0.0.1:9             127.0.0.1:35340         -           NO_SOCKET",
                "02:14:07.123456 RECV 77      curl            [::1]:35340             [::1]:9                 SYN_SENT    -",
            ]
        );
    }
}
