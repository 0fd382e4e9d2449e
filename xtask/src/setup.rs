//! Idempotent machine set-up: Debian packages, the pinned nightly toolchain with rust-src, and
//! bpf-linker built against LLVM 22. Each step checks first and prints what it installs.
//!
//! What gets installed depends on the command ([`Purpose`]): `build`, `run` and `docs` need only
//! the toolchain; `test` adds the programs the integration tests and the VM stage drive,
//! `vm-test` the VM's, `bench` the tracers it compares with and its chart; `cargo xtask setup`
//! with no `--for` installs all of it.

use std::{
    env,
    ffi::OsString,
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The nightly that builds the kernel programs with aya-ebpf 0.2 (rustc 1.97, LLVM 22).
const NIGHTLY: &str = "nightly-2026-05-19";
/// The commit date `rustc +nightly --version` prints for that toolchain.
const NIGHTLY_DATE: &str = "2026-05-19";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The xtask command a set-up is for: each installs what that command runs and nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Purpose {
    /// `cargo xtask build`: the toolchain that builds the kernel programs and the binary.
    Build,
    /// `cargo xtask run`: the same as `build` (the binary needs nothing installed to run).
    Run,
    /// `cargo xtask docs`: the same as `build` (the binary renders its own pages).
    Docs,
    /// `cargo xtask test`: `build`, the integration tests' programs and the VM stage's.
    Test,
    /// `cargo xtask vm-test`: `build` and what boots the 5.10 and 6.1 kernels under QEMU.
    VmTest,
    /// `cargo xtask bench`: `build` and the bench's load generator, tracers and chart.
    Bench,
    /// `cargo xtask fuzz`: `build` and cargo-fuzz.
    Fuzz,
    /// `cargo xtask soak`: `build`, what the churn runs, bpftool and the chart.
    Soak,
    /// Everything every command needs.
    All,
}

impl Purpose {
    /// The command, as the user types it.
    fn command(self) -> &'static str {
        match self {
            Purpose::Build => "`cargo xtask build`",
            Purpose::Run => "`cargo xtask run`",
            Purpose::Docs => "`cargo xtask docs`",
            Purpose::Test => "`cargo xtask test`",
            Purpose::VmTest => "`cargo xtask vm-test`",
            Purpose::Bench => "`cargo xtask bench`",
            Purpose::Fuzz => "`cargo xtask fuzz`",
            Purpose::Soak => "`cargo xtask soak`",
            Purpose::All => "every command",
        }
    }

    /// Whether this command uses something `user` needs.
    fn needs(self, user: User) -> bool {
        match self {
            Purpose::Build | Purpose::Run | Purpose::Docs | Purpose::Fuzz => user == User::Build,
            // `test` ends with the VM stage.
            Purpose::Test => matches!(user, User::Build | User::Tests | User::VmTests),
            Purpose::VmTest => matches!(user, User::Build | User::VmTests),
            Purpose::Bench => matches!(user, User::Build | User::Bench),
            Purpose::Soak => matches!(user, User::Build | User::Soak),
            Purpose::All => true,
        }
    }
}

/// Who needs a Debian package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum User {
    /// Building bpf-linker, hence every command.
    Build,
    /// The host's integration tests (`cargo xtask test`).
    Tests,
    /// The VM stage (`cargo xtask vm-test`, and the end of `cargo xtask test`).
    VmTests,
    /// `cargo xtask bench`.
    Bench,
    /// `cargo xtask soak`.
    Soak,
}

impl User {
    /// The xtask commands that install what this user needs.
    fn commands(self) -> &'static [&'static str] {
        match self {
            User::Build => &["every command"],
            User::Tests => &["test"],
            User::VmTests => &["test", "vm-test"],
            User::Bench => &["bench"],
            User::Soak => &["soak"],
        }
    }
}

