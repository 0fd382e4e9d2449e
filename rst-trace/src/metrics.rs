//! The Prometheus sink (`--metrics ADDR:PORT`): counters of the events the other sinks print,
//! served over HTTP at `/metrics`.
//!
//! | metric | labels |
//! | --- | --- |
//! | `rst_trace_resets_total` | `direction` (`sent`, `received`), `cause`, `reason`, `comm`, `container` |
//! | `rst_trace_queue_drops_total` | `cause`, `port` (local port), `container` |
//! | `rst_trace_lost_events_total` | |
//! | `rst_trace_unwritten_events_total` | |
//! | `rst_trace_series_merged_total` | |
//! | `rst_trace_program_run_time_seconds_total` | `program` |
//! | `rst_trace_program_runs_total` | `program` |
//!
//! A queue drop event that stands for several drops (`drops`) adds that many. Labels with no value
//! are `none`: `reason` for received resets, `comm` for the idle task, `container` outside one.
//! `container` is the first 12 characters of the id, as `docker ps` shows it.
//!
//! Cardinality is bounded on the total number of series, since any local user chooses process
//! names: at most [`MAX_RESET_SERIES`] reset series and [`MAX_QUEUE_DROP_SERIES`] queue drop
//! series. A new series past the cap merges the series counted least recently into its `other`
//! series (`comm`, `container` and `port` set to `other`), and `rst_trace_series_merged_total`
//! counts the merges. `direction`, `cause` and `reason` are fixed sets and `program` is the
//! programs rst-trace loads.
//!
//! The kernel counts program run time and runs only while `kernel.bpf_stats_enabled=1` (or
//! while some process holds a `BPF_ENABLE_STATS` file descriptor); otherwise both stay 0.
//!
//! The HTTP side is a small HTTP/1.1 responder (one request per connection), not a web framework:
//! a scrape endpoint needs nothing more. It holds at most [`MAX_CONNECTIONS`] connections (file
//! descriptors shared with the tracer): past that, the oldest is closed, which is an idle one,
//! since a scraper sends its request at once.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError, atomic::AtomicU64},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family},
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    cause::Cause,
    event::{Event, EventKind},
    kernel_enums::Reason,
};

/// Reset series with user-chosen labels (`comm`, `container`) kept before the least recently
/// counted are merged into [`OTHER`].
pub const MAX_RESET_SERIES: usize = 500;
/// The same for queue drops (`port`, `container`).
pub const MAX_QUEUE_DROP_SERIES: usize = 200;
/// The label value of merged series.
pub const OTHER: &str = "other";
/// The label value where an event has none.
pub const NONE: &str = "none";
/// Characters of a container id in the `container` label (the short id of `docker ps`).
const CONTAINER_ID_CHARS: usize = 12;

