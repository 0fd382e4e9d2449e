//! `cargo xtask fuzz --seconds N`, and the fuzz stage of `cargo xtask test`: every cargo-fuzz
//! target in fuzz/ for N seconds, with the pinned nightly, debug assertions on (an overflow is a
//! crash too). Each target's corpus lives in fuzz/corpus/<target> (not committed); it also reads
//! the captured tracefs formats and the inputs of crashes already fixed
//! (rst-trace/tests/fixtures/fuzz/<target>/, kept by the unit tests that replay them).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::setup::BuildEnv;

/// Seconds per target in `cargo xtask test`: five targets, 100 s in all, in a suite of ~10 min.
pub const TEST_SECONDS: u64 = 20;

/// The targets, and the directories of inputs each starts from besides its own corpus.
const TARGETS: &[(&str, &[&str])] = &[
    ("decode", &[]),
    (
        "tracefs_format",
        &[
            "rst-trace/tests/fixtures/tracefs/6.18",
            "rst-trace/tests/fixtures/tracefs/6.1",
        ],
    ),
    ("container", &[]),
    ("container_state", &[]),
    ("sock_diag", &[]),
];

/// What one target's run did.
struct Run {
    target: &'static str,
    executions: Option<u64>,
    crash: Option<String>,
}

pub fn run_all(root: &Path, env: &BuildEnv, seconds: u64) -> anyhow::Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let nightly = format!("+{}", env.ebpf_toolchain());
    // One build for every target, so that the time given is spent fuzzing.
    crate::cargo(
        root,
        env,
        &[&nightly, "fuzz", "build", "--debug-assertions"],
    )?;
    let logs = root.join("target/fuzz-logs");
    fs::create_dir_all(&logs).with_context(|| format!("could not create {}", logs.display()))?;
    let mut runs = Vec::new();
    for (target, seeds) in TARGETS {
        let corpus = root.join("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus)
            .with_context(|| format!("could not create {}", corpus.display()))?;
        let mut dirs: Vec<PathBuf> = vec![corpus];
        dirs.extend(seeds.iter().map(|seed| root.join(seed)));
        let regressions = root.join("rst-trace/tests/fixtures/fuzz").join(target);
        if regressions.is_dir() {
            dirs.push(regressions);
        }
        let log = logs.join(format!("{target}.log"));
        eprintln!(
            "xtask: fuzzing {target} for {seconds} s (log: {})",
            log.display()
        );
        let log_file = fs::File::create(&log)
            .with_context(|| format!("could not create {}", log.display()))?;
        let status = Command::new("cargo")
            .args([&nightly, "fuzz", "run", "--debug-assertions", target])
            .args(&dirs)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                // A slow input is a bug too, but not one to wait minutes for.
                "-timeout=10",
                "-rss_limit_mb=2048",
            ])
            .current_dir(root)
            .envs(env.vars())
            .stdout(Stdio::null())
            .stderr(log_file)
            .status()
            .context("running cargo fuzz (`cargo xtask setup --for fuzz` installs it)")?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let run = Run {
            target,
            executions: executions(&text),
            crash: (!status.success()).then(|| crash_summary(&text, &log)),
        };
        eprintln!(
            "xtask: fuzz {target}: {} executions in {seconds} s{}",
            run.executions
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            run.crash
                .as_deref()
                .map(|crash| format!(", CRASH: {crash}"))
                .unwrap_or_default()
        );
        runs.push(run);
    }
    let crashed: Vec<String> = runs
        .iter()
        .filter_map(|run| Some(format!("{}: {}", run.target, run.crash.as_ref()?)))
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing found crashes (fix each, and keep its input in \
             rst-trace/tests/fixtures/fuzz/<target>/ with a unit test that replays it):\n  {}",
            crashed.join("\n  ")
        );
    }
    Ok(())
}

/// libFuzzer's closing line: `Done 123456 runs in 20 second(s)`.
fn executions(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| {
        line.strip_prefix("Done ")?
            .split_once(" runs")?
            .0
            .parse()
            .ok()
    })
}

/// The crash's first line and where its input was saved.
fn crash_summary(log: &str, path: &Path) -> String {
    let what = log
        .lines()
        .find(|line| line.contains("panicked at") || line.contains("ERROR: "))
        .unwrap_or("cargo fuzz failed");
    let input = log
        .lines()
        .find_map(|line| {
            line.split_once("Test unit written to ")?
                .1
                .split_whitespace()
                .next()
        })
        .unwrap_or("(no input saved)");
    format!("{} input {input}; log {}", what.trim(), path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let log = "#1024\tpulse  cov: 10\nDone 123456 runs in 20 second(s)\n";
        assert_eq!(executions(log), Some(123_456));
        let crash = "thread '<unnamed>' panicked at src/layout.rs:3:5:\n\
                     ==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/f/artifacts/decode/'; Test unit written to \
                     /f/artifacts/decode/crash-abc\n";
        let summary = crash_summary(crash, Path::new("x.log"));
        assert!(summary.starts_with("thread '<unnamed>' panicked at src/layout.rs:3:5:"));
        assert!(
            summary.contains("input /f/artifacts/decode/crash-abc"),
            "{summary}"
        );
    }
}
