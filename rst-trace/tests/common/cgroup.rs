//! Cgroups the tests make under the cgroup2 root (`/sys/fs/cgroup` or, on hybrid hosts,
//! `/sys/fs/cgroup/unified`), removed when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use super::cgroup2_root;

/// A cgroup of this test, `/rst-trace-test-<tag>-<pid>` below the root; removed when dropped
/// (after its processes have exited).
pub struct TestCgroup {
    dir: PathBuf,
    name: String,
}

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let name = format!("/rst-trace-test-{tag}-{}", std::process::id());
        let dir = cgroup2_root().join(&name[1..]);
        fs::create_dir_all(&dir).expect("create a cgroup");
        Self { dir, name }
    }

    /// Its path from the cgroup2 root, as `--cgroup` takes it and events print it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves process `pid` into it.
    pub fn join(&self, pid: i32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The last process may still be leaving it.
        let started = Instant::now();
        while fs::remove_dir(&self.dir).is_err() && started.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(20));
        }
    }
}
