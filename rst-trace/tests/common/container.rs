//! A test-built container: a process in its own network and PID namespaces placed in a cgroup
//! scope named the way docker names it (S7 and the as-deployed test).

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{cgroup2_root, netns::TestNetns};

/// A test-built container: busybox nc listening in its own network and PID namespaces, moved
/// into a cgroup scope named as docker names it; stopped so that it never accepts.
pub struct Container {
    pub id: String,
    scope: PathBuf,
    unshare: Child,
    pub listener_pid: u32,
}

impl Container {
    pub fn start(netns: &TestNetns, port: u16) -> Self {
        let id = format!(
            "{:064x}",
            u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15
        );
        let root = cgroup2_root();
        let scope = root.join(format!("system.slice/docker-{id}.scope"));
        fs::create_dir_all(&scope).expect("create the cgroup scope");
        // nsenter joins the test's network namespace (`unshare --net=FILE` would make a new one).
        let unshare = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .args(["unshare", "--pid", "--fork", "--mount-proc"])
            .args(["busybox", "nc", "-l", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) and busybox (cargo xtask setup installs it)");
        // nsenter execs unshare, whose child is the listener: pid 1 of the new PID namespace.
        let listener_pid = wait_for(|| child_of(unshare.id()), "the container's first process");
        fs::write(scope.join("cgroup.procs"), listener_pid.to_string()).expect("join the scope");
        let container = Self {
            id,
            scope,
            unshare,
            listener_pid,
        };
        wait_for(
            || listening(netns, port).then_some(()),
            "the container to listen",
        );
        // The application stops calling accept().
        // SAFETY: kill(2) on a process this test started.
        unsafe { libc::kill(listener_pid as i32, libc::SIGSTOP) };
        container
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: kill(2) on processes this test started.
        unsafe {
            libc::kill(self.listener_pid as i32, libc::SIGKILL);
            libc::kill(self.listener_pid as i32, libc::SIGCONT);
        }
        // unshare --fork reaps the listener and exits with it; kill it only if it lingers.
        let started = Instant::now();
        while matches!(self.unshare.try_wait(), Ok(None)) {
            if started.elapsed() > Duration::from_secs(2) {
                let _ = self.unshare.kill();
                let _ = self.unshare.wait();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = fs::remove_dir(&self.scope);
    }
}

fn child_of(pid: u32) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn listening(netns: &TestNetns, port: u16) -> bool {
    let sample = rst_trace::listeners::sample(&netns.netns()).expect("sample");
    sample.listeners.iter().any(|l| l.local.port() == port)
}

pub fn wait_for<T>(mut probe: impl FnMut() -> Option<T>, what: &str) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
