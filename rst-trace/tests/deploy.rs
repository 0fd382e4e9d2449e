//! deploy/: what a fleet deployment depends on.
//!
//! - daemonset.yaml's structure, checked without a cluster (and without root): host namespaces,
//!   capabilities, read-only host mounts, and a metrics port that the arguments, the container
//!   port and the scrape annotations agree on.
//! - The image (Dockerfile) and the manifest agree: the manifest runs the binary the image
//!   installs, with arguments the real binary accepts and serves metrics with (as root, in a
//!   network namespace of the test's own).
//! - alerts.yaml: its unit tests pass under the real `promtool test rules`, every alert has a
//!   case that fires and one that must not, the metrics and labels it reads are the ones the real
//!   binary serves (as root), a real Prometheus loaded with it fires the accept-queue alert for a
//!   real overflow that the real binary counts (as root), and prometheus-operator.yaml carries
//!   the same rules.
//!
//! Every test's name starts with `deploy_`: `cargo xtask test -- deploy` runs them all,
//! `cargo xtask test -- deploy_alerts` the alerting ones.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read as _,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use clap::Parser as _;
use common::{
    netns::TestNetns,
    prometheus::{PROMETHEUS_TIMEOUT, Prometheus, http_get},
    *,
};
use rst_trace::cli::Cli;
use serde::Deserialize as _;
use serde_norway::Value;
use socket2::{Domain, Socket, Type};

const PROMTOOL: &str = "/usr/bin/promtool";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn deploy_file(name: &str) -> String {
    let path = deploy_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of a file in deploy/.
fn yaml_documents(name: &str) -> Vec<Value> {
    let text = deploy_file(name);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{name} is valid YAML: {e}"))
        })
        .collect()
}

/// Every YAML document of the manifest.
fn documents() -> Vec<Value> {
    yaml_documents("daemonset.yaml")
}

fn of_kind(documents: &[Value], kind: &str) -> Vec<Value> {
    documents
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .cloned()
        .collect()
}

fn daemonset() -> Value {
    let daemonsets = of_kind(&documents(), "DaemonSet");
    assert_eq!(daemonsets.len(), 1, "one DaemonSet in daemonset.yaml");
    daemonsets[0].clone()
}

fn container(daemonset: &Value) -> Value {
    let containers = daemonset["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    containers[0].clone()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_sequence()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn deploy_daemonset_runs_in_the_hosts_pid_and_network_namespaces_on_every_node() {
    let ds = daemonset();
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let tolerates_everything = pod["tolerations"]
        .as_sequence()
        .expect("tolerations")
        .iter()
        .any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_null());
    assert!(tolerates_everything, "a toleration of every taint");

    let selector = ds["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "the selector matches the pod labels");
    }
}

#[test]
fn deploy_daemonset_namespace_admits_privileged_pods() {
    let documents = documents();
    let namespace = daemonset()["metadata"]["namespace"]
        .as_str()
        .expect("namespace")
        .to_string();
    if namespace == "kube-system" {
        return;
    }
    let declared = of_kind(&documents, "Namespace")
        .into_iter()
        .find(|n| n["metadata"]["name"].as_str() == Some(&namespace))
        .unwrap_or_else(|| panic!("namespace {namespace} is declared in daemonset.yaml"));
    assert_eq!(
        declared["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("privileged"),
        "hostPID, hostNetwork and hostPath need the privileged Pod Security level"
    );
}

#[test]
fn deploy_container_gets_bpf_and_perfmon_and_is_not_privileged() {
    let security = &container(&daemonset())["securityContext"];
    let added = strings(&security["capabilities"]["add"]);
    for needed in ["BPF", "PERFMON"] {
        assert!(
            added.contains(&needed),
            "capabilities add {needed}: {added:?}"
        );
    }
    assert!(
        !added.contains(&"SYS_ADMIN"),
        "tracefs comes from the host: no SYS_ADMIN"
    );
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_ne!(security["privileged"].as_bool(), Some(true));
    assert_eq!(security["runAsUser"].as_u64(), Some(0));
}

#[test]
fn deploy_kernel_and_proc_views_are_mounted_read_only_from_the_host() {
    let ds = daemonset();
    let container = container(&ds);
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes");
    for path in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/proc",
        "/sys/fs/cgroup",
    ] {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("a mount at {path}"));
        assert_eq!(
            mount["readOnly"].as_bool(),
            Some(true),
            "{path} is read-only"
        );
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("the volume of {path}"));
        assert_eq!(
            volume["hostPath"]["path"].as_str(),
            Some(path),
            "{path} comes from the host's {path}"
        );
    }
    assert!(
        mounts.iter().all(|m| m["readOnly"].as_bool() == Some(true)),
        "every mount is read-only"
    );
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
}

