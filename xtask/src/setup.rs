//! Idempotent machine set-up: Debian packages, the pinned nightly toolchain with rust-src, and
//! bpf-linker built against LLVM 22. Each step checks first and prints what it installs.

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

/// Debian packages, and what needs them.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libclang-22-dev", "bpf-linker's build"),
    ("libpolly-22-dev", "bpf-linker's build"),
    ("iproute2", "tests build network namespaces"),
    (
        "util-linux",
        "tests drop privileges (setpriv) and unshare namespaces",
    ),
    (
        "qemu-system-x86",
        "vm-test boots Debian's 6.1 kernel to test on an older kernel",
    ),
    // The static package by name: Debian's dynamically linked `busybox` also provides
    // /bin/busybox, but cannot run in an initramfs without libc.
    ("busybox-static", "vm-test's init and shell in the VM"),
    (
        "prometheus",
        "the metrics test scrapes rst-trace with a real Prometheus",
    ),
    ("hping3", "the bench's SYN flood at a closed port"),
    (
        "bpftrace",
        "the bench compares rst-trace with a bpftrace one-liner",
    ),
    ("tcpdump", "the bench compares rst-trace with tcpdump -w"),
    ("bpftool", "the bench names the BPF programs it times"),
    ("gnuplot-nox", "the bench draws its chart (PNG)"),
];

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

pub fn run() -> anyhow::Result<BuildEnv> {
    let path = path_with_cargo_bin();
    install_packages()?;
    let ebpf_toolchain = nightly_toolchain()?;
    ensure_rust_src(&ebpf_toolchain)?;
    ensure_bpf_linker(&path)?;
    eprintln!("setup: ready (eBPF toolchain {ebpf_toolchain}, bpf-linker {BPF_LINKER_VERSION})");
    Ok(BuildEnv {
        ebpf_toolchain,
        path,
    })
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES
        .iter()
        .filter(|(name, _)| !package_installed(name))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages: all present");
        return Ok(());
    }
    for (name, why) in &missing {
        eprintln!("setup: installing Debian package {name} ({why})");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("installing Debian packages needs root");
    }
    run_command(Command::new("apt-get").arg("update").arg("-q"))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(name, _)| name))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
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
