//! Statically linked builds for x86_64 Linux: the release binary (`cargo xtask build` and `run`,
//! which runs on any x86_64 Linux host without shared libraries and can be copied there, or into
//! a VM, as one file) and the integration tests the 6.1 VM runs (`vm_test`).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::setup::BuildEnv;

/// The glibc target, named explicitly so that the static-linking flags below reach only the
/// target's binaries, not build scripts and proc macros (which cannot be static). Cargo puts
/// its outputs under `target/x86_64-unknown-linux-gnu/`.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const STATIC_RUSTFLAGS: (&str, &str) = (
    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    "-C target-feature=+crt-static",
);

/// `cargo build --release` of rst-trace, linked statically; returns the binary
/// (`target/x86_64-unknown-linux-gnu/release/rst-trace`).
pub fn release(root: &Path, env: &BuildEnv) -> anyhow::Result<PathBuf> {
    let artifacts = cargo_artifacts(
        root,
        env,
        &[
            "build",
            "--release",
            "--package",
            "rst-trace",
            "--target",
            TARGET,
        ],
    )?;
    let binary = artifacts
        .iter()
        .find(|a| a.kind == "bin" && a.name == "rst-trace")
        .map(|a| a.executable.clone())
        .context("cargo build reported no rst-trace binary")?;
    require_static(&binary)?;
    Ok(binary)
}

/// An executable cargo built, from its `--message-format=json` output.
pub struct Artifact {
    /// The target's kind: `bin`, `test`, ...
    pub kind: String,
    pub name: String,
    pub executable: PathBuf,
}

/// Runs cargo (`args` must name `--target TARGET`) with static linking and returns the
/// executables it built.
pub fn cargo_artifacts(
    root: &Path,
    env: &BuildEnv,
    args: &[&str],
) -> anyhow::Result<Vec<Artifact>> {
    eprintln!(
        "xtask: {}={:?} cargo {}",
        STATIC_RUSTFLAGS.0,
        STATIC_RUSTFLAGS.1,
        args.join(" ")
    );
    let mut child = Command::new("cargo")
        .args(args)
        // Diagnostics rendered on stderr as usual; stdout carries one JSON message per line.
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .envs(env.vars())
        // Not RUSTFLAGS: rst-trace's build script builds the eBPF object with cargo, which would
        // inherit it; a target-specific variable applies to this target only.
        .env(STATIC_RUSTFLAGS.0, STATIC_RUSTFLAGS.1)
        .stdout(Stdio::piped())
        .spawn()
        .context("could not run cargo")?;
    let mut artifacts = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("could not read cargo's output")?;
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let (Some(executable), Some(name)) = (
                message["executable"].as_str(),
                message["target"]["name"].as_str(),
            ) else {
                continue;
            };
            let kinds = message["target"]["kind"].as_array().into_iter().flatten();
            for kind in kinds.filter_map(Value::as_str) {
                artifacts.push(Artifact {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    executable: PathBuf::from(executable),
                });
            }
        }
    }
    let status = child.wait().context("could not wait for cargo")?;
    if !status.success() {
        bail!(
            "cargo {} failed ({status}): see its errors above",
            args.join(" ")
        );
    }
    Ok(artifacts)
}

/// Fails unless `binary` is a static ELF executable (no program interpreter), which is what runs
/// in a VM without shared libraries, and on any x86_64 Linux host.
pub fn require_static(binary: &Path) -> anyhow::Result<()> {
    const PT_INTERP: u32 = 3;
    let bytes = fs::read(binary).with_context(|| format!("could not read {}", binary.display()))?;
    let field = |offset: usize, len: usize| -> Option<u64> {
        let slice = bytes.get(offset..offset + len)?;
        let mut buf = [0u8; 8];
        buf[..len].copy_from_slice(slice);
        Some(u64::from_le_bytes(buf))
    };
    // ELF64 little-endian: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38.
    let headers = (|| {
        if bytes.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let (offset, size, count) = (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?);
        (0..count)
            .map(|i| field(usize::try_from(offset + i * size).ok()?, 4))
            .collect::<Option<Vec<u64>>>()
    })()
    .with_context(|| format!("{} is not an x86_64 ELF executable", binary.display()))?;
    if headers.contains(&u64::from(PT_INTERP)) {
        bail!(
            "{} is dynamically linked although it was built with {}: check that nothing \
             (a .cargo/config.toml, RUSTFLAGS) overrides the static-linking flags",
            binary.display(),
            STATIC_RUSTFLAGS.1
        );
    }
    Ok(())
}