#[test]
fn deploy_metrics_port_agrees_across_args_container_port_probe_and_scrape_annotations() {
    let ds = daemonset();
    let container = container(&ds);
    let args = strings(&container["args"]);
    let cli = Cli::try_parse_from(std::iter::once("rst-trace").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("rst-trace rejects the manifest's args {args:?}: {e}"));
    assert!(cli.trace.quiet, "metrics only: --quiet");
    let listen = cli.trace.metrics.expect("--metrics");
    assert!(
        listen.ip().is_unspecified(),
        "Prometheus scrapes from another host: --metrics binds every address, not {listen}"
    );

    let ports = container["ports"].as_sequence().expect("ports");
    let metrics_port = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .expect("a container port named metrics");
    assert_eq!(
        metrics_port["containerPort"].as_u64(),
        Some(u64::from(listen.port()))
    );

    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(listen.port().to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    let probe = &container["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/metrics"));
    assert_eq!(probe["port"].as_str(), Some("metrics"));
}

#[test]
fn deploy_container_has_resources() {
    let container = container(&daemonset());
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][bound][resource].is_null(),
                "resources.{bound}.{resource}"
            );
        }
    }
}

// The image and the manifest.

/// What deploy/Dockerfile builds, as far as the pod depends on it.
struct Image {
    /// `COPY SRC DEST` pairs.
    copies: Vec<(String, String)>,
    /// ENTRYPOINT, in exec form.
    entrypoint: Vec<String>,
    /// CMD, in exec form, where there is one.
    cmd: Option<Vec<String>>,
    /// The arguments of the `docker build` the file's header documents.
    documented_build: Vec<String>,
}

fn image() -> Image {
    let text = deploy_file("Dockerfile");
    let mut image = Image {
        copies: Vec::new(),
        entrypoint: Vec::new(),
        cmd: None,
        documented_build: Vec::new(),
    };
    let exec_form = |keyword: &str, rest: &str| -> Vec<String> {
        serde_json::from_str(rest).unwrap_or_else(|e| {
            panic!(
                "Dockerfile: {keyword} must be in exec form (a JSON array), so that SIGTERM \
                 reaches rst-trace rather than a shell: {rest} ({e})"
            )
        })
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "Dockerfile: one instruction per line: {line}"
        );
        let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
        match keyword {
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                assert_eq!(words.len(), 2, "Dockerfile: COPY SRC DEST: {line}");
                image
                    .copies
                    .push((words[0].to_string(), words[1].to_string()));
            }
            "ENTRYPOINT" => image.entrypoint = exec_form(keyword, rest),
            "CMD" => image.cmd = Some(exec_form(keyword, rest)),
            _ => {}
        }
    }
    // The header's `docker build` command, continued over `\` lines.
    let comment: Vec<&str> = text
        .lines()
        .map_while(|line| line.strip_prefix('#'))
        .map(str::trim)
        .collect();
    if let Some(start) = comment.iter().position(|l| l.starts_with("docker build")) {
        for line in &comment[start..] {
            let continued = line.ends_with('\\');
            image.documented_build.extend(
                line.trim_end_matches('\\')
                    .split_whitespace()
                    .map(str::to_string),
            );
            if !continued {
                break;
            }
        }
    }
    image
}

