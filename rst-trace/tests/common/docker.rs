//! Real Docker containers for the tests: a private dockerd per test (Debian's docker.io, which
//! `cargo xtask setup --for test` installs), an image built from a rootfs (nothing can be pulled:
//! static busybox plus `rsttest`, the static program in `container_prog.c`), and containers run
//! with `--network none` or in another container's network namespace.
//!
//! dockerd is started so that it leaves the host alone: no iptables or ip6tables rules, no
//! `net.ipv4.ip_forward`, no bridge, and its data root, exec root and socket under a scratch
//! directory (rst-trace is pointed at that data root with `--docker-root`). It runs under
//! `docker-init -s` so that exited shims are reaped, and is stopped by pid when the test ends.
//! `/usr/bin/docker` is the package's client (`/usr/local/bin/docker` on these machines is
//! another one).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

const DOCKER: &str = "/usr/bin/docker";
const DOCKER_INIT: &str = "/usr/bin/docker-init";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";
/// The image every test container runs.
pub const IMAGE: &str = "rst-test:1";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A private dockerd and the image, removed with everything in it on drop.
pub struct Dockerd {
    dir: PathBuf,
    init: Child,
    socket: PathBuf,
}

/// A running container.
pub struct Container {
    /// The full id, as `docker inspect` gives it.
    pub id: String,
    pub name: String,
    /// The host pid of its first process (pid 1 inside).
    pub pid: u32,
}

impl Dockerd {
    /// Starts dockerd under a scratch directory named after `test`, waits until it answers, and
    /// builds the image.
    pub fn start(test: &str) -> Self {
        super::require_root();
        for program in [DOCKER, DOCKER_INIT, DOCKERD, BUSYBOX] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: `cargo xtask setup --for test` installs docker.io and \
                 busybox-static"
            );
        }
        let dir = PathBuf::from(format!(
            "/tmp/rst-trace-docker-{test}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch directory");
        let socket = dir.join("docker.sock");
        let log = fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let init = Command::new(DOCKER_INIT)
            .args(["-s", "--", DOCKERD])
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--bridge=none",
            ])
            .arg(format!("--data-root={}", dir.join("data").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-init (cargo xtask setup --for test installs docker.io)");
        let dockerd = Self { dir, init, socket };
        let started = Instant::now();
        while !dockerd.try_docker(&["version"]).0 {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "dockerd did not answer within {READY_TIMEOUT:?}:\n{}",
                dockerd.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        dockerd.build_image();
        dockerd
    }

    /// The data root, for `rst-trace --docker-root`.
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker client against this daemon; fails the test if it fails. Its stdout,
    /// trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.try_docker(args);
        assert!(
            ok,
            "docker {args:?} failed: {err}\ndockerd:\n{}",
            self.log()
        );
        out
    }

    fn try_docker(&self, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(DOCKER)
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run /usr/bin/docker");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        )
    }

    /// `docker run -d --name NAME OPTIONS IMAGE COMMAND...`, and what `docker inspect` says of
    /// it once it runs.
    pub fn run(&self, name: &str, options: &[&str], command: &[&str]) -> Container {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        let id = self.docker(&args);
        let pid: u32 = self
            .docker(&["inspect", "--format", "{{.State.Pid}}", &id])
            .parse()
            .expect("a pid from docker inspect");
        assert!(
            pid > 0,
            "{name} is not running:\n{}",
            self.docker(&["logs", &id])
        );
        let inspected = self.docker(&["inspect", "--format", "{{.Id}}", name]);
        assert_eq!(inspected, id, "docker run printed the full id");
        Container {
            id,
            name: name.to_string(),
            pid,
        }
    }

    /// The rootfs: busybox as /bin/sh and friends, and /rsttest, compiled here with gcc
    /// -static; imported as [`IMAGE`].
    fn build_image(&self) {
        let rootfs = self.dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("bin/sh");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/container_prog.c");
        let status = Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(rootfs.join("rsttest"))
            .arg(&source)
            .status()
            .expect("gcc (cargo xtask setup --for test installs gcc and libc6-dev)");
        assert!(status.success(), "gcc -static {}", source.display());
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let import = Command::new(DOCKER)
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.take().expect("tar's stdout"))
            .stdout(Stdio::null())
            .status()
            .expect("docker import");
        assert!(tar.wait().expect("tar").success(), "tar of the rootfs");
        assert!(import.success(), "docker import:\n{}", self.log());
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first: dockerd would otherwise wait for each to stop when it exits.
        let (_, ids, _) = self.try_docker(&["ps", "-aq"]);
        for id in ids.split_whitespace() {
            let _ = self.try_docker(&["rm", "-f", id]);
        }
        // docker-init -s passes the signal on to dockerd, and exits with it.
        // SAFETY: kill(2) on the docker-init this harness started.
        unsafe { libc::kill(self.init.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while matches!(self.init.try_wait(), Ok(None)) {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = self.init.kill();
                let _ = self.init.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The inode of a process's network namespace.
pub fn netns_of(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("the container's network namespace")
        .ino()
}

/// A `TcpExt` counter of a process's network namespace (`/proc/PID/net/netstat`).
pub fn tcp_ext_of(pid: u32, counter: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/net/netstat")).expect("netstat");
    let mut lines = text.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == counter)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {counter}"))
}

/// Whether something listens on `port` in the network namespace of `pid` (`/proc/PID/net/tcp`,
/// state 0A).
pub fn listens(pid: u32, port: u16) -> bool {
    let text = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let local = format!(":{port:04X}");
    text.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1).is_some_and(|l| l.ends_with(&local)) && fields.get(3) == Some(&"0A")
    })
}
