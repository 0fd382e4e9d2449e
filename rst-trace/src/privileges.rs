//! Does this process hold what loading and attaching tracing programs needs, and, once they are
//! attached, giving up everything else: the tracer then runs for days parsing what other users
//! chose (names, packets, HTTP requests on --metrics) and should hold no more than it uses.

use anyhow::{Context as _, bail};
use caps::{CapSet, Capability, CapsHashSet};

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

/// The capabilities a trace keeps once its programs are attached, each with what needs it.
pub const KEPT_AFTER_ATTACH: [(Capability, &str); 4] = [
    (
        Capability::CAP_BPF,
        "bpf() on its maps: folded counts, lost events, stacks, program statistics",
    ),
    (
        Capability::CAP_SYS_ADMIN,
        "setns() into each network namespace to sample listener queues where the kernel refuses the listener iterator",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "/proc/PID/fd and /proc/PID/ns of other processes, to find socket owners and namespaces",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "/proc/PID/fd of other users' processes, cgroups by id, and the container runtimes' state files, for names",
    ),
];

/// One line for `rst-trace check`.
pub fn describe_kept() -> String {
    let kept: Vec<String> = KEPT_AFTER_ATTACH
        .iter()
        .map(|(cap, why)| format!("{cap} ({why})"))
        .collect();
    format!(
        "once attached, keeps only {}; drops every other capability and sets no_new_privs",
        kept.join(", ")
    )
}

/// Drops every capability but [`KEPT_AFTER_ATTACH`] from the effective, permitted, inheritable,
/// ambient and (with CAP_SETPCAP) bounding sets, and sets `no_new_privs`, so that neither this
/// process nor anything it runs can get them back. Capabilities are per thread: call it before
/// starting threads, which inherit the reduced sets.
pub fn drop_after_attach() -> anyhow::Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let keep: CapsHashSet = KEPT_AFTER_ATTACH
        .iter()
        .map(|(cap, _)| *cap)
        .filter(|cap| permitted.contains(cap))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes below.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .with_context(|| format!("dropping {cap} from the bounding set"))?;
            }
        }
    }
    // Kernels before 4.3 have no ambient set; there is then nothing to clear.
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    }
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("reducing the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("reducing the permitted capabilities")?;
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    Ok(())
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