/// The argv the pod's container runs, as Kubernetes builds it: `command` replaces the image's
/// ENTRYPOINT (and drops its CMD), `args` replaces CMD.
fn pod_argv(container: &Value, image: &Image) -> Vec<String> {
    let owned =
        |items: Vec<&str>| -> Vec<String> { items.into_iter().map(str::to_string).collect() };
    let command = owned(strings(&container["command"]));
    let args = owned(strings(&container["args"]));
    let has_args = !container["args"].is_null();
    let mut argv = if command.is_empty() {
        let mut argv = image.entrypoint.clone();
        if !has_args {
            argv.extend(image.cmd.clone().unwrap_or_default());
        }
        argv
    } else {
        command
    };
    argv.extend(args);
    argv
}

/// Where `cargo xtask build` leaves the static binary (xtask/src/static_build.rs): the build
/// context the Dockerfile documents, so that the image holds that very file.
const RELEASE_DIR: &str = "target/x86_64-unknown-linux-gnu/release";

#[test]
fn deploy_manifest_runs_the_binary_the_image_installs_with_arguments_rst_trace_accepts() {
    let image = image();
    let ds = daemonset();
    let container = container(&ds);
    let entrypoint = image.entrypoint.first().expect("Dockerfile: an ENTRYPOINT");
    let installed: Vec<&(String, String)> = image
        .copies
        .iter()
        .filter(|(_, dest)| dest == entrypoint)
        .collect();
    assert_eq!(
        installed.len(),
        1,
        "Dockerfile: one COPY installs the ENTRYPOINT {entrypoint}: {:?}",
        image.copies
    );
    assert_eq!(
        installed[0].0, "rst-trace",
        "the image holds the binary `cargo xtask build` makes, from the build context's rst-trace"
    );

    let command = strings(&container["command"]);
    if !command.is_empty() {
        assert_eq!(
            command, image.entrypoint,
            "the manifest's command is the image's ENTRYPOINT, so that `docker run` of the image \
             and the pod run the same program"
        );
    }
    let argv = pod_argv(&container, &image);
    assert_eq!(&argv[0], entrypoint, "the pod runs the image's binary");
    let cli = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("rst-trace rejects the pod's command line {argv:?}: {e}"));
    assert!(
        cli.command.is_none(),
        "the pod traces: no subcommand in {argv:?}"
    );

    // The documented build makes the image the manifest names, from the static binary.
    let build = &image.documented_build;
    assert!(
        !build.is_empty(),
        "Dockerfile: its header shows the docker build command"
    );
    let tag = build
        .iter()
        .position(|word| word == "-t")
        .and_then(|at| build.get(at + 1))
        .expect("the documented docker build has -t IMAGE");
    assert_eq!(
        Some(tag.as_str()),
        container["image"].as_str(),
        "the documented build tags the image the manifest runs"
    );
    assert!(
        tag.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "the image tag {tag} is rst-trace's version"
    );
    assert_eq!(build.last().map(String::as_str), Some(RELEASE_DIR));
    assert!(build.windows(2).any(|w| w == ["-f", "deploy/Dockerfile"]));
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md");
    let readme_words: Vec<&str> = readme
        .split_whitespace()
        .filter(|word| *word != "\\")
        .collect();
    assert!(
        readme_words
            .windows(build.len())
            .any(|window| window.iter().copied().eq(build.iter().map(String::as_str))),
        "README shows the Dockerfile's build command: {}",
        build.join(" ")
    );
}

