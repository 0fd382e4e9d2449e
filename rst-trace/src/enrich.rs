//! Enrichment: ids the kernel gives, turned into names people use.
//!
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

use crate::decoded::Task;

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
        Self::with_root(cgroup2_root())
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

/// The cgroup v2 path of a running process, from `/proc/PID/cgroup` (`0::/path`).
pub fn process_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string)
}

/// Socket inode -> the process holding a file for it, from `/proc/*/fd`: the owner of sockets
/// the kernel programs never saw being set up (created before rst-trace started, or passed
/// between processes). The walk is repeated on a miss at most every [`SOCKET_RESCAN_INTERVAL`].
#[derive(Default)]
pub struct SocketHolders {
    holders: HashMap<u64, Task>,
    last_scan: Option<Instant>,
}

const SOCKET_RESCAN_INTERVAL: Duration = Duration::from_secs(2);

impl SocketHolders {
    pub fn holder(&mut self, inode: u64) -> Option<Task> {
        if !self.holders.contains_key(&inode)
            && self
                .last_scan
                .is_none_or(|at| at.elapsed() >= SOCKET_RESCAN_INTERVAL)
        {
            self.last_scan = Some(Instant::now());
            self.holders = scan_socket_holders();
        }
        self.holders.get(&inode).cloned()
    }
}

fn scan_socket_holders() -> HashMap<u64, Task> {
    let mut holders = HashMap::new();
    let Ok(processes) = fs::read_dir("/proc") else {
        return holders;
    };
    for entry in processes.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target))
            else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| {
                // Bytes, not a String: a name that is not UTF-8 is still a name.
                fs::read(entry.path().join("comm"))
                    .map(|c| crate::escape::comm_from_bytes(c.strip_suffix(b"\n").unwrap_or(&c)))
                    .unwrap_or_default()
            });
            // The first process found keeps it: a forked child sharing the socket is rarer than
            // the parent that created it.
            holders.entry(inode).or_insert_with(|| Task {
                pid,
                tid: pid,
                comm: comm.clone(),
                cgroup_id: 0,
                ns_pid: None,
            });
        }
    }
    holders
}

/// `socket:[12345]` -> 12345
fn socket_inode(target: &Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
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
/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| cgroup2_mount(&text))
}

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
    fn finds_the_process_holding_a_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .unwrap()
        .ino();
        let holder = SocketHolders::default()
            .holder(inode)
            .expect("our own socket");
        assert_eq!(holder.pid, std::process::id());
        assert_eq!(socket_inode(Path::new("socket:[42]")), Some(42));
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
        assert!(process_cgroup(std::process::id()).is_some_and(|path| path.starts_with('/')));
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