/// Content types of the two text formats. The body is OpenMetrics text (what prometheus-client
/// writes); the classic Prometheus parser reads it too, since `# EOF` and `# UNIT` are comments
/// there, so clients that do not ask for OpenMetrics get the classic type.
const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A scrape request is one line and a few headers; anything longer is not a scraper.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that has not sent its request and read the answer by then is gone or hostile; its
/// connection is closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections held at once. Each is a file descriptor out of the budget the tracer and the
/// listener sampling also draw on; a scrape needs one, a few scrapers a few.
pub const MAX_CONNECTIONS: usize = 32;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetLabels {
    direction: &'static str,
    cause: &'static str,
    reason: String,
    comm: String,
    container: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueDropLabels {
    cause: &'static str,
    port: String,
    container: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
}

/// A counter family whose number of series is capped: when a new series would pass the cap, the
/// series counted least recently is removed and its count added to its overflow series (the same
/// labels with the user-chosen ones set to [`OTHER`]). Recency rather than "first seen": names
/// flooded once cannot keep a process that resets later out of its own series, while a series
/// counted now is not moved under Prometheus's `rate()`. A series that comes back after it was
/// merged starts again from its new count, which `rate()` reads as a counter reset.
struct SeriesTable<L> {
    family: Family<L, Counter>,
    /// Every capped series with the last time (in counts) it was counted. Looked up by borrowed
    /// label values (`Equivalent`), so that counting an event allocates nothing.
    series: hashbrown::HashMap<L, Series, foldhash::fast::RandomState>,
    cap: usize,
    clock: u64,
    /// `rst_trace_series_merged_total`, shared by the tables.
    merged: Counter,
}

struct Series {
    counter: Counter,
    last_counted: u64,
}

impl<L> SeriesTable<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    fn new(family: Family<L, Counter>, cap: usize, merged: Counter) -> Self {
        Self {
            family,
            series: hashbrown::HashMap::default(),
            cap,
            clock: 0,
            merged,
        }
    }

    /// Adds `by` to the series of `raw`; `labels` builds its labels the first time, `overflow`
    /// maps labels to the series they are merged into.
    fn add<Q>(&mut self, raw: &Q, by: u64, labels: impl FnOnce() -> L, overflow: impl Fn(&L) -> L)
    where
        Q: std::hash::Hash + hashbrown::Equivalent<L> + ?Sized,
    {
        self.clock += 1;
        if let Some(series) = self.series.get_mut(raw) {
            series.counter.inc_by(by);
            series.last_counted = self.clock;
            return;
        }
        let labels = labels();
        if labels == overflow(&labels) {
            // An overflow series is never merged away: there are few of them (fixed labels).
            self.family.get_or_create(&labels).inc_by(by);
            return;
        }
        if self.series.len() >= self.cap {
            self.merge_least_recent(&overflow);
        }
        let counter = self.family.get_or_create_owned(&labels);
        counter.inc_by(by);
        self.series.insert(
            labels,
            Series {
                counter,
                last_counted: self.clock,
            },
        );
    }

    /// A linear scan, only when a new series meets a full table: cheaper than keeping an order
    /// up to date on every count.
    fn merge_least_recent(&mut self, overflow: &impl Fn(&L) -> L) {
        let Some(oldest) = self
            .series
            .iter()
            .min_by_key(|(_, series)| series.last_counted)
            .map(|(labels, _)| labels.clone())
        else {
            return;
        };
        if let Some(series) = self.series.remove(&oldest) {
            self.family.remove(&oldest);
            self.family
                .get_or_create(&overflow(&oldest))
                .inc_by(series.counter.get());
            self.merged.inc();
        }
    }

    fn len(&self) -> usize {
        self.series.len()
    }
}

/// The counters `--metrics` serves.
pub struct Metrics {
    registry: Registry,
    resets: SeriesTable<ResetLabels>,
    queue_drops: SeriesTable<QueueDropLabels>,
    lost: Counter,
    unwritten: Counter,
    program_run_time: Family<ProgramLabels, Counter<f64, AtomicU64>>,
    program_runs: Family<ProgramLabels, Counter>,
}

/// [`ResetLabels`] borrowed from an event: hashes the same way (same fields in the same order,
/// and a `String` hashes as its `str`), compares equal to it.
#[derive(Hash)]
struct RawResetKey<'a> {
    direction: &'static str,
    cause: &'static str,
    reason: &'a str,
    comm: &'a str,
    container: &'a str,
}

impl hashbrown::Equivalent<ResetLabels> for RawResetKey<'_> {
    fn equivalent(&self, key: &ResetLabels) -> bool {
        self.direction == key.direction
            && self.cause == key.cause
            && self.reason == key.reason
            && self.comm == key.comm
            && self.container == key.container
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("reset_series", &self.resets.len())
            .field("queue_drop_series", &self.queue_drops.len())
            .finish()
    }
}

impl Metrics {
    /// Counters with the documented caps, [`MAX_RESET_SERIES`] and [`MAX_QUEUE_DROP_SERIES`].
    pub fn new() -> Self {
        Self::with_series_caps(MAX_RESET_SERIES, MAX_QUEUE_DROP_SERIES)
    }

