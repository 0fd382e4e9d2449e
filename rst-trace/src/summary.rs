//! `--summary SECS`: instead of a line per event, a table every interval of the top causes by
//! process and service port (the port listened on or connected to), with counts and rates, and
//! the totals when the trace ends. Every cause that occurred is shown, however rare, before the
//! long tail of the most frequent one.

use std::{fmt::Write as _, time::Duration};

use foldhash::HashMap;

use crate::{
    cause::Cause,
    escape::for_terminal,
    event::{Event, EventKind, Process},
};

/// Rows shown per table; the rest are counted in one line.
const TOP_ROWS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    cause: Cause,
    kind: EventKindKey,
    process: ProcessKey,
    port: u16,
}

/// A process as a row key: plain bytes, so that counting an event allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ProcessKey {
    Unknown,
    /// Rows merged to bound memory: their processes and ports are no longer told apart.
    Merged,
    /// The name, then the pid. A kernel task name has at most 15 bytes; written out as
    /// [`crate::escape::comm_from_bytes`] does, at most 60.
    Known {
        comm: [u8; COMM_KEY_BYTES],
        pid: u32,
    },
}

/// Room for the longest escaped task name (15 bytes, each `\xNN`).
const COMM_KEY_BYTES: usize = 64;

impl ProcessKey {
    fn of(process: Option<&Process>) -> Self {
        process.map_or(Self::Unknown, |p| {
            let mut comm = [0; COMM_KEY_BYTES];
            let bytes = p.comm.as_bytes();
            let len = bytes.len().min(comm.len());
            comm[..len].copy_from_slice(&bytes[..len]);
            Self::Known { comm, pid: p.pid }
        })
    }

    fn label(self) -> String {
        match self {
            Self::Unknown => "-".to_string(),
            Self::Merged => MERGED_LABEL.to_string(),
            Self::Known { comm, pid } => {
                let len = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
                format!("{} ({pid})", String::from_utf8_lossy(&comm[..len]))
            }
        }
    }
}

/// `EventKind` as an orderable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum EventKindKey {
    Sent,
    Received,
    Drop,
}

impl From<EventKind> for EventKindKey {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::ResetSent => Self::Sent,
            EventKind::ResetReceived => Self::Received,
            EventKind::QueueDrop => Self::Drop,
        }
    }
}

impl EventKindKey {
    fn label(self) -> &'static str {
        match self {
            Self::Sent => "SENT",
            Self::Received => "RECV",
            Self::Drop => "DROP",
        }
    }
}

/// Rows a table holds before the half with the fewest events is merged into one row per cause
/// and direction: every ephemeral port of a client is a row, so a long run would grow without end.
const MAX_ROWS: usize = 4096;
/// The process of merged rows.
const MERGED_LABEL: &str = "(merged rows)";

/// Counts per (cause, direction, process, local port), for the interval and since the start.
#[derive(Debug, Default)]
pub struct SummaryTable {
    interval: Rows,
    total: Rows,
}

#[derive(Debug, Default)]
struct Rows {
    counts: HashMap<Key, u64>,
    /// Rows merged into [`ProcessKey::Merged`] rows so far.
    merged: u64,
}

impl Rows {
    fn add(&mut self, key: Key, count: u64) {
        *self.counts.entry(key).or_default() += count;
        if self.counts.len() > MAX_ROWS {
            self.merge_smallest();
        }
    }

    /// Merges the rows with the fewest events until half of [`MAX_ROWS`] are left (sorting once
    /// per `MAX_ROWS / 2` new rows).
    fn merge_smallest(&mut self) {
        let mut rows: Vec<(Key, u64)> = self
            .counts
            .iter()
            .filter(|(key, _)| key.process != ProcessKey::Merged)
            .map(|(key, count)| (*key, *count))
            .collect();
        rows.sort_by_key(|(key, count)| (*count, *key));
        let excess = self.counts.len().saturating_sub(MAX_ROWS / 2);
        for (key, count) in rows.into_iter().take(excess) {
            self.counts.remove(&key);
            let merged = Key {
                process: ProcessKey::Merged,
                port: 0,
                ..key
            };
            *self.counts.entry(merged).or_default() += count;
            self.merged += 1;
        }
    }
}

impl SummaryTable {
    pub fn observe(&mut self, event: &Event) {
        let key = Key {
            cause: event.cause.unwrap_or(Cause::Other),
            kind: event.kind.into(),
            process: ProcessKey::of(event.process.as_ref()),
            // The service end's port: a storm from one client is one row, not one per ephemeral
            // port.
            port: event.service_port().unwrap_or(0),
        };
        // A queue-drop event seen through a counter, or a folded event, stands for several.
        let count = event.count();
        self.interval.add(key, count);
        self.total.add(key, count);
    }

