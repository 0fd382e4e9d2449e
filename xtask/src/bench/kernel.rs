//! What the kernel counts, read around each run: the TCP MIB counters (`/proc/net/snmp`,
//! `/proc/net/netstat`, what `nstat` reads), the run time and run count of each BPF program a
//! tracer process holds (`/proc/PID/fdinfo`, names from `bpftool`), a process's CPU time, and the
//! `kernel.bpf_stats_enabled` switch that makes the kernel count program run time at all.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Host-wide TCP counters (this network namespace), as `Group:Name` -> value.
#[derive(Debug, Clone, Default)]
pub struct TcpCounters(HashMap<String, u64>);

impl TcpCounters {
    pub fn read() -> anyhow::Result<Self> {
        let mut counters = HashMap::new();
        for path in ["/proc/net/snmp", "/proc/net/netstat"] {
            let text =
                fs::read_to_string(path).with_context(|| format!("could not read {path}"))?;
            parse_mib(&text, &mut counters);
        }
        Ok(Self(counters))
    }

    /// How much `name` (`Tcp:OutRsts`, `TcpExt:ListenOverflows`) grew since `earlier`.
    pub fn delta(&self, earlier: &Self, name: &str) -> u64 {
        let now = self.0.get(name).copied().unwrap_or(0);
        now.saturating_sub(earlier.0.get(name).copied().unwrap_or(0))
    }
}

/// `/proc/net/snmp` and `/proc/net/netstat` come in pairs of lines: `Tcp: Name Name ...` then
/// `Tcp: 1 2 ...`.
fn parse_mib(text: &str, out: &mut HashMap<String, u64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((group, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            // Some counters (Tcp:MaxConn) are -1: not a count.
            if let Ok(value) = value.parse::<u64>() {
                out.insert(format!("{group}:{name}"), value);
            }
        }
    }
}

/// One BPF program's counters, as its owner's file descriptor shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramCounters {
    pub id: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The BPF programs process `pid` holds open, by program id. Matching by owner rather than by
/// name keeps other tracers on the host (and several programs of the same name: bpftrace names
/// its program after the tracepoint too) out of the figures.
pub fn programs_of(pid: u32) -> anyhow::Result<Vec<ProgramCounters>> {
    let fd_dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&fd_dir).with_context(|| format!("could not list {fd_dir}"))?;
    let mut programs: Vec<ProgramCounters> = Vec::new();
    for entry in entries.flatten() {
        let is_program = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_program {
            continue;
        }
        let fdinfo = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(entry.file_name());
        // The descriptor may close between listing and reading: skip it.
        let Ok(text) = fs::read_to_string(fdinfo) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(run_time_ns), Some(run_cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        let Ok(id) = u32::try_from(id) else { continue };
        if !programs.iter().any(|p| p.id == id) {
            programs.push(ProgramCounters {
                id,
                run_time_ns,
                run_cnt,
            });
        }
    }
    Ok(programs)
}

/// Program id -> name (at most 15 characters: the kernel truncates), from `bpftool prog show`.
pub fn program_names() -> anyhow::Result<HashMap<u32, String>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .stderr(Stdio::null())
        .output()
        .context("could not run bpftool (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!("`bpftool prog show --json` failed ({})", out.status);
    }
    let programs: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool printed JSON we cannot read")?;
    let mut names = HashMap::new();
    for program in programs.as_array().into_iter().flatten() {
        if let (Some(id), Some(name)) = (program["id"].as_u64(), program["name"].as_str())
            && let Ok(id) = u32::try_from(id)
        {
            names.insert(id, name.to_string());
        }
    }
    Ok(names)
}

/// User plus system CPU seconds of a running process, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_comm = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no command name"))?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime), counted from 1 with the pid and comm before.
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index - 3)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("{path} has no field {index}"))
    };
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) as f64 / ticks_per_second)
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns on `kernel.bpf_stats_enabled` (per-program run time and count) for the bench and puts
/// back the previous value when dropped.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let previous = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("could not read {BPF_STATS}"))?
            .trim()
            .to_string();
        fs::write(BPF_STATS, "1").with_context(|| {
            format!("could not enable kernel.bpf_stats_enabled ({BPF_STATS}); run as root")
        })?;
        Ok(Self { previous })
    }

    pub fn previous(&self) -> &str {
        &self.previous
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(error) = fs::write(BPF_STATS, &self.previous) {
            eprintln!(
                "bench: could not restore kernel.bpf_stats_enabled={} ({error}); set it by hand",
                self.previous
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mib_pairs() {
        let text = "Tcp: RtoAlgorithm MaxConn OutRsts\nTcp: 1 -1 42\n\
                    TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 0 7\n";
        let mut counters = HashMap::new();
        parse_mib(text, &mut counters);
        assert_eq!(counters.get("Tcp:OutRsts"), Some(&42));
        assert_eq!(counters.get("TcpExt:ListenOverflows"), Some(&7));
        assert_eq!(counters.get("Tcp:MaxConn"), None);
        let earlier = TcpCounters(HashMap::from([("Tcp:OutRsts".to_string(), 40)]));
        assert_eq!(TcpCounters(counters).delta(&earlier, "Tcp:OutRsts"), 2);
    }
}