    /// Counters keeping at most `resets` and `queue_drops` series with user-chosen labels.
    pub fn with_series_caps(resets: usize, queue_drops: usize) -> Self {
        let mut registry = Registry::default();
        let reset_family = Family::<ResetLabels, Counter>::default();
        registry.register(
            "rst_trace_resets",
            "TCP resets this host sent or received, by cause, kernel reason, process and container",
            reset_family.clone(),
        );
        let drop_family = Family::<QueueDropLabels, Counter>::default();
        registry.register(
            "rst_trace_queue_drops",
            "Connections or segments dropped at a full queue, by cause, local port and container",
            drop_family.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "rst_trace_lost_events",
            "Events the kernel could not deliver because the ring buffer was full",
            lost.clone(),
        );
        let unwritten = Counter::default();
        registry.register(
            "rst_trace_unwritten_events",
            "Events that could not be written to the --output file (a full disk, say)",
            unwritten.clone(),
        );
        let merged = Counter::default();
        registry.register(
            "rst_trace_series_merged",
            "Series merged into their `other` series to keep the number of series bounded",
            merged.clone(),
        );
        let program_run_time = Family::<ProgramLabels, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "rst_trace_program_run_time",
            "Time rst-trace's kernel programs ran (counted while kernel.bpf_stats_enabled=1)",
            Unit::Seconds,
            program_run_time.clone(),
        );
        let program_runs = Family::<ProgramLabels, Counter>::default();
        registry.register(
            "rst_trace_program_runs",
            "Runs of rst-trace's kernel programs (counted while kernel.bpf_stats_enabled=1)",
            program_runs.clone(),
        );
        Self {
            registry,
            resets: SeriesTable::new(reset_family, resets, merged.clone()),
            queue_drops: SeriesTable::new(drop_family, queue_drops, merged),
            lost,
            unwritten,
            program_run_time,
            program_runs,
        }
    }

    /// Counts one event (as the other sinks receive it: after filtering).
    pub fn observe(&mut self, event: &Event) {
        let cause = event.cause.map_or(NONE, Cause::id);
        let container = event.container.as_ref().map_or(NONE, |container| {
            // The first CONTAINER_ID_CHARS characters, as `docker ps` shows them.
            let id = container.id.as_str();
            id.char_indices()
                .nth(CONTAINER_ID_CHARS)
                .map_or(id, |(end, _)| &id[..end])
        });
        let direction = match event.kind {
            EventKind::ResetSent => "sent",
            EventKind::ResetReceived => "received",
            EventKind::QueueDrop => {
                let labels = QueueDropLabels {
                    cause,
                    port: event
                        .local
                        .map_or_else(|| NONE.to_string(), |local| local.port.to_string()),
                    container: container.to_string(),
                };
                self.queue_drops.add(
                    &labels,
                    event.count(),
                    || labels.clone(),
                    |labels| QueueDropLabels {
                        cause: labels.cause,
                        port: OTHER.to_string(),
                        container: OTHER.to_string(),
                    },
                );
                return;
            }
        };
        let reason = event.reason.as_ref().map_or(NONE, Reason::name);
        let comm = event
            .process
            .as_ref()
            .map_or(NONE, |process| process.comm.as_str());
        let raw = RawResetKey {
            direction,
            cause,
            reason,
            comm,
            container,
        };
        self.resets.add(
            &raw,
            event.count(),
            || ResetLabels {
                direction,
                cause,
                reason: reason.to_string(),
                comm: comm.to_string(),
                container: container.to_string(),
            },
            // The reason is a kernel enum (a small fixed set) and stays.
            |labels| ResetLabels {
                direction: labels.direction,
                cause: labels.cause,
                reason: labels.reason.clone(),
                comm: OTHER.to_string(),
                container: OTHER.to_string(),
            },
        );
    }

    /// Sets the count of events not written to `--output` to the file sink's total.
    pub fn set_unwritten(&mut self, total: u64) {
        raise_to(&self.unwritten, total);
    }

    /// Sets the lost-event counter to the kernel's total since load.
    pub fn set_lost(&mut self, total: u64) {
        raise_to(&self.lost, total);
    }

    /// Sets each program's run time (nanoseconds) and run count to the kernel's totals, as
    /// [`crate::loader::Tracer::program_stats`] returns them.
    pub fn set_program_stats<S: AsRef<str>>(&mut self, stats: &[(S, u64, u64)]) {
        for (program, run_time_ns, run_count) in stats {
            let labels = ProgramLabels {
                program: program.as_ref().to_string(),
            };
            let run_time = self.program_run_time.get_or_create(&labels);
            let seconds = *run_time_ns as f64 / 1e9;
            let delta = seconds - run_time.get();
            if delta > 0.0 {
                run_time.inc_by(delta);
            }
            raise_to(&self.program_runs.get_or_create(&labels), *run_count);
        }
    }

    /// The exposition in OpenMetrics text, which Prometheus's classic text parser also reads.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would mean a label value the encoder
        // refuses, and then a partial exposition is still the most useful answer.
        if let Err(error) = text::encode(&mut out, &self.registry) {
            log::warn!("encoding metrics: {error}");
        }
        out
    }
}

