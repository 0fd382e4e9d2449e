//! Network namespaces for tests: made with `ip netns add`, lo up, deleted on drop (also when an
//! assertion failed). Sockets created by [`TestNetns::run`] live in the namespace.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, PoisonError},
    thread,
};

use nix::sched::{CloneFlags, setns};

/// `ip netns add` mounts /run/netns on first use: concurrent first uses race, so namespaces are
/// created one at a time.
static SETUP: Mutex<()> = Mutex::new(());

pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    /// `rst-<tag>-<pid>`.
    pub fn new(tag: &str) -> Self {
        let name = format!("rst-{tag}-{}", std::process::id());
        let _setup = SETUP.lock().unwrap_or_else(PoisonError::into_inner);
        // A namespace left behind by a killed earlier run would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let netns = Self { name };
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn inode(&self) -> u64 {
        std::fs::metadata(self.path()).expect("netns file").ino()
    }

    pub fn netns(&self) -> rst_trace::listeners::Netns {
        rst_trace::listeners::Netns {
            inode: self.inode(),
            path: self.path(),
        }
    }

    /// Runs `f` in a thread that has entered the namespace: sockets it creates stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("netns file");
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                    f()
                })
                .join()
                .expect("thread in the namespace")
        })
    }

    /// Runs a command inside the namespace and asserts it succeeded.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    pub fn sysctl(&self, name: &str, value: &str) {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        self.run(|| std::fs::write(&path, value).expect("sysctl"));
    }

    /// A `TcpExt` counter of this namespace (`/proc/net/netstat`).
    pub fn tcp_ext(&self, counter: &str) -> u64 {
        let text = self
            .run(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))
            .expect("netstat");
        let counters = rst_trace::listeners::parse_netstat(&text).expect("netstat parses");
        match counter {
            "ListenOverflows" => counters.listen_overflows,
            "ListenDrops" => counters.listen_drops,
            "TCPReqQFullDrop" => counters.req_q_full_drop,
            other => panic!("no counter {other} in NetnsCounters"),
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed: {status}");
}
