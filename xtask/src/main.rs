//! `cargo xtask`: set up a machine, build, run and test rst-trace.
//!
//! Every command first runs `setup` for itself, which installs only what that command needs and
//! is missing, and says what it installs, so that a fresh Debian machine needs nothing but this
//! repository and root, and `run` does not bring the tests' and the bench's programs.
//! `test` runs the tests on the host kernel and then, through `vm-test`, on Debian 11's 5.10 and
//! Debian 12's 6.1 kernels in QEMU.

mod bench;
mod docs;
mod fuzz;
mod gnuplot;
mod loopback;
mod procfs;
mod setup;
mod soak;
mod static_build;
mod vm;
mod vm_test;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, set-up, run and test tasks for rst-trace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the commands need (idempotent; prints what it installs). Every other
    /// command runs this first for itself.
    Setup {
        /// Only what this command needs; without it, what every command needs.
        #[arg(long = "for", value_enum, default_value = "all")]
        purpose: setup::Purpose,
    },
    /// Build the release binary with the kernel programs embedded, statically linked
    /// (target/x86_64-unknown-linux-gnu/release/rst-trace), and print its path.
    Build,
    /// Set up, build the static release binary and run it with ARGS (as root).
    Run {
        /// Arguments for rst-trace, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run formatting and lint checks, unit tests and the integration tests that
    /// load the real programs into the running kernel, then `vm-test` (as root).
    Test {
        /// Extra arguments for `cargo test` (a test name filter, for example); its filters also
        /// choose the VM tests.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build rst-trace and the integration tests statically, and run the scenarios that
    /// must hold on older kernels inside Debian 11's 5.10 and Debian 12's 6.1 kernels under QEMU
    /// (as root).
    VmTest {
        /// Test name filters, after `--` (libtest's: substrings, `--exact`, `--skip NAME`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        filters: Vec<String>,
    },
    /// Set up, build rst-trace and write its man pages and bash, zsh and fish completions into
    /// target/docs/ (man/, completions/), and print how to install them.
    Docs,
    /// Set up, build rst-trace and measure what it costs under reset storms, a queue overflow
    /// and ordinary traffic, against bpftrace and tcpdump; writes BENCHMARKS.md (as root).
    Bench {
        /// One short repetition of everything, checked for output; the report goes to a
        /// temporary directory and no timing is judged (CI's smoke run).
        #[arg(long)]
        quick: bool,
        /// Run only this workload; its report section is printed (BENCHMARKS.md is left alone).
        #[arg(long, value_enum, value_name = "ID")]
        workload: Option<bench::Only>,
        /// The namespaces workload's counts of extra network namespaces, comma-separated
        /// (default 0,100,500; --quick 0,5). The overflow happens in the last one.
        #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
        namespaces: Option<Vec<usize>>,
    },
    /// One rare-reset process of the bench's storm + needles workload, started by `bench`:
    /// makes resets of one kind on 127.0.0.1:PORT for a while and writes down each one.
    #[command(hide = true)]
    BenchNeedle {
        #[arg(value_enum)]
        kind: bench::NeedleKind,
        /// The needle's listener port.
        #[arg(long)]
        port: u16,
        /// How long to make resets, in milliseconds.
        #[arg(long)]
        millis: u64,
        /// Where to write one line per reset: KIND PID CLIENT_PORT SERVER_PORT.
        #[arg(long)]
        out: PathBuf,
    },
    /// Set up and run every cargo-fuzz target (fuzz/) for SECONDS each, with the nightly
    /// toolchain; a crash stops it and leaves its input under fuzz/artifacts/.
    Fuzz {
        /// How long each target runs.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        seconds: u64,
    },
    /// Set up, build rst-trace and run it for MINUTES under churn (processes, namespaces,
    /// cgroups, connections and resets), scraping its metrics and rotating its --output;
    /// writes SOAK.md and docs/soak.png (runs under 15 minutes: target/soak/) (as root).
    Soak {
        /// How long rst-trace runs (a full run: 30).
        #[arg(long, value_name = "MINUTES")]
        minutes: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    let root = workspace_root();
    match task {
        Task::Setup { purpose } => {
            setup::run(purpose)?;
        }
        Task::Build => {
            let env = setup::run(setup::Purpose::Build)?;
            let binary = static_build::release(&root, &env)?;
            eprintln!("xtask: built {} (statically linked)", binary.display());
            // On stdout alone, for scripts: `cp "$(cargo xtask build)" ...`.
            println!("{}", binary.display());
        }
        Task::Run { args } => {
            let env = setup::run(setup::Purpose::Run)?;
            let binary = static_build::release(&root, &env)?;
            require_root("rst-trace loads BPF programs")?;
            eprintln!("xtask: running {}", binary.display());
            let status = Command::new(&binary)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", binary.display()))?;
            if !status.success() {
                bail!("rst-trace exited with {status}");
            }
        }
        Task::Test { args } => {
            let env = setup::run(setup::Purpose::Test)?;
            require_root("the integration tests load BPF programs and build network namespaces")?;
            cargo(&root, &env, &["fmt", "--all", "--check"])?;
            cargo(
                &root,
                &env,
                &["clippy", "--all-targets", "--", "-D", "warnings"],
            )?;
            // The kernel programs only build for the BPF target, with the pinned nightly.
            let nightly = format!("+{}", env.ebpf_toolchain());
            let ebpf_clippy = [
                nightly.as_str(),
                "clippy",
                "--package",
                "rst-trace-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ];
            cargo(&root, &env, &ebpf_clippy)?;
            // Short runs of every fuzz target: a regression in a parser shows here; longer
            // runs are `cargo xtask fuzz`. A filter chooses them only if it names fuzzing.
            if args.is_empty() || args.iter().any(|arg| arg.contains("fuzz")) {
                fuzz::run_all(&root, &env, fuzz::TEST_SECONDS)?;
            }
            let mut test = vec!["test", "--no-fail-fast", "--"];
            test.extend(args.iter().map(String::as_str));
            let host = cargo_test(&root, &env, &test)?;
            // The VM stage runs even when host tests failed: both kernels' results are wanted.
            let vm = vm_test::run(&root, &env, &vm_test::Selection::from_libtest_args(&args));
            let (vm_passed, vm_failed) = match &vm {
                Ok(outcomes) => {
                    let each: Vec<String> = outcomes
                        .iter()
                        .map(|vm| {
                            format!(
                                "VM {} {} passed, {} failed",
                                vm.kernel_release, vm.passed, vm.failed
                            )
                        })
                        .collect();
                    println!(
                        "xtask: host {} passed, {} failed; {}",
                        host.passed,
                        host.failed,
                        each.join("; ")
                    );
                    (
                        outcomes.iter().map(|vm| vm.passed).sum(),
                        outcomes.iter().map(|vm| vm.failed).sum(),
                    )
                }
                Err(_) => (0, 0),
            };
            println!(
                "xtask: {} passed, {} failed",
                host.passed + vm_passed,
                host.failed + vm_failed
            );
            let vm = vm.context("the VM stage could not run its tests")?;
            let vm_succeeded = vm.iter().all(vm_test::Outcome::succeeded);
            match (host.succeeded, vm_succeeded) {
                (true, true) => {}
                (false, true) => bail!("cargo test failed on the host: see the failures above"),
                (true, false) => bail!("tests failed in a VM: see the vm-test lines above"),
                (false, false) => bail!(
                    "tests failed on the host and in a VM: see the failures and the vm-test \
                     lines above"
                ),
            }
        }
        Task::VmTest { filters } => {
            let env = setup::run(setup::Purpose::VmTest)?;
            require_root("the VM tests install packages and load BPF programs in the guest")?;
            let vm = vm_test::run(
                &root,
                &env,
                &vm_test::Selection::from_libtest_args(&filters),
            )?;
            if !vm.iter().all(vm_test::Outcome::succeeded) {
                bail!("tests failed in a VM: see the vm-test lines above");
            }
        }
        Task::Docs => {
            let env = setup::run(setup::Purpose::Docs)?;
            docs::run(&root, &env)?;
        }
        Task::Bench {
            quick,
            workload,
            namespaces,
        } => bench::run(&root, quick, workload, namespaces)?,
        Task::BenchNeedle {
            kind,
            port,
            millis,
            out,
        } => bench::needle(kind, port, std::time::Duration::from_millis(millis), &out)?,
        Task::Fuzz { seconds } => {
            let env = setup::run(setup::Purpose::Fuzz)?;
            fuzz::run_all(&root, &env, seconds)?;
        }
        Task::Soak { minutes } => soak::run(&root, minutes)?,
    }
    Ok(())
}

/// Runs `cargo ARGS` in `root` with the build environment; fails with the command line when cargo does.
fn cargo(root: &Path, env: &setup::BuildEnv, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    // `cargo` through rustup's proxy, so that `+toolchain` works.
    let status = Command::new("cargo")
        .args(args)
        .current_dir(root)
        .envs(env.vars())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// What `cargo test` reported, totalled over every test binary.
struct TestTotals {
    passed: u64,
    failed: u64,
    /// Whether cargo test exited successfully (it also fails on build errors, which no
    /// `test result:` line counts).
    succeeded: bool,
}

/// Runs `cargo test`, echoing its output, and totals every test binary's `test result:` line;
/// the caller prints the total once every stage has run.
fn cargo_test(root: &Path, env: &setup::BuildEnv, args: &[&str]) -> anyhow::Result<TestTotals> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = Command::new("cargo")
        .args(args)
        .current_dir(root)
        .envs(env.vars())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test's output")?;
            println!("{line}");
            if let Some((p, f)) = parse_test_result(&line) {
                passed += p;
                failed += f;
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok(TestTotals {
        passed,
        failed,
        succeeded: status.success(),
    })
}

/// `test result: ok. 30 passed; 0 failed; 0 ignored; ...` -> (30, 0)
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let number_before = |word: &str| -> Option<u64> {
        let end = rest.find(word)?;
        rest[..end]
            .trim_end()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((number_before(" passed")?, number_before(" failed")?))
}

fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run this as root: {why}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::parse_test_result;

    #[test]
    fn totals_cargo_test_result_lines() {
        let line = "test result: ok. 30 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_test_result(line), Some((30, 2)));
        assert_eq!(parse_test_result("test s1 ... ok"), None);
    }
}
