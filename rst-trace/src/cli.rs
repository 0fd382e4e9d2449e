//! Command-line interface. Flag names are a contract with users' scripts: add, never rename.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::container_names::RuntimeRoots;

#[derive(Debug, Parser)]
#[command(
    name = "rst-trace",
    version,
    about = "Every TCP reset this host sends or receives, with the process, socket and reason",
    long_about = "Every TCP reset this host sends or receives, with the process, socket and the \
                  kernel's reason.\n\nRuns until Ctrl-C (or --duration / --count), then prints how \
                  many events it saw and how many the kernel could not deliver. Needs root, or \
                  CAP_BPF and CAP_PERFMON."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show which event sources this kernel allows, and why any is off.
    Check,
    /// Watch every listener in every network namespace and report those that drop
    /// connections (accept queue or SYN queue full), with the fix.
    Backlog(Box<BacklogArgs>),
    /// Explain a cause: what it means, how it shows up in applications, what to change.
    Explain {
        /// A cause id, as in the `cause` field (`stale_connection_reuse`); omit to list them all.
        cause: Option<String>,
    },
    /// Benchmark aid for `cargo xtask bench`: attach only the minimal reference program to
    /// tcp:tcp_send_reset, count its records until stopped, print the count.
    #[command(hide = true)]
    BenchReference {
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECS", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Write the man pages (DIR/man) and bash, zsh and fish completions (DIR/completions).
    /// For packaging: `cargo xtask docs` runs it.
    #[command(hide = true)]
    Generate {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
}

/// Filters shared by tracing and `backlog`.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only events of this process (repeatable; filtered in the kernel).
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Only events where either end uses this port (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only events of processes with this command name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// Only events of processes in this cgroup or below it (repeatable), e.g.
    /// `/system.slice/nginx.service`.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,

    /// Only events of this container (repeatable): an id prefix, its name (`web`), its
    /// Kubernetes pod name, or `namespace/pod/container` as the text output shows it.
    #[arg(long = "container", value_name = "ID-PREFIX|NAME")]
    pub containers: Vec<String>,

    /// Only events in this network namespace (inode, as `readlink /proc/PID/ns/net`; repeatable).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u64>,
}

/// Where container runtimes keep their state: the names of containers and pods are read there
/// (no API server is asked). Each defaults to the runtime's own default; a directory that does
/// not exist there just means no names from that runtime.
#[derive(Debug, Clone, Default, Args)]
pub struct RuntimeArgs {
    /// Docker's data root (dockerd --data-root) [default: /var/lib/docker]: container names
    /// and images from containers/ID/config.v2.json.
    #[arg(long, value_name = "DIR")]
    pub docker_root: Option<PathBuf>,

    /// containerd's state directory (`state` in config.toml) [default: /run/containerd]:
    /// Kubernetes pod, namespace and container names from the annotations in
    /// io.containerd.runtime.v2.task/NAMESPACE/ID/config.json.
    #[arg(long, value_name = "DIR")]
    pub containerd_state: Option<PathBuf>,

    /// CRI-O's storage root (`root` in storage.conf) [default: /var/lib/containers/storage]:
    /// the same names from overlay-containers/ID/userdata/config.json.
    #[arg(long, value_name = "DIR")]
    pub crio_root: Option<PathBuf>,
}

impl RuntimeArgs {
    /// The roots named here, the runtimes' defaults for the rest. A root given explicitly must
    /// be a directory: a mistyped `--docker-root` would otherwise silently name nothing.
    pub fn roots(&self) -> anyhow::Result<RuntimeRoots> {
        let defaults = RuntimeRoots::default();
        let pick = |given: &Option<PathBuf>, flag: &str, default: PathBuf| match given {
            Some(dir) if !dir.is_dir() => anyhow::bail!(
                "{flag} {}: not a directory (it names where that runtime keeps its state)",
                dir.display()
            ),
            Some(dir) => Ok(dir.clone()),
            None => Ok(default),
        };
        Ok(RuntimeRoots {
            docker: pick(&self.docker_root, "--docker-root", defaults.docker)?,
            containerd_state: pick(
                &self.containerd_state,
                "--containerd-state",
                defaults.containerd_state,
            )?,
            crio: pick(&self.crio_root, "--crio-root", defaults.crio)?,
        })
    }
}

/// `rst-trace backlog`.
#[derive(Debug, Clone, Args)]
pub struct BacklogArgs {
    /// One JSON object per listener that dropped, per interval.
    #[arg(long)]
    pub json: bool,

    /// Seconds between samples of every listener (0.1 to 86400).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_interval)]
    pub interval: Duration,

    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub filters: FilterArgs,

    #[command(flatten)]
    pub runtimes: RuntimeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Print one JSON object per event (NDJSON) instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub filters: FilterArgs,

    #[command(flatten)]
    pub runtimes: RuntimeArgs,

    /// Stop after this many seconds (fractions allowed; 0.001 up to ten years).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Size of the kernel-to-userspace ring buffer in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_buffer_kib)]
    pub ring_buffer_kib: u32,

    /// During a storm, report the first N events of each kind of event (same cause, addresses,
    /// service port and process) every second one by one, and the rest as one line a second
    /// with their count, counted in the kernel. 0: never fold (every event one by one).
    #[arg(long, value_name = "N", default_value_t = crate::fold::DEFAULT_FOLD_AFTER)]
    pub fold_after: u32,

    /// Serve the reset tracepoints with the classic programs (a probe read per field) even where
    /// the kernel takes the BTF ones: what kernels before 5.5, or without BTF tracepoints, run.
    /// For tests and comparisons.
    #[arg(long, hide = true)]
    pub classic_tracepoints: bool,

    /// Instead of one line per event, a table of the top causes by process and service port (the
    /// port listened on or connected to) every SECS seconds (0.1 to 86400; redrawn in place on a
    /// terminal), with every cause that occurred, and the totals at the end.
    #[arg(long, value_name = "SECS", value_parser = parse_interval)]
    pub summary: Option<Duration>,

    /// Record the kernel stack where each reset or drop was generated.
    #[arg(long)]
    pub stack: bool,

    /// Serve Prometheus metrics on ADDR:PORT (a bare PORT or :PORT binds 127.0.0.1; port 0
    /// picks a free one, and the address is printed). Combine with --quiet to print no events.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen_addr)]
    pub metrics: Option<SocketAddr>,

    /// Print no per-event output (with --metrics: metrics only).
    #[arg(long)]
    pub quiet: bool,

    /// Also append every event as NDJSON to FILE (for log shippers).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Also write the packet behind each event to FILE as pcapng (for Wireshark or tshark): the
    /// segment a sent reset answered (IP and TCP headers, up to 64 bytes of payload) or the
    /// packet a queue dropped, with a comment saying the event's kind, cause, process,
    /// container and explanation. Received resets, active resets (SO_LINGER 0, timers) and
    /// folded events have no packet. FILE is created or emptied.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// Colour in the text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When standard output is a terminal and NO_COLOR is not set.
    Auto,
    /// Always, even into a pipe or a file.
    Always,
    /// Never.
    Never,
}

/// `9100` or `:9100` -> 127.0.0.1:9100; `0.0.0.0:9100` and `[::]:9100` as given. Port 0 lets
/// the kernel choose one (rst-trace prints the address it serves on).
fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.strip_prefix(':').unwrap_or(text).parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("`{text}` is not a port or an ADDR:PORT such as 0.0.0.0:9100"))
}

