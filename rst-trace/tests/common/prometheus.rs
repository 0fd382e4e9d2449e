//! A real Prometheus (Debian's package) for the tests: scrapes one rst-trace every second,
//! optionally evaluates alerting rules, and answers queries.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::closed_port;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Prometheus starts in a second or two; a debug rst-trace on a loaded CI box may be slower to
/// answer its first scrape.
pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A Prometheus server on loopback with its own config and storage in a temp dir; dropping it
/// kills the server and removes the dir.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second as job `rst-trace`, and waits until it
    /// is ready.
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with(target, &[], &[])
    }

    /// Like [`Prometheus::start`], with `labels` added to every series of the target (as a
    /// scrape configuration's relabelling would) and the rules of `rule_files` evaluated every
    /// second.
    pub fn start_with(target: SocketAddr, labels: &[(&str, &str)], rule_files: &[&Path]) -> Self {
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
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        if !rule_files.is_empty() {
            config.push_str("rule_files:\n");
            for file in rule_files {
                config.push_str(&format!("  - '{}'\n", file.display()));
            }
        }
        config.push_str(&format!(
            "scrape_configs:\n  - job_name: rst-trace\n    static_configs:\n      \
             - targets: ['{target}']\n"
        ));
        if !labels.is_empty() {
            config.push_str("        labels:\n");
            for (name, value) in labels {
                config.push_str(&format!("          {name}: '{value}'\n"));
            }
        }
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

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
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

    /// The alerts its rules hold now, pending or firing (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<Value>, String> {
        let (status, body) = http_get(self.addr, "/api/v1/alerts")
            .map_err(|error| format!("alerts failed: {error}"))?;
        let reply: Value =
            serde_json::from_str(&body).map_err(|error| format!("not JSON ({error}): {body}"))?;
        if status != 200 || reply["status"] != "success" {
            return Err(format!("alerts answered {status}: {body}"));
        }
        Ok(reply["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The scrape target's health and last error, for failure messages.
    pub fn targets(&self) -> String {
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
pub fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
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
