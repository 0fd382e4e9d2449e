//! cgroup v2 ids -> cgroup paths (`/system.slice/nginx.service`). A cgroup id is the inode
//! number of the cgroup's directory in the cgroup2 filesystem, so the resolver walks that tree once
//! and again only when it meets an id it does not know (at most once a second).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

pub struct CgroupResolver {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

impl CgroupResolver {
    /// Finds the cgroup2 mount (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
    /// hybrid ones).
    pub fn new() -> Self {
        let root = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| cgroup2_mount(&text));
        Self::with_root(root)
    }

    pub fn with_root(root: Option<PathBuf>) -> Self {
        Self {
            root,
            paths: HashMap::new(),
            last_scan: None,
        }
    }

    /// The path of cgroup `id` relative to the cgroup2 root, starting with `/`.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        let due = self
            .last_scan
            .is_none_or(|at| at.elapsed() >= RESCAN_INTERVAL);
        if due && let Some(root) = self.root.clone() {
            self.last_scan = Some(Instant::now());
            self.paths.clear();
            scan(&root, &root, &mut self.paths);
        }
        self.paths.get(&id).cloned()
    }
}

impl Default for CgroupResolver {
    fn default() -> Self {
        Self::new()
    }
}

fn scan(root: &Path, dir: &Path, paths: &mut HashMap<u64, String>) {
    let Ok(metadata) = fs::metadata(dir) else {
        return;
    };
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    paths.insert(metadata.ino(), format!("/{}", relative.display()));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            scan(root, &entry.path(), paths);
        }
    }
}

/// The mount point of the cgroup2 filesystem in a `/proc/self/mountinfo` text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      32 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn resolves_directory_inodes_to_paths() {
        let root = std::env::temp_dir().join(format!("rst-trace-cgroup-{}", std::process::id()));
        let leaf = root.join("system.slice/docker-abc.scope");
        fs::create_dir_all(&leaf).unwrap();
        let ino = fs::metadata(&leaf).unwrap().ino();
        let root_ino = fs::metadata(&root).unwrap().ino();
        let mut resolver = CgroupResolver::with_root(Some(root.clone()));
        assert_eq!(
            resolver.path(ino).as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        assert_eq!(resolver.path(root_ino).as_deref(), Some("/"));
        // An unknown id does not trigger another walk within the interval.
        assert_eq!(resolver.path(u64::MAX), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