/// How long a run may last: from a millisecond to ten years (a later deadline would overflow
/// the monotonic clock, and a shorter run cannot attach its programs).
const DURATION_SECS: (f64, f64) = (0.001, 10.0 * 365.0 * 86_400.0);
/// Time between summary tables or backlog samples: from a tenth of a second (shorter spins a
/// core) to a day.
const INTERVAL_SECS: (f64, f64) = (0.1, 86_400.0);

/// `--duration`: seconds, fractions allowed, within [`DURATION_SECS`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_seconds(text, DURATION_SECS)
}

/// `--summary` and `backlog --interval`: seconds within [`INTERVAL_SECS`].
fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_seconds(text, INTERVAL_SECS)
}

fn parse_seconds(text: &str, (min, max): (f64, f64)) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{text}` must be a positive number of seconds"));
    }
    if !(min..=max).contains(&secs) {
        return Err(format!(
            "`{text}` seconds is out of range: give from {min} to {max} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ring_buffer_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1024 * 1024 {
        return Err(format!(
            "{kib} KiB: the ring buffer must be a power of two from 4 KiB to 1 GiB"
        ));
    }
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_limits() {
        let cli = Cli::try_parse_from([
            "rst-trace",
            "--json",
            "--pid",
            "10",
            "--pid",
            "11",
            "--port",
            "80",
            "--duration",
            "2.5",
            "--count",
            "3",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert!(cli.trace.json);
        assert_eq!(cli.trace.filters.pids, [10, 11]);
        assert_eq!(cli.trace.filters.ports, [80]);
        assert_eq!(cli.trace.duration, Some(Duration::from_millis(2500)));
        assert_eq!(cli.trace.count, Some(3));
        assert_eq!(cli.trace.ring_buffer_kib, 4096);
    }

    #[test]
    fn attribution_filters() {
        let cli = Cli::try_parse_from([
            "rst-trace",
            "--comm",
            "nginx",
            "--cgroup",
            "/system.slice",
            "--container",
            "4f1c",
            "--netns",
            "4026531840",
        ])
        .unwrap();
        assert_eq!(cli.trace.filters.comms, ["nginx"]);
        assert_eq!(cli.trace.filters.cgroups, ["/system.slice"]);
        assert_eq!(cli.trace.filters.containers, ["4f1c"]);
        assert_eq!(cli.trace.filters.netns, [4026531840]);
        let cli = Cli::try_parse_from(["rst-trace", "explain", "port_closed"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Explain { cause: Some(c) }) if c == "port_closed")
        );
    }

    #[test]
    fn output_modes() {
        let cli = Cli::try_parse_from([
            "rst-trace",
            "--summary",
            "5",
            "--metrics",
            "9100",
            "--quiet",
            "--stack",
            "--output",
            "/tmp/x.ndjson",
            "--color",
            "never",
        ])
        .unwrap();
        assert_eq!(cli.trace.summary, Some(Duration::from_secs(5)));
        assert_eq!(cli.trace.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(cli.trace.quiet && cli.trace.stack);
        assert_eq!(
            cli.trace.output.as_deref(),
            Some(std::path::Path::new("/tmp/x.ndjson"))
        );
        assert_eq!(cli.trace.color, ColorChoice::Never);
        let cli = Cli::try_parse_from(["rst-trace", "--metrics", "[::]:9100"]).unwrap();
        assert_eq!(cli.trace.metrics, Some("[::]:9100".parse().unwrap()));
        assert!(Cli::try_parse_from(["rst-trace", "--metrics", "localhost"]).is_err());
        let cli = Cli::try_parse_from(["rst-trace", "--metrics", ":0"]).unwrap();
        assert_eq!(cli.trace.metrics, Some("127.0.0.1:0".parse().unwrap()));
        assert!(Cli::try_parse_from(["rst-trace", "--color", "sometimes"]).is_err());
    }

    #[test]
    fn check_is_a_subcommand() {
        let cli = Cli::try_parse_from(["rst-trace", "check"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Check)));
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            &["rst-trace", "--pid", "0"][..],
            &["rst-trace", "--pid", "x"],
            &["rst-trace", "--port", "70000"],
            &["rst-trace", "--duration", "-1"],
            &["rst-trace", "--duration", "nan"],
            &["rst-trace", "--count", "0"],
            &["rst-trace", "--ring-buffer-kib", "3000"],
            &["rst-trace", "--duration", "1e300"],
            &["rst-trace", "--duration", "1e19"],
            &["rst-trace", "--duration", "1e-10"],
            &["rst-trace", "--summary", "1e300"],
            &["rst-trace", "--summary", "1e-10"],
            &["rst-trace", "backlog", "--interval", "1e300"],
            &["rst-trace", "backlog", "--interval", "1e-10"],
            &["rst-trace", "backlog", "--duration", "inf"],
            &["rst-trace", "--bogus"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn roots_given_on_the_command_line_must_be_directories() {
        let cli = Cli::try_parse_from([
            "rst-trace",
            "--docker-root",
            "/tmp",
            "--crio-root",
            "/nonexistent/storage",
        ])
        .unwrap();
        let error = cli.trace.runtimes.roots().unwrap_err();
        assert_eq!(
            error.to_string(),
            "--crio-root /nonexistent/storage: not a directory (it names where that runtime keeps its state)"
        );
        let cli = Cli::try_parse_from(["rst-trace", "--docker-root", "/tmp"]).unwrap();
        let roots = cli.trace.runtimes.roots().unwrap();
        assert_eq!(roots.docker, std::path::Path::new("/tmp"));
        assert_eq!(
            roots.containerd_state,
            std::path::Path::new(crate::container_names::DEFAULT_CONTAINERD_STATE)
        );
        assert_eq!(
            roots.crio,
            std::path::Path::new(crate::container_names::DEFAULT_CRIO_ROOT)
        );
    }
}
