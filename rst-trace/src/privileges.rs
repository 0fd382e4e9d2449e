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
