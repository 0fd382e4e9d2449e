//! The Prometheus sink (`--metrics ADDR:PORT`): counters of the events the other sinks print,
//! served over HTTP at `/metrics`.
//!
//! | metric | labels |
//! | --- | --- |
//! | `rst_trace_resets_total` | `direction` (`sent`, `received`), `cause`, `reason`, `comm`, `container` |
//! | `rst_trace_queue_drops_total` | `cause`, `port` (local port), `container` |
//! | `rst_trace_lost_events_total` | |
//! | `rst_trace_program_run_time_seconds_total` | `program` |
//! | `rst_trace_program_runs_total` | `program` |
//!
//! A queue drop event that stands for several drops (`drops`) adds that many. Labels with no value
//! are `none`: `reason` for received resets, `comm` for the idle task, `container` outside one.
//! `container` is the first 12 characters of the id, as `docker ps` shows it.
//!
//! Cardinality is bounded: each of `reason`, `comm`, `container` and `port` keeps at most
//! [`MAX_VALUES_PER_LABEL`] distinct values per metric, the first ones seen; every later value is
//! counted under `other`. "First seen" rather than "top N" because a counter must not move from
//! one series to another while Prometheus computes `rate()` over it. `direction` and `cause` are
//! fixed sets and `program` is the programs rst-trace loads.
//!
//! The kernel counts program run time and runs only while `kernel.bpf_stats_enabled=1` (or
//! while some process holds a `BPF_ENABLE_STATS` file descriptor); otherwise both stay 0.
//!
//! The HTTP side is a small HTTP/1.1 responder (one request per connection), not a web framework:
//! a scrape endpoint needs nothing more.

use std::{
    collections::HashSet,
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

/// Distinct values kept per label before the rest go under [`OTHER`].
pub const MAX_VALUES_PER_LABEL: usize = 50;
/// The label value of everything past the cap.
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
/// A client that has not sent its request by then is gone or hostile; its task ends.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One label's admitted values: the first `cap` distinct ones, then [`OTHER`].
#[derive(Debug)]
struct LabelCap {
    cap: usize,
    admitted: HashSet<String>,
}

impl LabelCap {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            admitted: HashSet::new(),
        }
    }

    /// The label value to count `value` under.
    fn admit(&mut self, value: &str) -> String {
        // The two placeholders are always allowed: they do not grow the set of series.
        if value == NONE || value == OTHER || self.admitted.contains(value) {
            return value.to_string();
        }
        if self.admitted.len() < self.cap {
            self.admitted.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }
}

/// Caps per metric and label: a busy `comm` in resets does not crowd out queue drop labels.
#[derive(Debug)]
struct Caps {
    reset_reason: LabelCap,
    reset_comm: LabelCap,
    reset_container: LabelCap,
    drop_port: LabelCap,
    drop_container: LabelCap,
}

/// The counters `--metrics` serves.
pub struct Metrics {
    registry: Registry,
    resets: Family<ResetLabels, Counter>,
    queue_drops: Family<QueueDropLabels, Counter>,
    lost: Counter,
    program_run_time: Family<ProgramLabels, Counter<f64, AtomicU64>>,
    program_runs: Family<ProgramLabels, Counter>,
    caps: Caps,
    /// The reset counter each combination of raw label values went to, so that counting an
    /// event finds its series without building (allocating) its labels again.
    reset_series: hashbrown::HashMap<ResetSeriesKey, Counter, foldhash::fast::RandomState>,
}

/// The raw label values of a reset, before the caps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ResetSeriesKey {
    direction: &'static str,
    cause: &'static str,
    reason: String,
    comm: String,
    container: String,
}

/// [`ResetSeriesKey`] borrowed from an event: hashes the same way, compares equal to it.
#[derive(Hash)]
struct RawResetKey<'a> {
    direction: &'static str,
    cause: &'static str,
    reason: &'a str,
    comm: &'a str,
    container: &'a str,
}

impl hashbrown::Equivalent<ResetSeriesKey> for RawResetKey<'_> {
    fn equivalent(&self, key: &ResetSeriesKey) -> bool {
        self.direction == key.direction
            && self.cause == key.cause
            && self.reason == key.reason
            && self.comm == key.comm
            && self.container == key.container
    }
}

/// Entries in `reset_series` before it starts over (each distinct raw combination is one).
const RESET_SERIES_CACHE: usize = 4096;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("caps", &self.caps).finish()
    }
}

impl Metrics {
    /// Counters with the documented cap of [`MAX_VALUES_PER_LABEL`] values per label.
    pub fn new() -> Self {
        Self::with_label_cap(MAX_VALUES_PER_LABEL)
    }