    /// The table for the interval that just ended (and starts the next one).
    pub fn interval_table(&mut self, title: &str, elapsed: Duration) -> String {
        let rows = std::mem::take(&mut self.interval);
        render(title, &rows, elapsed)
    }

    /// The table of everything since the start.
    pub fn totals_table(&self, elapsed: Duration) -> String {
        render("totals", &self.total, elapsed)
    }
}

fn render(title: &str, table: &Rows, elapsed: Duration) -> String {
    let rows = &table.counts;
    let mut sorted: Vec<(&Key, &u64)> = rows.iter().collect();
    // Most frequent first; ties in a stable order so that redraws do not jump around.
    sorted.sort_by(|(ka, a), (kb, b)| b.cmp(a).then_with(|| ka.cmp(kb)));
    let events: u64 = rows.values().sum();
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rst-trace summary, {title}: {events} events in {secs:.1} s ({:.1}/s)",
        events as f64 / secs
    );
    if sorted.is_empty() {
        out.push_str("  no resets or drops\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<4} {:<28} {:>6} {:>9} {:>9}",
        "CAUSE", "DIR", "PROCESS", "PORT", "COUNT", "RATE/s"
    );
    // The top rows, then the largest row of each cause the top rows miss: a storm of one cause
    // must not bury the one reset of another.
    let mut shown: Vec<(&Key, &u64)> = sorted.iter().take(TOP_ROWS).copied().collect();
    for row in sorted.iter().skip(TOP_ROWS) {
        if !shown.iter().any(|(key, _)| key.cause == row.0.cause) {
            shown.push(*row);
        }
    }
    for (key, count) in &shown {
        let port = if key.port == 0 {
            "-".to_string()
        } else {
            key.port.to_string()
        };
        let _ = writeln!(
            out,
            "{:<24} {:<4} {:<28} {:>6} {:>9} {:>9.1}",
            key.cause.id(),
            key.kind.label(),
            // Escaped before it is cut, so that the cut never splits an escape into a raw byte.
            truncate(&for_terminal(&key.process.label()), 28),
            port,
            count,
            **count as f64 / secs
        );
    }
    if sorted.len() > shown.len() {
        let shown_events: u64 = shown.iter().map(|(_, count)| **count).sum();
        let _ = writeln!(
            out,
            "  ... {} more rows, {} events",
            sorted.len() - shown.len(),
            events - shown_events
        );
    }
    if table.merged > 0 {
        let _ = writeln!(
            out,
            "  {} rows with the fewest events were merged into \"{MERGED_LABEL}\" rows to bound memory",
            table.merged
        );
    }
    out
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).chain(['~']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Endpoint, Process, ProcessSource};
    use crate::kernel_enums::TcpState;

    fn event(kind: EventKind, cause: Cause, comm: Option<&str>, port: u16) -> Event {
        Event {
            local: Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port,
            }),
            process: comm.map(|comm| Process {
                pid: 42,
                tid: 42,
                comm: comm.into(),
                source: ProcessSource::Owner,
                ns_pid: None,
            }),
            cause: Some(cause),
            ..Event::for_test(kind)
        }
    }

    #[test]
    fn renders_the_top_rows_with_counts_and_rates() {
        let mut table = SummaryTable::default();
        for _ in 0..6 {
            table.observe(&event(EventKind::ResetSent, Cause::PortClosed, None, 9));
        }
        for _ in 0..2 {
            table.observe(&event(
                EventKind::ResetReceived,
                Cause::PeerAbort,
                Some("nginx"),
                443,
            ));
        }
        let mut drop = event(
            EventKind::QueueDrop,
            Cause::AcceptQueueFull,
            Some("app"),
            8080,
        );
        drop.drops = Some(4);
        table.observe(&drop);
        let text = table.interval_table("02:14:07", Duration::from_secs(2));
        assert_eq!(
            text,
            "rst-trace summary, 02:14:07: 12 events in 2.0 s (6.0/s)\n\
             CAUSE                    DIR  PROCESS                        PORT     COUNT    RATE/s\n\
             port_closed              SENT -                                 9         6       3.0\n\
             accept_queue_full        DROP app (42)                       8080         4       2.0\n\
             peer_abort               RECV nginx (42)                      443         2       1.0\n"
        );
        // The interval starts afresh; the totals keep everything.
        assert!(
            table
                .interval_table("next", Duration::from_secs(2))
                .contains("no resets or drops")
        );
        assert!(
            table
                .totals_table(Duration::from_secs(4))
                .starts_with("rst-trace summary, totals: 12 events in 4.0 s (3.0/s)")
        );
    }

    #[test]
    fn a_storm_is_one_row_per_direction_and_every_cause_is_shown() {
        let mut table = SummaryTable::default();
        let end = |port| {
            Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port,
            })
        };
        // A client refused from a thousand ephemeral ports: one row per direction, by the
        // service port 20001.
        for port in 40000..41000 {
            let mut sent = event(EventKind::ResetSent, Cause::PortClosed, None, 20001);
            sent.remote = end(port);
            table.observe(&sent);
            let mut received = event(
                EventKind::ResetReceived,
                Cause::ConnectionRefused,
                Some("flood"),
                port,
            );
            received.remote = end(20001);
            received.state = Some(TcpState::SynSent);
            table.observe(&received);
        }
        // Twenty-five other ports with more events than the one abort below.
        for port in 1..=25 {
            for _ in 0..3 {
                table.observe(&event(EventKind::ResetSent, Cause::HalfOpen, None, port));
            }
        }
        let mut abort = event(
            EventKind::ResetSent,
            Cause::LingerAbort,
            Some("client"),
            45000,
        );
        abort.remote = end(9003);
        abort.state = Some(TcpState::Close);
        table.observe(&abort);
        let text = table.totals_table(Duration::from_secs(1));
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert!(
            rows[0].starts_with("port_closed              SENT -"),
            "{text}"
        );
        assert!(rows[0].contains(" 20001      1000 "), "{text}");
        assert!(
            rows[1].starts_with("connection_refused       RECV flood (42)"),
            "{text}"
        );
        assert!(rows[1].contains(" 20001      1000 "), "{text}");
        // The abort's row is there, by its service port, though 25 rows have more events.
        assert_eq!(
            rows[TOP_ROWS],
            "linger_abort             SENT client (42)                    9003         1       1.0",
            "{text}"
        );
        assert_eq!(rows[TOP_ROWS + 1], "  ... 7 more rows, 21 events", "{text}");
    }

    #[test]
    fn long_tables_are_cut_to_the_top_rows() {
        let mut table = SummaryTable::default();
        for port in 1..=25 {
            table.observe(&event(EventKind::ResetSent, Cause::PortClosed, None, port));
        }
        let text = table.totals_table(Duration::from_secs(1));
        assert_eq!(text.lines().count(), 2 + TOP_ROWS + 1);
        assert!(text.ends_with("  ... 5 more rows, 5 events\n"), "{text}");
    }

    #[test]
    fn process_names_are_escaped_in_rows() {
        let mut table = SummaryTable::default();
        table.observe(&event(
            EventKind::ResetReceived,
            Cause::ConnectionRefused,
            Some("a\x1b[2J\nSENT 1 s"),
            40000,
        ));
        let text = table.totals_table(Duration::from_secs(1));
        assert!(!text.contains('\x1b'), "{text:?}");
        assert_eq!(
            text.lines().nth(2),
            Some(
                r"connection_refused       RECV a\x1b[2J\nSENT 1 s (42)       40000         1       1.0"
            ),
            "{text}"
        );
    }

    #[test]
    fn rows_are_bounded_and_merges_are_said() {
        let mut table = SummaryTable::default();
        // A client's ephemeral ports: each a row.
        for port in 1..=(MAX_ROWS as u16 + 10) {
            table.observe(&event(
                EventKind::ResetSent,
                Cause::PortClosed,
                Some("c"),
                port,
            ));
        }
        for _ in 0..3 {
            table.observe(&event(
                EventKind::ResetSent,
                Cause::PortClosed,
                Some("c"),
                1,
            ));
        }
        assert!(
            table.total.counts.len() <= MAX_ROWS,
            "{}",
            table.total.counts.len()
        );
        let events: u64 = table.total.counts.values().sum();
        assert_eq!(events, MAX_ROWS as u64 + 13, "no event is lost by merging");
        let text = table.totals_table(Duration::from_secs(1));
        // The first row past MAX_ROWS merges all but MAX_ROWS / 2 of them, each one event.
        let merged = MAX_ROWS / 2 + 1;
        assert!(
            text.ends_with(&format!(
                "  {merged} rows with the fewest events were merged into \"(merged rows)\" rows to bound memory\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{:<24} {:<4} {:<28} {:>6} {:>9}",
                "port_closed", "SENT", "(merged rows)", "-", merged
            )),
            "{text}"
        );
    }
}