/// Counters only go up: moves `counter` to `total` from whatever it holds.
fn raise_to(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// Binds the metrics address, so that the caller can fail at start-up with a sentence rather
/// than from a background task.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|error| {
        let what = match error.kind() {
            io::ErrorKind::AddrInUse => format!(
                "{addr} is already in use (another rst-trace or exporter?); choose another \
                 port with --metrics"
            ),
            io::ErrorKind::AddrNotAvailable => format!(
                "{} is not an address of this host; use 0.0.0.0:{} for all addresses",
                addr.ip(),
                addr.port()
            ),
            io::ErrorKind::PermissionDenied => format!(
                "binding port {} needs root or CAP_NET_BIND_SERVICE; choose a port above 1023",
                addr.port()
            ),
            _ => format!("binding {addr} failed: {error}"),
        };
        anyhow!("cannot serve metrics: {what}")
    })?;
    // tokio takes over the socket and needs it non-blocking.
    listener
        .set_nonblocking(true)
        .context("making the metrics socket non-blocking")?;
    Ok(listener)
}

/// Binds `addr` and serves `/metrics` until the task is dropped.
pub async fn serve(metrics: Arc<Mutex<Metrics>>, addr: SocketAddr) -> anyhow::Result<()> {
    serve_on(metrics, bind(addr)?).await
}

/// Serves `/metrics` on a socket from [`bind`] until the task is dropped. A failed connection
/// ends only its own task.
pub async fn serve_on(
    metrics: Arc<Mutex<Metrics>>,
    listener: std::net::TcpListener,
) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener).context("serving metrics")?;
    // The tasks of open connections, oldest first.
    let mut open: VecDeque<tokio::task::JoinHandle<()>> = VecDeque::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                open.retain(|task| !task.is_finished());
                if open.len() >= MAX_CONNECTIONS
                    && let Some(oldest) = open.pop_front()
                {
                    // Dropping its task closes its socket; waiting for that keeps a burst of
                    // connects from holding more descriptors than the cap while aborted tasks
                    // wait to be dropped.
                    oldest.abort();
                    let _ = oldest.await;
                }
                let metrics = Arc::clone(&metrics);
                let task = tokio::spawn(async move {
                    if let Err(error) = respond(stream, &metrics).await {
                        log::debug!("metrics request: {error}");
                    }
                });
                open.push_back(task);
            }
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin, then go on.
                log::warn!("metrics: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request and answers it; the connection closes after the answer, or when the whole
/// exchange takes longer than [`REQUEST_TIMEOUT`] (a client that neither sends nor reads).
async fn respond(mut stream: TcpStream, metrics: &Mutex<Metrics>) -> io::Result<()> {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut stream, metrics))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

