//! `cargo xtask docs`: man pages and shell completions in `target/docs/`.
//!
//! xtask does not link the rst-trace crate (its build script compiles the kernel programs with
//! the toolchain `setup` installs), so the pages are rendered by the built binary itself, through
//! its hidden `rst-trace generate DIR`.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::setup::BuildEnv;

/// Builds rst-trace and writes `target/docs/man/*.1` and `target/docs/completions/*`.
pub fn run(root: &Path, env: &BuildEnv) -> anyhow::Result<()> {
    // A debug build: the pages come from the clap definitions, which optimisation does not touch.
    crate::cargo(root, env, &["build", "--package", "rst-trace"])?;
    let binary = root.join("target/debug/rst-trace");
    let docs = root.join("target/docs");
    // Start clean: a page of a subcommand that no longer exists must not linger.
    for dir in ["man", "completions"] {
        let dir = docs.join(dir);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    eprintln!("xtask: {} generate {}", binary.display(), docs.display());
    let output = Command::new(&binary)
        .arg("generate")
        .arg(&docs)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "rst-trace generate failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let written = String::from_utf8_lossy(&output.stdout);
    for path in written.lines() {
        println!("xtask: wrote {path}");
    }
    let (man, completions) = (docs.join("man"), docs.join("completions"));
    println!(
        "\nMan pages in {man}, shell completions in {completions}.\n\
         Read one without installing: man -l {man}/rst-trace.1\n\
         Install them (as root):\n  \
         install -Dm644 -t /usr/local/share/man/man1 {man}/*.1 && mandb -q\n  \
         install -Dm644 {completions}/rst-trace.bash \
         /usr/local/share/bash-completion/completions/rst-trace\n  \
         install -Dm644 -t /usr/local/share/zsh/site-functions {completions}/_rst-trace\n  \
         install -Dm644 -t /usr/local/share/fish/vendor_completions.d \
         {completions}/rst-trace.fish",
        man = man.display(),
        completions = completions.display(),
    );
    Ok(())
}
