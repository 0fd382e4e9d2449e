//! cgroup paths -> `Container::from_cgroup`. Any local user can create cgroups (delegated
//! subtrees, systemd user slices) and name them, so the paths are hostile input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rst_trace::container::Container;

fuzz_target!(|data: &[u8]| {
    // The kernel's cgroup names are bytes; rst-trace reads /proc/PID/cgroup as text, lossily.
    let path = String::from_utf8_lossy(data);
    if let Some(container) = Container::from_cgroup(&path) {
        assert!(
            !container.id.is_empty(),
            "a container with no id from {path:?}"
        );
    }
});