#[test]
fn deploy_pods_command_line_serves_metrics_on_the_manifests_port_and_stops_on_sigterm() {
    require_root();
    let image = image();
    let ds = daemonset();
    let container = container(&ds);
    let argv = pod_argv(&container, &image);
    let cli = Cli::try_parse_from(&argv).expect("the pod's command line parses");
    let listen = cli.trace.metrics.expect("--metrics");
    let port = container["ports"]
        .as_sequence()
        .and_then(|ports| ports.iter().find(|p| p["name"].as_str() == Some("metrics")))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("a container port named metrics");
    let grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");

    // The pod's argv with this build's binary in place of the image's path, in a network
    // namespace of its own: the manifest's 0.0.0.0:9464 is then the test's alone.
    let netns = TestNetns::new("pod");
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .arg(BINARY)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsenter (util-linux) runs rst-trace");
    let scrape_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let started = Instant::now();
    let body = loop {
        if let Ok((200, body)) = netns.run(|| http_get(scrape_addr, "/metrics")) {
            break body;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            let _ = child
                .stderr
                .take()
                .map(|mut e| e.read_to_string(&mut stderr));
            panic!("rst-trace {:?} exited ({status}):\n{stderr}", &argv[1..]);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rst-trace {:?} did not serve {scrape_addr}/metrics (the manifest's containerPort \
             {port}, --metrics {listen}) within 60 s",
            &argv[1..]
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        body.contains("rst_trace_lost_events_total"),
        "the liveness probe's /metrics serves rst-trace's metrics:\n{body}"
    );

    // Kubernetes stops a pod with SIGTERM and kills it after the grace period.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if stopping.elapsed() > Duration::from_secs(grace) {
            let _ = child.kill();
            panic!("rst-trace did not stop within the manifest's {grace} s grace period");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    let _ = child
        .stdout
        .take()
        .map(|mut o| o.read_to_string(&mut stdout));
    let _ = child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    assert!(
        status.success(),
        "rst-trace exited with {status}:\n{stderr}"
    );
    assert_eq!(stdout, "", "--quiet: no per-event output in the pod's log");
    assert!(
        stderr.contains("rst-trace: tracing "),
        "start-up notes go to the log:\n{stderr}"
    );
}

// The alerting rules.

/// Labels the scrape configuration adds to every series (README "Running on a fleet",
/// prometheus-operator.yaml's PodMonitor); the rest come from rst-trace.
const SCRAPE_LABELS: [&str; 3] = ["job", "instance", "node"];

/// The alerting rules of alerts.yaml: (name, expression).
fn alert_rules() -> Vec<(String, String)> {
    let rules = &yaml_documents("alerts.yaml")[0];
    rules["groups"]
        .as_sequence()
        .expect("alerts.yaml: groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").iter())
        .filter_map(|rule| {
            Some((
                rule["alert"].as_str()?.to_string(),
                rule["expr"].as_str().expect("expr").to_string(),
            ))
        })
        .collect()
}

/// `name{label="value",...}`, as in an exposition line or a promtool series: the name and the
/// labels, or None for anything else.
fn parse_series(text: &str) -> Option<(String, BTreeMap<String, String>)> {
    let text = text.trim();
    let name_end = text
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut labels = BTreeMap::new();
    if let Some(mut rest) = text[name_end..].strip_prefix('{') {
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if rest.starts_with('}') {
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let after = after.strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => value.push(chars.next()?.1),
                    (at, '"') => break at,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim().to_string(), value);
            rest = &after[end + 1..];
        }
    }
    Some((name.to_string(), labels))
}

