//! Command-line interface. Flag names are a contract with users' scripts: add, never rename.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
    /// Explain a cause: what it means, how it shows up in applications, what to change.
    Explain {
        /// A cause id, as in the `cause` field (`stale_connection_reuse`); omit to list them all.
        cause: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Print one JSON object per event (NDJSON) instead of text.
    #[arg(long)]
    pub json: bool,

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

    /// Only events of containers whose id starts with this (repeatable).
    #[arg(long = "container", value_name = "ID-PREFIX")]
    pub containers: Vec<String>,

    /// Only events in this network namespace (inode, as `readlink /proc/PID/ns/net`; repeatable).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u64>,

    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Size of the kernel-to-userspace ring buffer in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_buffer_kib)]
    pub ring_buffer_kib: u32,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{text}` must be a positive number of seconds"));
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
        assert_eq!(cli.trace.pids, [10, 11]);
        assert_eq!(cli.trace.ports, [80]);
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
        assert_eq!(cli.trace.comms, ["nginx"]);
        assert_eq!(cli.trace.cgroups, ["/system.slice"]);
        assert_eq!(cli.trace.containers, ["4f1c"]);
        assert_eq!(cli.trace.netns, [4026531840]);
        let cli = Cli::try_parse_from(["rst-trace", "explain", "port_closed"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Explain { cause: Some(c) }) if c == "port_closed")
        );
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
            &["rst-trace", "--bogus"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }
}
