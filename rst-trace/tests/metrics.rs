//! `--metrics`: a real Prometheus (Debian's package) scrapes rst-trace, and its query API shows
//! a reset this test made. Loopback only.

mod common;

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use common::{
    prometheus::{PROMETHEUS_TIMEOUT, Prometheus, http_get},
    *,
};
use serde_json::Value;

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
