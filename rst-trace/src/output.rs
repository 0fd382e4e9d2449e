//! Sinks: how events reach the operator. One line of text per event, or NDJSON.

use std::io::{self, Write};

use std::time::Instant;

use crate::{
    container::Container,
    escape::for_terminal,
    event::{Event, EventKind},
    pcap::PcapFile,
    summary::SummaryTable,
};

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
    color: bool,
    /// The text header printed last, if any; printed again when a container column appears.
    header: Option<Columns>,
    /// One JSON line, serialized whole before it is written: serde_json writes a record in
    /// dozens of small pieces, each a call through `W` otherwise.
    line: Vec<u8>,
}

/// Which optional columns the text output has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Columns {
    container: bool,
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
            color: false,
            header: None,
            line: Vec::with_capacity(1024),
        }
    }

    /// ANSI colours in the text output.
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        match self.format {
            Format::Json => {
                self.line.clear();
                serde_json::to_writer(&mut self.line, event)?;
                self.line.push(b'\n');
                self.out.write_all(&self.line)
            }
            Format::Text => {
                // The container column appears once any event has a container.
                let container =
                    self.header.is_some_and(|c| c.container) || event.container.is_some();
                let columns = Columns { container };
                if self.header != Some(columns) {
                    self.header = Some(columns);
                    writeln!(self.out, "{}", text_header(columns))?;
                }
                writeln!(
                    self.out,
                    "{}",
                    text_line(event, &self.time_zone, columns, self.color)
                )?;
                // The explanation quotes process names other users chose.
                if let Some(explanation) = &event.explanation {
                    writeln!(
                        self.out,
                        "{EXPLANATION_INDENT}{}",
                        for_terminal(explanation)
                    )?;
                }
                for frame in event.stack.iter().flatten() {
                    writeln!(self.out, "{STACK_INDENT}{}", for_terminal(frame))?;
                }
                Ok(())
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn inner(&self) -> &W {
        &self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

const EXPLANATION_INDENT: &str = "    -> ";
const STACK_INDENT: &str = "         ";

/// (name, width); width 0: the last column, not padded.
const TEXT_COLUMNS: [(&str, usize); 10] = [
    ("TIME", 15),
    ("DIR", 4),
    ("PID", 7),
    ("COMM", 15),
    ("CONTAINER", 12),
    ("LOCAL", 23),
    ("REMOTE", 23),
    ("STATE", 11),
    ("REASON", 22),
    ("CAUSE", 0),
];
const DIR_COLUMN: usize = 1;
const CONTAINER_COLUMN: usize = 4;
const CAUSE_COLUMN: usize = 9;

fn text_header(columns: Columns) -> String {
    let names = TEXT_COLUMNS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    join_columns(names, columns, None)
}

/// `02:14:07.123456 SENT -  -  127.0.0.1:9  127.0.0.1:35340  -  NO_SOCKET  port_closed`
fn text_line(
    event: &Event,
    time_zone: &jiff::tz::TimeZone,
    columns: Columns,
    color: bool,
) -> String {
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
    let container = event.container.as_ref().map_or_else(dash, Container::label);
    let kind_color = match event.kind {
        EventKind::ResetSent => "31",
        EventKind::ResetReceived => "33",
        EventKind::QueueDrop => "35",
    };
    join_columns(
        vec![
            time,
            event.kind.label().to_string(),
            pid,
            comm,
            container,
            event.local.map_or_else(dash, |end| end.to_string()),
            event.remote.map_or_else(dash, |end| end.to_string()),
            event.state.as_ref().map_or_else(dash, ToString::to_string),
            event.reason.as_ref().map_or_else(dash, ToString::to_string),
            cause_column(event),
        ],
        columns,
        color.then_some(kind_color),
    )
}

/// The cause, and for a folded event how many it stands for over how long:
/// `port_closed x1843212 in 1.0 s (folded)`.
fn cause_column(event: &Event) -> String {
    let cause = event.cause.map_or("-", |cause| cause.id());
    match &event.folded {
        Some(folded) => {
            let span = folded.last.duration_since(folded.first).as_secs_f64();
            format!("{cause} x{} in {span:.1} s (folded)", folded.count)
        }
        None => cause.to_string(),
    }
}

/// Pads each column, then colours the direction and the cause (so that escape codes do not
/// count towards the width).
fn join_columns(values: Vec<String>, columns: Columns, color: Option<&str>) -> String {
    let mut line = String::new();
    for (index, (value, (_, width))) in values.into_iter().zip(TEXT_COLUMNS).enumerate() {
        if index == CONTAINER_COLUMN && !columns.container {
            continue;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        // Escaped before padding, so that the width counts what the terminal shows.
        let value = for_terminal(&value);
        let padded = format!("{value:<width$}");
        match (color, index) {
            (Some(code), DIR_COLUMN) => line.push_str(&format!("\x1b[{code}m{padded}\x1b[0m")),
            (Some(_), CAUSE_COLUMN) => line.push_str(&format!("\x1b[1m{padded}\x1b[0m")),
            _ => line.push_str(&padded),
        }
    }
    line.trim_end().to_string()
}

/// Every place events go: the stream on stdout (text or JSON) or the summary table, an NDJSON
/// file, the packets in a pcapng file, and the metrics.
pub struct Outputs {
    pub stream: Option<Sink<Box<dyn Write>>>,
    pub file: Option<Sink<OutputFile>>,
    pub summary: Option<SummaryView>,
    pub pcap: Option<PcapFile>,
}

/// `--output FILE`: NDJSON lines, buffered and written a batch at a time. A write that fails
/// (a full disk) must not stop the trace or the metrics: the lines it held are counted as not
/// written (a line the disk cut in the middle too), a warning is printed once, and later
/// batches are tried again.
pub struct OutputFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    buffer: Vec<u8>,
    /// Events in `buffer`: each is one line.
    buffered: u64,
    unwritten: u64,
    warned: bool,
}

/// Bytes buffered before a write even when no flush came.
const OUTPUT_BUFFER: usize = 64 * 1024;

impl OutputFile {
    pub fn new(file: std::fs::File, path: std::path::PathBuf) -> Self {
        Self {
            file,
            path,
            buffer: Vec::with_capacity(OUTPUT_BUFFER),
            buffered: 0,
            unwritten: 0,
            warned: false,
        }
    }

    /// Events that could not be written.
    pub fn unwritten(&self) -> u64 {
        self.unwritten
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn write_buffer(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        if let Err(error) = self.file.write_all(&self.buffer) {
            self.unwritten += self.buffered;
            if !self.warned {
                self.warned = true;
                log::warn!(
                    "cannot write to {} ({error}): tracing and metrics go on, and the events \
                     not written are counted (said once)",
                    self.path.display()
                );
            }
        }
        self.buffer.clear();
        self.buffered = 0;
    }
}

impl Write for OutputFile {
    /// Takes whole lines from [`Sink`]; never fails.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        // JSON strings escape newlines, so each one ends an event.
        self.buffered += bytes.iter().filter(|b| **b == b'\n').count() as u64;
        if self.buffer.len() >= OUTPUT_BUFFER {
            self.write_buffer();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffer();
        Ok(())
    }
}

impl Outputs {
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        if let Some(summary) = &mut self.summary {
            summary.table.observe(event);
        }
        if let Some(file) = &mut self.file {
            file.write(event)?;
        }
        if let Some(pcap) = &mut self.pcap {
            pcap.write(event)?;
        }
        match &mut self.stream {
            Some(stream) => stream.write(event),
            None => Ok(()),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(file) = &mut self.file {
            file.flush()?;
        }
        if let Some(pcap) = &mut self.pcap {
            pcap.flush()?;
        }
        match &mut self.stream {
            Some(stream) => stream.flush(),
            None => Ok(()),
        }
    }
}

/// `--summary`: the table, redrawn in place on a terminal or printed as blocks otherwise.
pub struct SummaryView {
    pub table: SummaryTable,
    started: Instant,
    interval_started: Instant,
    redraw: bool,
    out: Box<dyn Write>,
    time_zone: jiff::tz::TimeZone,
}

impl SummaryView {
    pub fn new(out: Box<dyn Write>, redraw: bool) -> Self {
        let now = Instant::now();
        Self {
            table: SummaryTable::default(),
            started: now,
            interval_started: now,
            redraw,
            out,
            time_zone: jiff::tz::TimeZone::system(),
        }
    }

    /// Prints the interval that just ended.
    pub fn tick(&mut self) -> io::Result<()> {
        let now = jiff::Timestamp::now().to_zoned(self.time_zone.clone());
        let title = now.strftime("%H:%M:%S").to_string();
        let table = self
            .table
            .interval_table(&title, self.interval_started.elapsed());
        self.interval_started = Instant::now();
        if self.redraw {
            // Clear the screen and start at the top: the table replaces the previous one.
            write!(self.out, "\x1b[H\x1b[2J{table}")?;
        } else {
            writeln!(self.out, "{table}")?;
        }
        self.out.flush()
    }

    /// The totals, when the trace ends.
    pub fn finish(&mut self) -> io::Result<()> {
        let table = self.table.totals_table(self.started.elapsed());
        writeln!(self.out, "{table}")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cause::Cause,
        container::Container,
        event::{Endpoint, EventKind, Family, LastListener, Process, ProcessSource},
    };

    fn sample() -> Event {
        Event {
            time: jiff::Timestamp::from_nanosecond(1_763_777_647_123_456_789).unwrap(),
            reason: Some("NO_SOCKET".into()),
            family: Some(Family::Ipv4),
            local: Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port: 9,
            }),
            remote: Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port: 35340,
            }),
            cause: Some(Cause::PortClosed),
            explanation: Some("nothing listens on 127.0.0.1:9".into()),
            netns: Some(4026531840),
            ..Event::for_test(EventKind::ResetSent)
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
            ns_pid: None,
        });
        event.local = Some(Endpoint {
            addr: "::1".parse().unwrap(),
            port: 443,
        });
        event.family = Some(Family::Ipv6);
        event.sock_cookie = Some(8);
        event.last_listener = Some(LastListener {
            closer: crate::decoded::Task {
                pid: 4242,
                tid: 4243,
                comm: "gunicorn".into(),
                cgroup_id: 1,
                ns_pid: None,
            },
            container: None,
            ago: std::time::Duration::from_millis(3_204),
        });
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
                "process": {"pid": 1234, "tid": 1235, "comm": "python3", "source": "context", "ns_pid": null},
                "cause": "port_closed",
                "explanation": "nothing listens on 127.0.0.1:9",
                "netns": 4026531840u64,
                "cgroup": null,
                "container": null,
                "sock_cookie": 8,
                "closed_by": null,
                "queue": null,
                "drops": null,
                "counter": null,
                "stack": null,
                "folded": null,
                "last_listener": {"pid": 4242, "comm": "gunicorn", "container": null, "seconds_ago": 3.204}
            })
        );
    }

    #[test]
    fn json_container_has_every_field_in_order() {
        let mut event = sample();
        let mut container = Container::new("4f1c2b9a8e7d6c5b4a39", "containerd");
        container.name = Some("nginx".into());
        container.pod = Some("web-0".into());
        container.namespace = Some("shop".into());
        event.container = Some(container);
        let mut sink = Sink::new(Format::Json, Vec::new());
        sink.write(&event).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert!(
            text.contains(
                r#""container":{"id":"4f1c2b9a8e7d6c5b4a39","runtime":"containerd","name":"nginx","image":null,"pod_uid":null,"pod":"web-0","namespace":"shop"}"#
            ),
            "{text}"
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
    fn text_prints_a_header_then_a_line_and_an_explanation_per_event() {
        let mut sink = Sink::with_time_zone(Format::Text, Vec::new(), jiff::tz::TimeZone::UTC);
        sink.write(&sample()).unwrap();
        let mut received = sample();
        received.kind = EventKind::ResetReceived;
        received.reason = None;
        received.state = Some("SYN_SENT".into());
        received.cause = Some(Cause::ConnectionRefused);
        received.explanation =
            Some("curl (pid 77) connected to [::1]:9, where nothing listens".into());
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
            source: ProcessSource::Owner,
            ns_pid: None,
        });
        sink.write(&received).unwrap();
        let mut in_container = received.clone();
        in_container.container = Some(Container::new("4f1c2b9a8e7d6c5b4a39", "docker"));
        sink.write(&in_container).unwrap();
        // Named by its runtime's state: the name instead of the id.
        let mut named = in_container.clone();
        if let Some(container) = named.container.as_mut() {
            container.name = Some("web\x1b[2J".into());
        }
        sink.write(&named).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "TIME            DIR  PID     COMM            LOCAL                   REMOTE                  STATE       REASON                 CAUSE",
                "02:14:07.123456 SENT -       -               127.0.0.1:9             127.0.0.1:35340         -           NO_SOCKET              port_closed",
                "    -> nothing listens on 127.0.0.1:9",
                "02:14:07.123456 RECV 77      curl            [::1]:35340             [::1]:9                 SYN_SENT    -                      connection_refused",
                "    -> curl (pid 77) connected to [::1]:9, where nothing listens",
                "TIME            DIR  PID     COMM            CONTAINER    LOCAL                   REMOTE                  STATE       REASON                 CAUSE",
                "02:14:07.123456 RECV 77      curl            4f1c2b9a8e7d [::1]:35340             [::1]:9                 SYN_SENT    -                      connection_refused",
                "    -> curl (pid 77) connected to [::1]:9, where nothing listens",
                r"02:14:07.123456 RECV 77      curl            web\x1b[2J   [::1]:35340             [::1]:9                 SYN_SENT    -                      connection_refused",
                "    -> curl (pid 77) connected to [::1]:9, where nothing listens",
            ]
        );
    }

    #[test]
    fn text_escapes_what_other_users_named() {
        let mut sink = Sink::with_time_zone(Format::Text, Vec::new(), jiff::tz::TimeZone::UTC);
        let mut event = sample();
        event.kind = EventKind::ResetReceived;
        event.process = Some(Process {
            pid: 77,
            tid: 77,
            comm: "a\x1b[2J\nSENT 1 s".into(),
            source: ProcessSource::Owner,
            ns_pid: None,
        });
        event.explanation = Some("a\x1b[2J\nSENT 1 s (pid 77) connected to 127.0.0.1:9".into());
        sink.write(&event).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert!(!text.contains('\x1b'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                r"02:14:07.123456 RECV 77      a\x1b[2J\nSENT 1 s 127.0.0.1:9             127.0.0.1:35340         -           NO_SOCKET              port_closed",
                r"    -> a\x1b[2J\nSENT 1 s (pid 77) connected to 127.0.0.1:9",
            ]
        );
    }

    #[test]
    fn a_full_disk_counts_the_events_it_could_not_write_and_goes_on() {
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .expect("/dev/full");
        let mut sink = Sink::new(Format::Json, OutputFile::new(full, "/dev/full".into()));
        for _ in 0..3 {
            sink.write(&sample()).expect("writing never fails");
        }
        sink.flush().expect("flushing never fails");
        sink.write(&sample()).expect("writing never fails");
        sink.flush().expect("flushing never fails");
        assert_eq!(sink.inner().unwritten(), 4);
    }
}
