//! `--metrics`: a real Prometheus (Debian's package) scrapes rst-trace, and its query API shows
//! a reset this test made. Loopback only.

mod common;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Prometheus starts in a second or two; a debug rst-trace on a loaded CI box may be slower to
/// answer its first scrape.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A Prometheus server on loopback with its own config and storage in a temp dir; dropping it
/// kills the server and removes the dir.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second, and waits until it is ready.
    fn start(target: SocketAddr) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install Debian's `prometheus` package (cargo xtask setup does)"
        );
        let dir = std::env::temp_dir().join(format!(
            "rst-trace-prometheus-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        fs::create_dir_all(dir.join("data")).expect("create Prometheus's temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: rst-trace\n    static_configs:\n      \
             - targets: ['{target}']\n"
        );
        fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("create prometheus.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut prometheus = Self { child, dir, addr };
        let started = Instant::now();
        loop {
            if matches!(http_get(prometheus.addr, "/-/ready"), Ok((200, _))) {
                return prometheus;
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    prometheus.log()
                );
            }
            assert!(
                started.elapsed() < PROMETHEUS_TIMEOUT,
                "prometheus was not ready within {PROMETHEUS_TIMEOUT:?}:\n{}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )
        .map_err(|error| format!("query failed: {error}"))?;
        let reply: Value =
            serde_json::from_str(&body).map_err(|error| format!("not JSON ({error}): {body}"))?;
        if status != 200 || reply["status"] != "success" {
            return Err(format!("query answered {status}: {body}"));
        }
        Ok(reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The scrape target's health and last error, for failure messages.
    fn targets(&self) -> String {
        http_get(self.addr, "/api/v1/targets")
            .map(|(_, body)| body)
            .unwrap_or_else(|error| format!("targets: {error}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A plain HTTP/1.0 GET (no chunked encoding in the answer): (status, body).
fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Query-string encoding: everything but unreserved characters as %XX.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The sum of an instant vector's sample values.
fn total(result: &[Value]) -> f64 {
    result
        .iter()
        .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn prometheus_counts_a_reset_sent_for_a_closed_port() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", closed_port("127.0.0.1"))
        .parse()
        .expect("addr");
    let closed = closed_port("127.0.0.1");
    let tracer = Tracer::start(&[
        "--metrics",
        &metrics.to_string(),
        "--port",
        &closed.to_string(),
    ]);
    let scrape = http_get(metrics, "/metrics");
    assert!(
        matches!(&scrape, Ok((200, body)) if body.contains("rst_trace_lost_events_total")),
        "rst-trace --metrics {metrics} does not serve /metrics: {scrape:?}\nstderr:\n{}",
        tracer.stderr()
    );
    let prometheus = Prometheus::start(metrics);

    let refused = std::net::TcpStream::connect(("127.0.0.1", closed));
    assert!(refused.is_err(), "port {closed} should be closed");
    tracer.wait_for("the reset sent for the closed port", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(closed)
    });

    let promql = r#"rst_trace_resets_total{cause="port_closed",direction="sent"}"#;
    // Kernels before 6.10 give no reason for resets sent: the label is then `none`.
    let reason = match sent_reason("NO_SOCKET") {
        Value::Null => Value::from("none"),
        name => name,
    };
    let started = Instant::now();
    loop {
        let last = match prometheus.query(promql) {
            Ok(result) if total(&result) >= 1.0 => {
                let series = &result[0]["metric"];
                assert_eq!(series["job"], "rst-trace", "{result:?}");
                assert_eq!(series["reason"], reason, "{result:?}");
                break;
            }
            other => other,
        };
        assert!(
            started.elapsed() < PROMETHEUS_TIMEOUT,
            "Prometheus did not count the reset within {PROMETHEUS_TIMEOUT:?}; last answer to \
             {promql}: {last:?}\ntargets: {}\nprometheus log:\n{}\nrst-trace stderr:\n{}",
            prometheus.targets(),
            prometheus.log(),
            tracer.stderr()
        );
        thread::sleep(Duration::from_millis(250));
    }
    drop(prometheus);
    tracer.stop();
}