    /// Counters keeping at most `cap` distinct values per capped label.
    pub fn with_label_cap(cap: usize) -> Self {
        let mut registry = Registry::default();
        let resets = Family::<ResetLabels, Counter>::default();
        registry.register(
            "rst_trace_resets",
            "TCP resets this host sent or received, by cause, kernel reason, process and container",
            resets.clone(),
        );
        let queue_drops = Family::<QueueDropLabels, Counter>::default();
        registry.register(
            "rst_trace_queue_drops",
            "Connections or segments dropped at a full queue, by cause, local port and container",
            queue_drops.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "rst_trace_lost_events",
            "Events the kernel could not deliver because the ring buffer was full",
            lost.clone(),
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
            resets,
            queue_drops,
            lost,
            program_run_time,
            program_runs,
            caps: Caps {
                reset_reason: LabelCap::new(cap),
                reset_comm: LabelCap::new(cap),
                reset_container: LabelCap::new(cap),
                drop_port: LabelCap::new(cap),
                drop_container: LabelCap::new(cap),
            },
            reset_series: hashbrown::HashMap::default(),
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
                let port = event
                    .local
                    .map_or_else(|| NONE.to_string(), |local| local.port.to_string());
                let labels = QueueDropLabels {
                    cause,
                    port: self.caps.drop_port.admit(&port),
                    container: self.caps.drop_container.admit(container),
                };
                self.queue_drops
                    .get_or_create(&labels)
                    .inc_by(event.count());
                return;
            }
        };
        let reason = event.reason.as_ref().map_or(NONE, Reason::name);
        let comm = event
            .process
            .as_ref()
            .map_or(NONE, |process| process.comm.as_str());
        // Looked up by borrowed values: the common case allocates nothing.
        let raw = RawResetKey {
            direction,
            cause,
            reason,
            comm,
            container,
        };
        if let Some(counter) = self.reset_series.get(&raw) {
            counter.inc_by(event.count());
            return;
        }
        let labels = ResetLabels {
            direction,
            cause,
            reason: self.caps.reset_reason.admit(reason),
            comm: self.caps.reset_comm.admit(comm),
            container: self.caps.reset_container.admit(container),
        };
        let counter = self.resets.get_or_create(&labels).clone();
        counter.inc_by(event.count());
        if self.reset_series.len() >= RESET_SERIES_CACHE {
            self.reset_series.clear();
        }
        self.reset_series.insert(
            ResetSeriesKey {
                direction,
                cause,
                reason: reason.to_string(),
                comm: comm.to_string(),
                container: container.to_string(),
            },
            counter,
        );
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
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    if let Err(error) = respond(stream, &metrics).await {
                        log::debug!("metrics request: {error}");
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin, then go on.
                log::warn!("metrics: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request and answers it; the connection closes after the answer.
async fn respond(mut stream: TcpStream, metrics: &Mutex<Metrics>) -> io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request within the timeout"))??;
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
        received.container = Some(Container {
            id: "0123456789abcdef".repeat(4),
            runtime: "docker",
            pod_uid: None,
        });
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

    #[test]
    fn values_past_the_cap_are_counted_under_other() {
        let mut metrics = Metrics::with_label_cap(2);
        // Repeats go to the series their first sighting went to, capped or not.
        for comm in ["a", "b", "c", "d", "a", "c"] {
            metrics.observe(&event(EventKind::ResetSent, Some(Cause::PortClosed), comm));
        }
        let text = metrics.encode();
        let mut comms: Vec<(String, String)> = samples(&text, "rst_trace_resets_total")
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
        assert_eq!(
            comms,
            [
                ("a".to_string(), "2".to_string()),
                ("b".to_string(), "1".to_string()),
                ("other".to_string(), "3".to_string()),
            ],
            "{text}"
        );
    }

    #[test]
    fn the_default_cap_is_fifty_values_per_label() {
        let mut metrics = Metrics::new();
        for port in 1..=60u16 {
            let mut drop = event(EventKind::QueueDrop, Some(Cause::SynQueueFull), "x");
            drop.local = Some(Endpoint {
                addr: [127, 0, 0, 1].into(),
                port,
            });
            metrics.observe(&drop);
        }
        let text = metrics.encode();
        let drops = samples(&text, "rst_trace_queue_drops_total");
        assert_eq!(drops.len(), MAX_VALUES_PER_LABEL + 1, "{text}");
        assert!(
            drops.contains(
                &r#"rst_trace_queue_drops_total{cause="syn_queue_full",port="other",container="none"} 10"#
            ),
            "{text}"
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
