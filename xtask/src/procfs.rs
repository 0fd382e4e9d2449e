//! A process's memory figures from `/proc/PID/status`, for the bench and the soak.

use std::fs;

use anyhow::Context as _;

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path} has no {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_resident_size_and_its_peak() {
        let rss = status_kib(std::process::id(), "VmRSS").expect("VmRSS");
        let peak = status_kib(std::process::id(), "VmHWM").expect("VmHWM");
        assert!(rss > 0 && peak >= rss, "VmRSS {rss} kB, VmHWM {peak} kB");
        assert!(status_kib(std::process::id(), "VmNothing").is_err());
    }
}