/// A Debian package, who needs it and what for.
struct Package {
    name: &'static str,
    users: &'static [User],
    why: &'static str,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "llvm-22-dev",
        users: &[User::Build],
        why: "bpf-linker links against LLVM 22",
    },
    Package {
        name: "libclang-22-dev",
        users: &[User::Build],
        why: "bpf-linker's build",
    },
    Package {
        name: "libpolly-22-dev",
        users: &[User::Build],
        why: "bpf-linker's build",
    },
    Package {
        name: "iproute2",
        users: &[User::Tests, User::Soak],
        why: "tests build network namespaces and veth pairs",
    },
    Package {
        name: "util-linux",
        users: &[User::Tests],
        why: "tests drop privileges (setpriv) and unshare namespaces",
    },
    Package {
        name: "nftables",
        users: &[User::Tests],
        why: "tests drop chosen segments in their own namespaces with nft",
    },
    Package {
        name: "nginx",
        users: &[User::Tests],
        why: "S2 and S13 run a real nginx",
    },
    Package {
        name: "hping3",
        users: &[User::Tests, User::Bench],
        why: "raw SYNs: the SYN flood of S12 and the bench's flood at a closed port",
    },
    Package {
        name: "tshark",
        users: &[User::Tests],
        why: "the --pcap test reads rst-trace's pcapng with the real tshark",
    },
    Package {
        name: "prometheus",
        users: &[User::Tests],
        why: "a real Prometheus scrapes rst-trace; promtool tests the alerting rules in deploy/",
    },
    // The static package by name: Debian's dynamically linked `busybox` also provides
    // /bin/busybox, but cannot run in an initramfs without libc.
    Package {
        name: "busybox-static",
        users: &[User::Tests, User::VmTests],
        why: "the test containers' shell and tools, and the VM's init and shell",
    },
    // The tests start a private dockerd of their own (never the system's service) and build
    // their image from a rootfs, since nothing can be pulled.
    Package {
        name: "docker.io",
        users: &[User::Tests],
        why: "S4 and S7 run between real Docker containers",
    },
    Package {
        name: "gcc",
        users: &[User::Tests],
        why: "the test containers' static programs (gcc -static)",
    },
    Package {
        name: "libc6-dev",
        users: &[User::Tests],
        why: "the static C library gcc -static links the test containers' programs with",
    },
    Package {
        name: "qemu-system-x86",
        users: &[User::VmTests],
        why: "the VM stage boots Debian's 5.10 and 6.1 kernels to test on older kernels",
    },
    Package {
        name: "bpftrace",
        users: &[User::Bench],
        why: "the bench compares rst-trace with a bpftrace one-liner",
    },
    Package {
        name: "tcpdump",
        users: &[User::Bench],
        why: "the bench compares rst-trace with tcpdump -w",
    },
    Package {
        name: "bpftool",
        users: &[User::Bench, User::Soak],
        why: "the bench names the BPF programs it times; the soak counts map entries",
    },
    Package {
        name: "gnuplot-nox",
        users: &[User::Bench, User::Soak],
        why: "the bench and the soak draw their charts (PNG)",
    },
];

impl Package {
    fn needed_for(&self, purpose: Purpose) -> bool {
        self.users.iter().any(|user| purpose.needs(*user))
    }
}

/// What the build needs in its environment after set-up.
pub struct BuildEnv {
    ebpf_toolchain: String,
    path: OsString,
}

impl BuildEnv {
    pub fn ebpf_toolchain(&self) -> &str {
        &self.ebpf_toolchain
    }

    pub fn vars(&self) -> Vec<(&'static str, OsString)> {
        vec![
            (
                "RST_TRACE_EBPF_TOOLCHAIN",
                OsString::from(&self.ebpf_toolchain),
            ),
            ("PATH", self.path.clone()),
        ]
    }
}

/// Installs what `purpose` needs and is missing, and returns the build's environment.
pub fn run(purpose: Purpose) -> anyhow::Result<BuildEnv> {
    let path = path_with_cargo_bin();
    install_packages(purpose)?;
    let ebpf_toolchain = nightly_toolchain()?;
    ensure_rust_src(&ebpf_toolchain)?;
    ensure_bpf_linker(&path)?;
    if matches!(purpose, Purpose::Test | Purpose::Fuzz | Purpose::All) {
        ensure_cargo_fuzz(&path)?;
    }
    eprintln!("setup: ready (eBPF toolchain {ebpf_toolchain}, bpf-linker {BPF_LINKER_VERSION})");
    Ok(BuildEnv {
        ebpf_toolchain,
        path,
    })
}

fn install_packages(purpose: Purpose) -> anyhow::Result<()> {
    let (needed, others): (Vec<&Package>, Vec<&Package>) =
        PACKAGES.iter().partition(|p| p.needed_for(purpose));
    if !others.is_empty() {
        // Said once, so that nobody wonders why `run` did not bring qemu.
        let others: Vec<String> = others
            .iter()
            .map(|p| format!("{} ({})", p.name, users(p)))
            .collect();
        eprintln!(
            "setup: for {}; left out (the commands named install them): {}",
            purpose.command(),
            others.join(", ")
        );
    }
    let missing: Vec<&Package> = needed
        .into_iter()
        .filter(|p| !package_installed(p.name))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "setup: Debian packages {} needs: all present",
            purpose.command()
        );
        return Ok(());
    }
    for package in &missing {
        eprintln!(
            "setup: installing Debian package {} ({}; for {})",
            package.name,
            package.why,
            users(package)
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
        bail!(
            "installing Debian packages needs root: run this as root, or install {} yourself",
            names.join(" ")
        );
    }
    run_command(Command::new("apt-get").arg("update").arg("-q"))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|p| p.name))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The commands that use a package, for the messages.