async fn exchange(stream: &mut TcpStream, metrics: &Mutex<Metrics>) -> io::Result<()> {
    let head = read_head(stream).await?;
    let response = match head {
        Some(head) => answer(&head, || {
            metrics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .encode()
        }),
        None => plain_response("400 Bad Request", "request head too long\n", false),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The request line and headers, or None when they exceed [`MAX_REQUEST_HEAD`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        head.extend_from_slice(&chunk[..read]);
        let complete =
            head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n");
        if complete || read == 0 {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

/// The response to a request head; `exposition` is called only for a scrape.
fn answer(head: &str, exposition: impl FnOnce() -> String) -> Vec<u8> {
    let mut lines = head.lines();
    let mut request = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target)) = (request.next(), request.next()) else {
        return plain_response("400 Bad Request", "not an HTTP request\n", false);
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return plain_response(
            "405 Method Not Allowed",
            "only GET and HEAD are served\n",
            false,
        );
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return plain_response(
            "404 Not Found",
            "rst-trace serves its metrics at /metrics\n",
            head_only,
        );
    }
    let openmetrics = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    let content_type = if openmetrics {
        CONTENT_TYPE_OPENMETRICS
    } else {
        CONTENT_TYPE_PROMETHEUS
    };
    response("200 OK", content_type, &exposition(), head_only)
}

fn plain_response(status: &str, body: &str, head_only: bool) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, head_only)
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        container::Container,
        event::{Endpoint, Process, ProcessSource},
    };

    fn event(kind: EventKind, cause: Option<Cause>, comm: &str) -> Event {
        Event {
            reason: (kind == EventKind::ResetSent).then(|| "NO_SOCKET".into()),
            local: Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port: 9,
            }),
            remote: Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port: 50000,
            }),
            process: Some(Process {
                pid: 42,
                tid: 42,
                comm: comm.into(),
                source: ProcessSource::Context,
                ns_pid: None,
            }),
            cause,
            ..Event::for_test(kind)
        }
    }

    /// The sample lines of `metric` (not HELP/TYPE).
    fn samples<'a>(exposition: &'a str, metric: &str) -> Vec<&'a str> {
        exposition
            .lines()
            .filter(|line| {
                line.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .collect()
    }

    #[test]
    fn resets_are_counted_with_direction_cause_reason_comm_and_container() {
        let mut metrics = Metrics::new();
        let sent = event(EventKind::ResetSent, Some(Cause::PortClosed), "curl");
        metrics.observe(&sent);
        metrics.observe(&sent);
        let mut received = event(EventKind::ResetReceived, Some(Cause::PortClosed), "curl");
        received.container = Some(Container::new("0123456789abcdef".repeat(4), "docker"));
        metrics.observe(&received);
        let mut idle = event(EventKind::ResetSent, None, "ignored");
        idle.process = None;
        idle.reason = None;
        metrics.observe(&idle);

        let text = metrics.encode();
        assert!(text.contains("# TYPE rst_trace_resets counter\n"), "{text}");
        let mut resets = samples(&text, "rst_trace_resets_total");
        resets.sort();
        assert_eq!(
            resets,
            [
                r#"rst_trace_resets_total{direction="received",cause="port_closed",reason="none",comm="curl",container="0123456789ab"} 1"#,
                r#"rst_trace_resets_total{direction="sent",cause="none",reason="none",comm="none",container="none"} 1"#,
                r#"rst_trace_resets_total{direction="sent",cause="port_closed",reason="NO_SOCKET",comm="curl",container="none"} 2"#,
            ],
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn queue_drops_add_the_drops_an_event_stands_for_by_cause_port_and_container() {
        let mut metrics = Metrics::new();
        let mut drop = event(EventKind::QueueDrop, Some(Cause::AcceptQueueFull), "nginx");
        drop.local = Some(Endpoint {
            addr: [10, 0, 0, 1].into(),
            port: 8080,
        });
        drop.drops = Some(5);
        metrics.observe(&drop);
        drop.drops = None;
        metrics.observe(&drop);

        let text = metrics.encode();
        assert_eq!(
            samples(&text, "rst_trace_queue_drops_total"),
            [
                r#"rst_trace_queue_drops_total{cause="accept_queue_full",port="8080",container="none"} 6"#
            ],
            "{text}"
        );
        assert!(
            samples(&text, "rst_trace_resets_total").is_empty(),
            "a queue drop is not a reset: {text}"
        );
    }

    #[test]
    fn lost_events_and_program_stats_follow_the_kernels_totals() {
        let mut metrics = Metrics::new();
        metrics.set_lost(3);
        metrics.set_lost(7);
        // A total read before a later one must not move the counter back.
        metrics.set_lost(5);
        metrics.set_program_stats(&[("tcp_send_reset", 1_500_000_000, 10)]);
        metrics.set_program_stats(&[("tcp_send_reset".to_string(), 2_000_000_000, 12)]);

        let text = metrics.encode();
        assert_eq!(
            samples(&text, "rst_trace_lost_events_total"),
            ["rst_trace_lost_events_total 7"]
        );
        assert!(
            text.contains("# UNIT rst_trace_program_run_time_seconds seconds\n"),
            "{text}"
        );
        assert_eq!(
            samples(&text, "rst_trace_program_run_time_seconds_total"),
            [r#"rst_trace_program_run_time_seconds_total{program="tcp_send_reset"} 2.0"#],
            "{text}"
        );
        assert_eq!(
            samples(&text, "rst_trace_program_runs_total"),
            [r#"rst_trace_program_runs_total{program="tcp_send_reset"} 12"#]
        );
    }

    /// (comm, value) of every reset series, sorted.
    fn comms(text: &str) -> Vec<(String, String)> {
        let mut comms: Vec<(String, String)> = samples(text, "rst_trace_resets_total")
            .iter()
            .map(|line| {
                let comm = line
                    .split("comm=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default();
                let value = line.rsplit(' ').next().unwrap_or_default();
                (comm.to_string(), value.to_string())
            })
            .collect();
        comms.sort();
        comms
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(comm, value)| (comm.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn past_the_cap_the_least_recently_counted_series_is_merged_into_other() {
        let mut metrics = Metrics::with_series_caps(2, 2);
        for comm in ["a", "b", "a", "c"] {
            metrics.observe(&event(EventKind::ResetSent, Some(Cause::PortClosed), comm));
        }
        // `b` was counted least recently when `c` came: it is merged, `a` keeps its series.
        let text = metrics.encode();
        assert_eq!(
            comms(&text),
            pairs(&[("a", "2"), ("c", "1"), ("other", "1")]),
            "{text}"
        );
        assert_eq!(
            samples(&text, "rst_trace_series_merged_total"),
            ["rst_trace_series_merged_total 1"]
        );
        for comm in ["a", "d", "c"] {
            metrics.observe(&event(EventKind::ResetSent, Some(Cause::PortClosed), comm));
        }
        // `d` merged `c` (a was newer); `c` coming back merged `a`, and starts again at 1.
        let text = metrics.encode();
        assert_eq!(
            comms(&text),
            pairs(&[("c", "1"), ("d", "1"), ("other", "5")]),
            "{text}"
        );
    }

    #[test]
    fn a_flood_of_names_does_not_keep_a_later_process_out_of_its_series() {
        let mut metrics = Metrics::new();
        for n in 0..MAX_RESET_SERIES + 60 {
            metrics.observe(&event(
                EventKind::ResetReceived,
                Some(Cause::ConnectionRefused),
                &format!("junk{n}"),
            ));
        }
        metrics.observe(&event(
            EventKind::ResetReceived,
            Some(Cause::ConnectionRefused),
            "nginx",
        ));
        let text = metrics.encode();
        let resets = samples(&text, "rst_trace_resets_total");
        assert_eq!(resets.len(), MAX_RESET_SERIES + 1, "the cap and `other`");
        assert!(
            resets.contains(
                &r#"rst_trace_resets_total{direction="received",cause="connection_refused",reason="none",comm="nginx",container="none"} 1"#
            ),
            "{text}"
        );
        assert!(
            resets.contains(
                &r#"rst_trace_resets_total{direction="received",cause="connection_refused",reason="none",comm="other",container="other"} 61"#
            ),
            "{text}"
        );
    }

    #[test]
    fn queue_drop_series_are_capped_too() {
        let mut metrics = Metrics::new();
        for port in 1..=(MAX_QUEUE_DROP_SERIES as u16 + 10) {
            let mut drop = event(EventKind::QueueDrop, Some(Cause::SynQueueFull), "x");
            drop.local = Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port,
            });
            metrics.observe(&drop);
        }
        let text = metrics.encode();
        let drops = samples(&text, "rst_trace_queue_drops_total");
        assert_eq!(drops.len(), MAX_QUEUE_DROP_SERIES + 1, "{text}");
        assert!(
            drops.contains(
                &r#"rst_trace_queue_drops_total{cause="syn_queue_full",port="other",container="other"} 10"#
            ),
            "{text}"
        );
        assert!(
            !drops.iter().any(|line| line.contains(r#"port="1""#)),
            "the first port was counted least recently: {text}"
        );
    }

    #[test]
    fn unwritten_events_follow_the_output_files_total() {
        let mut metrics = Metrics::new();
        metrics.set_unwritten(4);
        metrics.set_unwritten(9);
        assert_eq!(
            samples(&metrics.encode(), "rst_trace_unwritten_events_total"),
            ["rst_trace_unwritten_events_total 9"]
        );
    }

    async fn http(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read response");
        response
    }

    #[tokio::test]
    async fn http_serves_metrics_and_404_elsewhere() {
        let metrics = Arc::new(Mutex::new(Metrics::new()));
        metrics.lock().expect("lock").observe(&event(
            EventKind::ResetSent,
            Some(Cause::PortClosed),
            "curl",
        ));
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(serve_on(Arc::clone(&metrics), listener));

        let response = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        assert!(
            response.contains(r#"rst_trace_resets_total{direction="sent",cause="port_closed""#),
            "{response}"
        );

        // A client that stops half-way through its request does not stop the server.
        drop(TcpStream::connect(addr).await.expect("connect"));

        let response = http(
            addr,
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,\
             text/plain;version=0.0.4;q=0.5\r\n\r\n",
        )
        .await;
        assert!(
            response.contains("\r\nContent-Type: application/openmetrics-text; version=1.0.0"),
            "{response}"
        );

        let response = http(addr, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        let response = http(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
        server.abort();
    }

    #[tokio::test]
    async fn idle_connections_cannot_starve_a_scrape() {
        let metrics = Arc::new(Mutex::new(Metrics::new()));
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(serve_on(Arc::clone(&metrics), listener));
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Let the server take them all in.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response = tokio::time::timeout(
            Duration::from_secs(2),
            http(addr, "GET /metrics HTTP/1.1\r\n\r\n"),
        )
        .await
        .expect("a scrape is answered at once");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        // The oldest idle ones were closed: at most MAX_CONNECTIONS are held.
        let mut closed = 0;
        for stream in &mut idle {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(5), stream.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        assert!(closed >= 300 - MAX_CONNECTIONS, "{closed} closed");
        server.abort();
    }

    #[test]
    fn binding_a_busy_address_fails_with_a_sentence() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("local addr");
        let error = bind(addr).expect_err("the address is taken");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot serve metrics: {addr} is already in use (another rst-trace or \
                 exporter?); choose another port with --metrics"
            )
        );
    }
}
