//! Does this process hold what loading and attaching tracing programs needs?

use anyhow::bail;
use caps::{CapSet, Capability};

/// Fails with a sentence that says what to do when the process can neither load BPF programs nor
/// attach them to tracepoints.
pub fn ensure_can_trace() -> anyhow::Result<()> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    if has(Capability::CAP_SYS_ADMIN) || (has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON))
    {
        return Ok(());
    }
    bail!(
        "rst-trace needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load its kernel \
         programs: run it with sudo (or grant them with \
         `setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep rst-trace`)"
    )
}

/// What this process cannot see in /proc, each with the capability it lacks and what is lost;
/// empty when it sees everything. Root's processes may hold capabilities this one lacks, and
/// reading their namespace links and file tables then takes CAP_SYS_PTRACE; other users'
/// `/proc/PID/fd` also takes CAP_DAC_READ_SEARCH.
pub fn proc_limits() -> Vec<String> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    let mut limits = Vec::new();
    if !has(Capability::CAP_SYS_PTRACE) {
        limits.push(
            "without CAP_SYS_PTRACE the network namespaces of more privileged processes \
             (/proc/PID/ns/net) cannot be read: listener drops there are pinned on a queue by \
             each listener's own counter (sk_drops) rather than the namespace's ListenOverflows \
             and TCPReqQFullDrop"
                .to_string(),
        );
    }
    if !has(Capability::CAP_SYS_PTRACE) || !has(Capability::CAP_DAC_READ_SEARCH) {
        limits.push(
            "without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH the open files of other users' \
             processes (/proc/PID/fd) cannot be read: resets on their connections opened before \
             rst-trace started name no process"
                .to_string(),
        );
    }
    limits
}
