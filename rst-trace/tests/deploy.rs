//! deploy/daemonset.yaml: the structure a fleet deployment depends on, checked without a cluster
//! (and without root): host namespaces, capabilities, read-only host mounts, and a metrics port
//! that the arguments, the container port and the scrape annotations agree on.

use std::{fs, path::Path};

use clap::Parser as _;
use rst_trace::cli::Cli;
use serde::Deserialize as _;
use serde_norway::Value;

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of the manifest.
fn documents() -> Vec<Value> {
    let text = deploy_file("daemonset.yaml");
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("daemonset.yaml is valid YAML"))
        .collect()
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
fn daemonset_runs_in_the_hosts_pid_and_network_namespaces_on_every_node() {
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
fn daemonset_namespace_admits_privileged_pods() {
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
fn container_gets_bpf_and_perfmon_and_is_not_privileged() {
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
fn kernel_and_proc_views_are_mounted_read_only_from_the_host() {
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
fn metrics_port_agrees_across_args_container_port_probe_and_scrape_annotations() {
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
fn container_has_resources_and_runs_the_binary_the_dockerfile_installs() {
    let container = container(&daemonset());
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][bound][resource].is_null(),
                "resources.{bound}.{resource}"
            );
        }
    }
    assert!(container["image"].as_str().is_some_and(|i| !i.is_empty()));
    let command = strings(&container["command"]);
    let binary = command.first().copied().expect("command");
    let dockerfile = deploy_file("Dockerfile");
    assert!(
        dockerfile
            .lines()
            .any(|line| line.starts_with("COPY ") && line.ends_with(&format!(" {binary}"))),
        "deploy/Dockerfile installs {binary}"
    );
}
