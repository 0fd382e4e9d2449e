//! Network namespaces for tests, made as `ip netns add` makes them but without iproute2 (the
//! 6.1 VM has only busybox): a thread unshares its network namespace, which is bind-mounted on
//! /run/netns/NAME (so `ip netns exec NAME` and rst-trace's namespace scan find it), and brings
//! `lo` up. Dropping unmounts and removes it (also when an assertion failed). Sockets created by
//! [`TestNetns::run`] live in the namespace.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::AsRawFd as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
    thread,
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};
use socket2::{Domain, Socket, Type};

const RUN_DIR: &str = "/run/netns";

/// The first namespace turns /run/netns into a shared mount point: concurrent first uses race,
/// so namespaces are created one at a time.
static SETUP: Mutex<()> = Mutex::new(());

pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    /// `rst-<tag>-<pid>`.
    pub fn new(tag: &str) -> Self {
        let name = format!("rst-{tag}-{}", std::process::id());
        let _setup = SETUP.lock().unwrap_or_else(PoisonError::into_inner);
        share_run_dir();
        let netns = Self { name };
        let path = netns.path();
        // A namespace left behind by a killed earlier run would make creating the file fail.
        remove(&path);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // Only this thread moves: the test's other threads keep the host's namespace.
                    unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
                    mount(
                        Some("/proc/thread-self/ns/net"),
                        &path,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .unwrap_or_else(|e| {
                        panic!("bind-mount the namespace on {}: {e}", path.display())
                    });
                    loopback_up().expect("bring lo up in the new namespace");
                })
                .join()
                .expect("thread creating the namespace")
        });
        netns
    }

    pub fn path(&self) -> PathBuf {
        Path::new(RUN_DIR).join(&self.name)
    }

    pub fn inode(&self) -> u64 {
        fs::metadata(self.path()).expect("netns file").ino()
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
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs a command inside the namespace with `ip netns exec` and asserts it succeeded. Host
    /// only: the VM's busybox `ip` has no `netns`.
    pub fn exec(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .status()
            .expect("ip (iproute2)");
        assert!(status.success(), "ip netns exec {args:?} failed: {status}");
    }

    pub fn sysctl(&self, name: &str, value: &str) {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        self.run(|| fs::write(&path, value).expect("sysctl"));
    }

    /// A `TcpExt` counter of this namespace (`/proc/net/netstat`).
    pub fn tcp_ext(&self, counter: &str) -> u64 {
        let text = self
            .run(|| fs::read_to_string("/proc/thread-self/net/netstat"))
            .expect("netstat");
        let counters = rst_trace::listeners::parse_netstat(&text).expect("netstat parses");
        match counter {
            "ListenOverflows" => counters.listen_overflows,
            "ListenDrops" => counters.listen_drops,
            "TCPReqQFullDrop" => counters.req_q_full_drop,
            other => panic!("no counter {other} in NetnsCounters"),
        }
    }

    /// A `Tcp` counter of this namespace's `/proc/net/snmp` (`OutRsts`, `ActiveOpens`, ...).
    pub fn tcp(&self, counter: &str) -> u64 {
        let text = self
            .run(|| fs::read_to_string("/proc/thread-self/net/snmp"))
            .expect("snmp");
        // Two `Tcp:` lines: the names, then the values.
        let mut lines = text.lines().filter(|line| line.starts_with("Tcp:"));
        let (names, values) = (
            lines.next().expect("Tcp names"),
            lines.next().expect("Tcp values"),
        );
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == counter)
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or_else(|| panic!("no Tcp counter {counter} in:\n{text}"))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        remove(&self.path());
    }
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so that unmounting a namespace
/// here also unmounts it in mount namespaces made since (`unshare --mount-proc`, `ip netns
/// exec`), which would otherwise keep it alive.
fn share_run_dir() {
    fs::create_dir_all(RUN_DIR).unwrap_or_else(|e| panic!("create {RUN_DIR}: {e}"));
    let share = || {
        mount(
            None::<&str>,
            RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => return,
        // Not a mount point yet: bind it on itself first.
        Err(Errno::EINVAL) => {}
        Err(e) => panic!("make {RUN_DIR} a shared mount: {e}"),
    }
    mount(
        Some(RUN_DIR),
        RUN_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("bind-mount {RUN_DIR} on itself: {e}"));
    share().unwrap_or_else(|e| panic!("make {RUN_DIR} a shared mount: {e}"));
}

/// Unmounts and removes a namespace file, as `ip netns del` does; a missing one is no error.
fn remove(path: &Path) {
    // Until nothing is mounted there any more (EINVAL), or there is no file (ENOENT).
    while umount2(path, MntFlags::MNT_DETACH).is_ok() {}
    let _ = fs::remove_file(path);
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace (`ip link set lo up`).
fn loopback_up() -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data, valid all zeros.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo") {
        *to = *from as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write an ifreq, which outlives the calls;
    // ifru_flags is the union member both use.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