/// The `rst_trace_*` metric names an expression reads.
fn metrics_read(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("rst_trace_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The label names an expression groups by or matches on.
fn labels_used(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let inside = &rest[at + 4..];
        let end = inside.find(')').expect("by (...) closes");
        labels.extend(inside[..end].split(',').map(|l| l.trim().to_string()));
        rest = &inside[end..];
    }
    let mut rest = expr;
    while let Some(at) = rest.find('{') {
        let inside = &rest[at + 1..];
        let end = inside.find('}').expect("{...} closes");
        for matcher in inside[..end].split(',') {
            let name_end = matcher.find(['=', '!']).expect("a label matcher");
            labels.insert(matcher[..name_end].trim().to_string());
        }
        rest = &inside[end..];
    }
    labels
}

/// The value an expression matches `label` to (`label="value"`), where it does.
fn matched_value(expr: &str, label: &str) -> Option<String> {
    let at = expr.find(&format!("{label}=\""))?;
    let value = &expr[at + label.len() + 2..];
    Some(value[..value.find('"')?].to_string())
}

#[test]
fn deploy_alerts_pass_promtool_check_and_their_unit_tests() {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install Debian's prometheus package (`cargo xtask setup --for \
         test` does)"
    );
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(PROMTOOL)
            .args(args)
            .current_dir(deploy_dir())
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn deploy_alerts_each_have_a_case_that_fires_and_a_case_that_must_not() {
    let tests = &yaml_documents("alerts.test.yaml")[0];
    assert_eq!(strings(&tests["rule_files"]), ["alerts.yaml"]);
    let cases: Vec<&Value> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|test| {
            test["alert_rule_test"]
                .as_sequence()
                .map(|cases| cases.iter().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    let alerts = alert_rules();
    assert!(alerts.len() >= 5, "alerts.yaml has its alerts: {alerts:?}");
    for (alert, _) in &alerts {
        let of_alert = || {
            cases
                .iter()
                .filter(move |case| case["alertname"].as_str() == Some(alert.as_str()))
        };
        assert!(
            of_alert().any(|case| case["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty())),
            "{alert}: no test case where it fires"
        );
        assert!(
            of_alert().any(|case| case["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| alerts.is_empty())),
            "{alert}: no test case where it must stay quiet"
        );
    }
    for case in &cases {
        let name = case["alertname"].as_str().expect("alertname");
        assert!(
            alerts.iter().any(|(alert, _)| alert == name),
            "alerts.test.yaml tests {name}, which alerts.yaml does not define"
        );
    }
}

#[test]
fn deploy_alerts_are_all_in_the_readme_table() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md");
    for (alert, _) in alert_rules() {
        assert!(
            readme.contains(&format!("| `{alert}` |")),
            "README's alert table has a row for {alert}"
        );
    }
}

#[test]
fn deploy_prometheus_operator_manifest_carries_the_same_rules_and_scrapes_the_daemonset() {
    let operator = yaml_documents("prometheus-operator.yaml");
    let rules = of_kind(&operator, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    assert_eq!(
        rules[0]["spec"]["groups"],
        yaml_documents("alerts.yaml")[0]["groups"],
        "prometheus-operator.yaml's PrometheusRule has alerts.yaml's groups, unchanged"
    );

    let monitors = of_kind(&operator, "PodMonitor");
    assert_eq!(monitors.len(), 1, "one PodMonitor");
    let monitor = &monitors[0]["spec"];
    let ds = daemonset();
    let namespace = ds["metadata"]["namespace"].as_str().expect("namespace");
    assert_eq!(
        strings(&monitor["namespaceSelector"]["matchNames"]),
        [namespace]
    );
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (key, value) in monitor["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector.matchLabels")
    {
        assert_eq!(
            &pod_labels[key], value,
            "the PodMonitor selects the DaemonSet's pods"
        );
    }
    let endpoints = monitor["podMetricsEndpoints"]
        .as_sequence()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"].as_str(), Some("metrics"));
    assert_eq!(endpoints[0]["path"].as_str(), Some("/metrics"));
    let container = container(&ds);
    assert!(
        container["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .any(|p| p["name"].as_str() == Some("metrics")),
        "the DaemonSet's container has the port the PodMonitor scrapes"
    );
    // The job the rules' `up` alerts read is the pods' label the PodMonitor takes it from.
    let job = alert_rules()
        .iter()
        .find_map(|(_, expr)| matched_value(expr, "job"))
        .expect("a rule reads job=...");
    let job_label = monitor["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(pod_labels[job_label].as_str(), Some(job.as_str()));
    assert!(
        endpoints[0]["relabelings"]
            .as_sequence()
            .expect("relabelings")
            .iter()
            .any(
                |r| strings(&r["sourceLabels"]) == ["__meta_kubernetes_pod_node_name"]
                    && r["targetLabel"].as_str() == Some("node")
            ),
        "the PodMonitor gives every series the node label the alerts group by"
    );
}

/// Non-blocking connects from inside the namespace; they keep retransmitting SYNs until
/// dropped with the sockets.
fn connect_many(netns: &TestNetns, port: u16, count: usize) -> Vec<Socket> {
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    netns.run(|| {
        (0..count)
            .map(|_| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                socket.set_nonblocking(true).expect("nonblocking");
                match socket.connect(&to.into()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(e) => panic!("connect: {e}"),
                }
                socket
            })
            .collect()
    })
}

/// A listener with backlog 1 that never accepts, in a network namespace of the test's own, and
/// rst-trace tracing that namespace with `--metrics` on loopback.
struct Traced {
    netns: TestNetns,
    listener: Socket,
    port: u16,
    metrics: SocketAddr,
    tracer: Tracer,
}

impl Traced {
    fn start(tag: &str) -> Self {
        require_root();
        let netns = TestNetns::new(tag);
        let (listener, port) = netns.run(|| listener("127.0.0.1", 1));
        let metrics: SocketAddr = format!("127.0.0.1:{}", closed_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let tracer = Tracer::start(&[
            "--netns",
            &netns.inode().to_string(),
            "--metrics",
            &metrics.to_string(),
        ]);
        // The tracer's first sample of the namespace is its baseline.
        thread::sleep(Duration::from_millis(1500));
        Self {
            netns,
            listener,
            port,
            metrics,
            tracer,
        }
    }
}

/// Overflows the listener's accept queue (6 clients for room for 2) and waits until rst-trace
/// reports the drops.
fn overflow(netns: &TestNetns, port: u16, tracer: &Tracer) {
    let clients = connect_many(netns, port, 6);
    let started = Instant::now();
    while netns.tcp_ext("ListenOverflows") < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no SYN was dropped"
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(clients);
    tracer.wait_for("the accept-queue drops", |e| {
        kind(e) == "queue_drop"
            && e["cause"] == "accept_queue_full"
            && local_port_of(e) == u64::from(port)
    });
}

#[test]
fn deploy_alerts_read_the_metrics_and_labels_rst_trace_serves() {
    let Traced {
        netns,
        listener,
        port,
        metrics,
        tracer,
    } = Traced::start("alerts");
    overflow(&netns, port, &tracer);
    let closed = netns.run(|| closed_port("127.0.0.1"));
    let refused = netns.run(|| TcpStream::connect(("127.0.0.1", closed)));
    assert!(refused.is_err(), "port {closed} is closed");
    tracer.wait_for("the reset sent for the closed port", |e| {
        kind(e) == "reset_sent" && local_port_of(e) == u64::from(closed)
    });
    // Counted by the time the events are printed, or very soon after.
    let port_label = port.to_string();
    let started = Instant::now();
    let samples: Vec<(String, BTreeMap<String, String>)> = loop {
        let (status, body) = http_get(metrics, "/metrics").expect("scrape --metrics");
        assert_eq!(status, 200);
        let samples: Vec<_> = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_series)
            .collect();
        let counted = samples.iter().any(|(name, labels)| {
            name == "rst_trace_queue_drops_total" && labels.get("port") == Some(&port_label)
        });
        if counted || started.elapsed() > Duration::from_secs(5) {
            break samples;
        }
        thread::sleep(Duration::from_millis(100));
    };
    tracer.stop();
    drop(listener);

    let served: BTreeMap<&str, BTreeSet<&str>> =
        samples
            .iter()
            .fold(BTreeMap::new(), |mut served, (name, labels)| {
                served
                    .entry(name.as_str())
                    .or_default()
                    .extend(labels.keys().map(String::as_str));
                served
            });
    let drop_sample = samples
        .iter()
        .find(|(name, labels)| {
            name == "rst_trace_queue_drops_total" && labels.get("port") == Some(&port_label)
        })
        .unwrap_or_else(|| panic!("no rst_trace_queue_drops_total for port {port}: {served:?}"));

    let allowed: BTreeSet<&str> = served
        .values()
        .flatten()
        .copied()
        .chain(SCRAPE_LABELS)
        .collect();
    for (alert, expr) in alert_rules() {
        for metric in metrics_read(&expr) {
            assert!(
                served.contains_key(metric.as_str()),
                "{alert} reads {metric}, which rst-trace does not serve: {served:?}"
            );
        }
        for label in labels_used(&expr) {
            assert!(
                allowed.contains(label.as_str()),
                "{alert} uses label {label}, which neither rst-trace nor the scrape sets"
            );
        }
        if alert == "RstTraceAcceptQueueOverflow" {
            assert_eq!(
                matched_value(&expr, "cause").as_deref(),
                drop_sample.1.get("cause").map(String::as_str),
                "{alert} matches the cause rst-trace counts an accept-queue overflow under"
            );
        }
    }

    // The unit tests' series look like what rst-trace serves.
    let tests = &yaml_documents("alerts.test.yaml")[0];
    let mut causes = BTreeSet::new();
    for series in tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|test| test["input_series"].as_sequence().expect("input_series"))
    {
        let text = series["series"].as_str().expect("series");
        let (name, labels) = parse_series(text).expect("a series selector");
        if !name.starts_with("rst_trace_") {
            continue;
        }
        let from_rst_trace: BTreeSet<&str> = labels
            .keys()
            .map(String::as_str)
            .filter(|label| !SCRAPE_LABELS.contains(label))
            .collect();
        assert_eq!(
            Some(&from_rst_trace),
            served.get(name.as_str()),
            "alerts.test.yaml's {text} has the labels rst-trace serves {name} with"
        );
        causes.extend(labels.get("cause").cloned());
    }
    for cause in causes {
        let explain = Command::new(BINARY)
            .args(["explain", &cause])
            .output()
            .expect("rst-trace explain");
        assert!(
            explain.status.success(),
            "alerts.test.yaml uses cause {cause}, which rst-trace does not have"
        );
    }
}

#[test]
fn deploy_alerts_fire_in_a_real_prometheus_for_a_real_accept_queue_overflow() {
    let Traced {
        netns,
        listener,
        port,
        metrics,
        tracer,
    } = Traced::start("firing");
    // Scraped as the fleet's scrape configuration does: job rst-trace, a node label.
    let rules = deploy_dir().join("alerts.yaml");
    let prometheus = Prometheus::start_with(metrics, &[("node", "test-node")], &[&rules]);
    let started = Instant::now();
    while !prometheus
        .query(r#"up{job="rst-trace"} == 1"#)
        .is_ok_and(|result| !result.is_empty())
    {
        assert!(
            started.elapsed() < PROMETHEUS_TIMEOUT,
            "Prometheus did not scrape rst-trace:\n{}\n{}",
            prometheus.targets(),
            prometheus.log()
        );
        thread::sleep(Duration::from_millis(250));
    }

    overflow(&netns, port, &tracer);

    let port_label = port.to_string();
    let started = Instant::now();
    let (firing, alerts) = loop {
        let alerts = prometheus.alerts().unwrap_or_default();
        let firing = alerts.iter().find(|alert| {
            alert["labels"]["alertname"] == "RstTraceAcceptQueueOverflow"
                && alert["labels"]["port"] == port_label.as_str()
                && alert["state"] == "firing"
        });
        if let Some(firing) = firing {
            break (firing.clone(), alerts);
        }
        assert!(
            started.elapsed() < PROMETHEUS_TIMEOUT,
            "RstTraceAcceptQueueOverflow did not fire for port {port} within \
             {PROMETHEUS_TIMEOUT:?}; alerts: {alerts:?}\nqueue drops: {:?}\nprometheus log:\n{}",
            prometheus.query("rst_trace_queue_drops_total"),
            prometheus.log()
        );
        thread::sleep(Duration::from_millis(250));
    };
    tracer.stop();
    drop(listener);

    assert_eq!(
        firing["labels"],
        serde_json::json!({
            "alertname": "RstTraceAcceptQueueOverflow",
            "severity": "warning",
            "node": "test-node",
            "container": "none",
            "port": port_label,
        }),
        "{firing}"
    );
    assert_eq!(
        firing["annotations"]["summary"],
        format!("Accept queue full on test-node: port {port} in container none"),
        "{firing}"
    );
    for quiet in ["RstTraceLostEvents", "RstTraceDown", "RstTraceAbsent"] {
        assert!(
            alerts
                .iter()
                .all(|alert| alert["labels"]["alertname"] != quiet),
            "{quiet} is not pending or firing while rst-trace is up and loses nothing: {alerts:?}"
        );
    }
}