fn users(package: &Package) -> String {
    let mut commands: Vec<&str> = Vec::new();
    for command in package.users.iter().flat_map(|user| user.commands()) {
        if !commands.contains(command) {
            commands.push(command);
        }
    }
    commands.join(", ")
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// The pinned nightly, or `nightly` when that is the same build.
fn nightly_toolchain() -> anyhow::Result<String> {
    if rustc_version(NIGHTLY).is_some() {
        return Ok(NIGHTLY.to_string());
    }
    if rustc_version("nightly").is_some_and(|version| version.contains(NIGHTLY_DATE)) {
        return Ok("nightly".to_string());
    }
    eprintln!(
        "setup: installing Rust toolchain {NIGHTLY} with rust-src (builds the eBPF programs)"
    );
    run_command(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))?;
    Ok(NIGHTLY.to_string())
}

fn rustc_version(toolchain: &str) -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_rust_src(toolchain: &str) -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.starts_with("rust-src"))
    {
        eprintln!("setup: rust-src for {toolchain}: present");
        return Ok(());
    }
    eprintln!("setup: installing rust-src for {toolchain} (-Z build-std=core needs it)");
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        toolchain,
    ]))
}

fn ensure_bpf_linker(path: &OsString) -> anyhow::Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path)
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION));
    if installed {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    eprintln!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} built against LLVM 22 (about a minute)"
    );
    run_command(
        Command::new(env!("CARGO"))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path),
    )
}

/// cargo-fuzz, which builds and runs the fuzz targets (fuzz/) with libFuzzer.
fn ensure_cargo_fuzz(path: &OsString) -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if installed {
        eprintln!("setup: cargo-fuzz: present");
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz (runs the fuzz targets; about two minutes)");
    run_command(
        Command::new(env!("CARGO"))
            .args(["install", "cargo-fuzz", "--locked"])
            .env("PATH", path),
    )
}

/// PATH with cargo's bin directory first, where `cargo install` puts bpf-linker.
fn path_with_cargo_bin() -> OsString {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let mut paths = vec![cargo_home.join("bin")];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).unwrap_or_default()
}

/// Runs an installer with its output on stderr, so that `cargo xtask run -- --json > file` keeps
/// stdout for rst-trace's events.
fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stderr")?;
    let status = command
        .stdout(Stdio::from(stderr))
        .status()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", command);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{PACKAGES, Purpose};

    fn packages_for(purpose: Purpose) -> Vec<&'static str> {
        PACKAGES
            .iter()
            .filter(|p| p.needed_for(purpose))
            .map(|p| p.name)
            .collect()
    }

    #[test]
    fn build_run_and_docs_install_only_what_builds_bpf_linker() {
        for purpose in [Purpose::Build, Purpose::Run, Purpose::Docs] {
            assert_eq!(
                packages_for(purpose),
                ["llvm-22-dev", "libclang-22-dev", "libpolly-22-dev"],
                "{purpose:?}"
            );
        }
    }

    #[test]
    fn test_adds_the_test_programs_and_the_vm_but_no_bench_tracers() {
        let test = packages_for(Purpose::Test);
        for needed in [
            "llvm-22-dev",
            "iproute2",
            "nftables",
            "nginx",
            "hping3",
            "tshark",
            "prometheus",
            "busybox-static",
            "docker.io",
            "gcc",
            "libc6-dev",
            "qemu-system-x86",
        ] {
            assert!(test.contains(&needed), "test needs {needed}: {test:?}");
        }
        for bench_only in ["bpftrace", "tcpdump", "bpftool", "gnuplot-nox"] {
            assert!(!test.contains(&bench_only), "test installs {bench_only}");
        }
        assert_eq!(
            packages_for(Purpose::VmTest),
            [
                "llvm-22-dev",
                "libclang-22-dev",
                "libpolly-22-dev",
                "busybox-static",
                "qemu-system-x86"
            ]
        );
    }

    #[test]
    fn bench_adds_its_tracers_and_setup_alone_installs_everything() {
        assert_eq!(
            packages_for(Purpose::Bench),
            [
                "llvm-22-dev",
                "libclang-22-dev",
                "libpolly-22-dev",
                "hping3",
                "bpftrace",
                "tcpdump",
                "bpftool",
                "gnuplot-nox"
            ]
        );
        assert_eq!(packages_for(Purpose::All).len(), PACKAGES.len());
    }

    #[test]
    fn soak_adds_namespaces_bpftool_and_the_chart_fuzz_only_the_build() {
        assert_eq!(
            packages_for(Purpose::Soak),
            [
                "llvm-22-dev",
                "libclang-22-dev",
                "libpolly-22-dev",
                "iproute2",
                "bpftool",
                "gnuplot-nox"
            ]
        );
        assert_eq!(packages_for(Purpose::Fuzz), packages_for(Purpose::Build));
    }
}
