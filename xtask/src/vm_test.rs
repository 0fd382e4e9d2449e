//! `cargo xtask vm-test`: the integration scenarios that matter on older kernels, run inside
//! each of [`vm::KERNELS`] (Debian 11's 5.10 and Debian 12's 6.1), with their results reported
//! on the host.
//!
//! The host kernel (6.18) is not what most production machines run: on 6.1 and 5.10 the reset
//! tracepoints have other layouts and miss some resets, and 5.10 lacks drop reasons and some BPF
//! helpers, so the same test binaries that pass on the host must also run there. They are built
//! statically once (the VM has nothing but busybox), copied into each kernel's initramfs with a
//! static release build of rst-trace at the path the tests were compiled to run, and run one test
//! at a time; the libtest lines on the serial console are the results.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    setup::BuildEnv,
    static_build::{self, TARGET, cargo_artifacts, require_static},
    vm,
};

/// One integration test to run in the VM.
struct VmTest {
    /// The integration test target (`rst-trace/tests/<binary>.rs`).
    binary: &'static str,
    /// The test function's name, matched exactly.
    name: &'static str,
}

/// The scenarios that must hold on every VM kernel (5.10 and 6.1) as well. Tests left out need
/// what the VM lacks (util-linux, iproute2, nginx, hping3) or cover kernel behaviour only 6.10+
/// has.
const VM_TESTS: &[VmTest] = &[
    // S1: a SYN to a closed port. The tcp_send_reset tracepoint of 6.1 and 5.10 does not fire for
    // it (no socket), so this proves the kernel programs catch such resets some other way.
    VmTest {
        binary: "resets",
        name: "s1_connect_to_closed_port_ipv4_is_reset_with_no_socket",
    },
    // S1 over IPv6: 5.10's reset records have no family, so IPv6 ends are told from the IPv6
    // fields alone.
    VmTest {
        binary: "resets",
        name: "s1_connect_to_closed_port_ipv6_is_reset_with_no_socket",
    },
    // A dual-stack socket's IPv4 traffic: recorded v4-mapped, reported as IPv4.
    VmTest {
        binary: "resets",
        name: "ipv4_traffic_on_a_dual_stack_socket_is_reported_as_ipv4",
    },
    // S4: close() with SO_LINGER 0 resets from the closing process; 6.1's tracepoint has the
    // old layout (sport/dport/family, no reason), 5.10's not even the family.
    VmTest {
        binary: "resets",
        name: "s4_linger_zero_close_sends_reset_from_the_closing_process",
    },
    // S4 through the classic programs: the raw tcp_send_reset record in each kernel's layout
    // (BTF programs read the socket instead).
    VmTest {
        binary: "resets",
        name: "s4_classic_tracepoint_programs_report_the_same_fields",
    },
    // S5: close() with unread data resets from the server, again through the old layout.
    VmTest {
        binary: "resets",
        name: "s5_close_with_unread_data_sends_reset_from_the_server",
    },
    // S6: a full accept queue, with the listener named and every drop counted (against the
    // namespace's ListenOverflows), through sock_diag (and 6.1's kfree_skb; 5.10's has no drop
    // reason, so there the listener iterator alone counts them).
    VmTest {
        binary: "queues",
        name: "s6_accept_queue_full_names_the_listener_and_counts_every_drop",
    },
    // S6 with the listener opened after start: found through the listener map, which the owner
    // programs fill from listen() and the map iterator walks.
    VmTest {
        binary: "queues",
        name: "s6_a_listener_opened_after_start_is_found_through_the_listener_map",
    },
    // --pid keeps one process's resets and drops another's: the in-kernel filter.
    VmTest {
        binary: "resets",
        name: "pid_filter_keeps_one_process_and_drops_another",
    },
    // Storms fold in the kernel on 6.1 and 5.10 too, where resets for closed ports come from
    // another program than on 6.18: a refused-connect storm folds, a 5/s key beside it does not, and
    // single events plus folded counts equal the connects made.
    VmTest {
        binary: "storms",
        name: "storm_one_key_past_the_rate_folds_while_a_slow_key_beside_it_does_not",
    },
    // --pcap on 6.1: the refused SYN comes from the kprobe on tcp_v4_send_reset, whose skb
    // argument is the SYN; read back without tshark (the VM has none).
    VmTest {
        binary: "pcap",
        name: "pcap_holds_the_refused_syn_on_any_kernel",
    },
    // A refused connect names the dual-stack listener that closed there: the kernel's record
    // of listeners, written by 6.1's set-state program.
    VmTest {
        binary: "resets",
        name: "a_refused_connect_names_the_listener_that_closed_there",
    },
    // `rst-trace check` loads and attaches every source the kernel offers.
    VmTest {
        binary: "cli",
        name: "check_lists_each_source_and_attaches_it",
    },
];

/// Boot and busybox set-up, then per test: a debug build of the tests starting rst-trace under
/// TCG, and the tests' own waits (60 s to start, 15 s per event) when a test fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const PER_TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Where test binaries go in the guest.
const GUEST_TEST_DIR: &str = "/tests";
/// Printed by the guest script before each test binary, so results are known by binary.
const BINARY_MARKER: &str = "VM-TEST-BINARY=";

/// Which tests to run, chosen the way libtest chooses: substring filters (any of them; all tests
/// when there are none), `--exact`, and `--skip`.
#[derive(Default)]
pub struct Selection {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
}

impl Selection {
    /// Reads the filters out of libtest arguments (`cargo test -- ARGS`), ignoring the options
    /// that only change how tests run.
    pub fn from_libtest_args(args: &[String]) -> Self {
        // libtest options that take a value as the next argument.
        const WITH_VALUE: &[&str] = &[
            "--test-threads",
            "--format",
            "--color",
            "--logfile",
            "--shuffle-seed",
            "-Z",
        ];
        let mut selection = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            if arg == "--skip" {
                selection.skips.extend(args.next().cloned());
            } else if let Some(skip) = arg.strip_prefix("--skip=") {
                selection.skips.push(skip.to_string());
            } else if arg == "--exact" {
                selection.exact = true;
            } else if WITH_VALUE.contains(&arg.as_str()) {
                args.next();
            } else if !arg.starts_with('-') {
                selection.filters.push(arg.clone());
            }
        }
        selection
    }

    fn selects(&self, name: &str) -> bool {
        let matches = |pattern: &String| {
            if self.exact {
                name == pattern
            } else {
                name.contains(pattern.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(matches)
    }
}

/// How the VM stage went on one kernel.
pub struct Outcome {
    /// `uname -r` of the VM's kernel.
    pub kernel_release: String,
    pub passed: u64,
    pub failed: u64,
    /// False when the VM did not report the tests' end (timeout, panic) or a build failed.
    pub finished: bool,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.finished && self.failed == 0
    }
}

/// Runs the selected tests in a VM per kernel of [`vm::KERNELS`] and prints a line per test and
/// a total per kernel. Errors only for what stops the stage before a VM boots (set-up,
/// downloads, builds); a VM that does not finish counts its tests as failed.
pub fn run(root: &Path, env: &BuildEnv, selection: &Selection) -> anyhow::Result<Vec<Outcome>> {
    let started = Instant::now();
    let tests: Vec<&VmTest> = VM_TESTS
        .iter()
        .filter(|t| selection.selects(t.name))
        .collect();
    let cache = target_dir(root).join("vm");
    let mut kernels = Vec::new();
    for kernel in vm::KERNELS {
        kernels.push(vm::prepare(&cache, kernel)?);
    }
    if tests.is_empty() {
        let mut outcomes = Vec::new();
        for assets in kernels {
            println!(
                "vm-test ({}): no VM test matches the filter",
                assets.kernel_release
            );
            outcomes.push(Outcome {
                kernel_release: assets.kernel_release,
                passed: 0,
                failed: 0,
                finished: true,
            });
        }
        return Ok(outcomes);
    }

    let release = static_build::release(root, env)?;
    let builds = build_static_tests(root, env, &tests)?;

    // The release build (smaller, and faster under emulation than a debug build) goes where the
    // tests were compiled to find rst-trace.
    let mut files = vec![(release, builds.tool_path.clone())];
    let mut script = String::from("status=0\necho \"vm-test: kernel $(uname -r)\"\n");
    for (binary, names) in group_by_binary(&tests) {
        let host = builds.tests.get(binary).with_context(|| {
            format!("cargo built no test binary {binary}: check VM_TESTS in xtask/src/vm_test.rs")
        })?;
        let guest = format!("{GUEST_TEST_DIR}/{binary}");
        files.push((host.clone(), guest.clone()));
        script.push_str(&format!(
            "echo {BINARY_MARKER}{binary}\n{guest} --test-threads=1 --exact {} || status=1\n",
            names.join(" ")
        ));
    }
    script.push_str("exit $status\n");

    let outcomes = kernels
        .iter()
        .map(|assets| run_on(assets, &tests, &files, &script))
        .collect();
    eprintln!(
        "vm-test: stage took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(outcomes)
}

/// Boots one kernel with the tests and reads their results from its console.
fn run_on(
    assets: &vm::VmAssets,
    tests: &[&VmTest],
    files: &[(PathBuf, String)],
    script: &str,
) -> Outcome {
    let timeout = BOOT_TIMEOUT + PER_TEST_TIMEOUT * tests.len() as u32;
    eprintln!(
        "vm-test: booting {} with {} tests (at most {timeout:?})",
        assets.kernel_release,
        tests.len()
    );
    let (results, exit_code) = match vm::run(assets, files, script, timeout) {
        Ok(vm_run) => {
            println!("{}", vm_run.console.trim_end());
            eprintln!(
                "vm-test: {}: boot and run took {:.1} s",
                assets.kernel_release,
                vm_run.elapsed.as_secs_f64()
            );
            (parse_console(&vm_run.console), Some(vm_run.exit_code))
        }
        Err(error) => {
            eprintln!("vm-test: {}: {error:#}", assets.kernel_release);
            (BTreeMap::new(), None)
        }
    };

    let release = &assets.kernel_release;
    let (mut passed, mut failed) = (0, 0);
    for test in tests {
        match results.get(&(test.binary.to_string(), test.name.to_string())) {
            Some(result) if result.passed => {
                passed += 1;
                println!("vm-test {release}: ok     {}::{}", test.binary, test.name);
            }
            Some(result) => {
                failed += 1;
                println!("vm-test {release}: FAILED {}::{}", test.binary, test.name);
                for line in summary(&result.message) {
                    println!("vm-test {release}:            {line}");
                }
            }
            None => {
                failed += 1;
                println!(
                    "vm-test {release}: FAILED {}::{} (no result: the VM did not run it to the \
                     end)",
                    test.binary, test.name
                );
            }
        }
    }
    println!("vm-test ({release}): {passed} passed, {failed} failed");
    // A test binary that exits non-zero with every test passed crashed after its tests, or did
    // not start (the script reports both only through its exit code).
    let finished = match exit_code {
        Some(0) => true,
        Some(code) if failed == 0 => {
            eprintln!(
                "vm-test: {release}: the test binaries exited with {code} although no test \
                 failed: see the console above"
            );
            false
        }
        Some(_) => true,
        None => false,
    };
    Outcome {
        kernel_release: assets.kernel_release.clone(),
        passed,
        failed,
        finished,
    }
}

fn group_by_binary<'a>(tests: &[&'a VmTest]) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for test in tests {
        groups.entry(test.binary).or_default().push(test.name);
    }
    groups
}

struct TestBuilds {
    /// Test binary by target name.
    tests: BTreeMap<String, PathBuf>,
    /// Where the test binaries look for rst-trace (`CARGO_BIN_EXE_rst-trace`, compiled in).
    tool_path: String,
}

/// `cargo test --no-run` of the integration test targets the tests live in, linked statically.
fn build_static_tests(
    root: &Path,
    env: &BuildEnv,
    tests: &[&VmTest],
) -> anyhow::Result<TestBuilds> {
    let mut args = vec![
        "test",
        "--no-run",
        "--package",
        "rst-trace",
        "--target",
        TARGET,
    ];
    for binary in group_by_binary(tests).keys() {
        args.extend(["--test", binary]);
    }
    let artifacts = cargo_artifacts(root, env, &args)?;
    let tool_path = artifacts
        .iter()
        .find(|a| a.kind == "bin" && a.name == "rst-trace")
        .map(|a| a.executable.to_string_lossy().into_owned())
        .context("cargo test reported no rst-trace binary, which the integration tests run")?;
    let mut builds = TestBuilds {
        tests: BTreeMap::new(),
        tool_path,
    };
    for artifact in artifacts.into_iter().filter(|a| a.kind == "test") {
        require_static(&artifact.executable)?;
        // The path is compiled in: if cargo's reported path were not the one the tests use, they
        // would fail in the VM with "No such file" and hide every real result.
        let bytes = fs::read(&artifact.executable)
            .with_context(|| format!("could not read {}", artifact.executable.display()))?;
        if !contains(&bytes, builds.tool_path.as_bytes()) {
            bail!(
                "{} does not contain rst-trace's path {}: the tests find rst-trace some other \
                 way now; update how xtask/src/vm_test.rs places it in the VM",
                artifact.executable.display(),
                builds.tool_path
            );
        }
        builds.tests.insert(artifact.name, artifact.executable);
    }
    Ok(builds)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A test's result as libtest printed it.
#[derive(Debug, Default)]
struct TestResult {
    passed: bool,
    /// What it printed when it failed (the panic message).
    message: Vec<String>,
}

/// Reads libtest's output from the console: `test NAME ... ok|FAILED` per test, and for failed
/// tests their captured output between `---- NAME stdout ----` and the next section. Keyed by
/// (test binary, test name), the binary from the script's markers.
fn parse_console(console: &str) -> BTreeMap<(String, String), TestResult> {
    let mut results: BTreeMap<(String, String), TestResult> = BTreeMap::new();
    let mut binary = String::new();
    let mut capturing: Option<(String, String)> = None;
    let mut pending: Option<(String, String)> = None;
    for line in console.lines() {
        if let Some(name) = line.strip_prefix(BINARY_MARKER) {
            binary = name.trim().to_string();
            capturing = None;
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            capturing = Some((binary.clone(), name.to_string()));
        } else if line == "failures:" || line.starts_with("test result: ") {
            capturing = None;
        } else if let Some(key) = &capturing {
            results
                .entry(key.clone())
                .or_default()
                .message
                .push(line.to_string());
        } else if let Some((name, outcome)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            let key = (binary.clone(), name.to_string());
            match outcome.split_whitespace().next() {
                Some(outcome @ ("ok" | "FAILED")) => {
                    results.entry(key).or_default().passed = outcome == "ok";
                }
                // A kernel message printed while the test ran took the rest of the line; the
                // outcome follows on a line of its own.
                _ => pending = Some(key),
            }
        } else if let (Some(key), outcome @ ("ok" | "FAILED")) = (&pending, line.trim()) {
            results.entry(key.clone()).or_default().passed = outcome == "ok";
            pending = None;
        }
    }
    results
}

/// The lines of a failure worth showing in the summary: the panic's location and message, and
/// its end, where `assert_eq!` puts `left:` and `right:`. A failed wait prints every event it
/// saw in between; the full text is in the console output above the summary.
fn summary(message: &[String]) -> Vec<String> {
    const HEAD: usize = 5;
    const TAIL: usize = 3;
    let lines: Vec<&String> = message
        .iter()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("note: run with"))
        .collect();
    if lines.len() <= HEAD + TAIL + 1 {
        return lines.into_iter().cloned().collect();
    }
    let mut shown: Vec<String> = lines[..HEAD].iter().map(|l| l.to_string()).collect();
    shown.push(format!(
        "[{} lines left out: see the console output above]",
        lines.len() - HEAD - TAIL
    ));
    shown.extend(lines[lines.len() - TAIL..].iter().map(|l| l.to_string()));
    shown
}

/// cargo's target directory (CARGO_TARGET_DIR may move it).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_like_libtest() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = Selection::from_libtest_args(&args(&["--nocapture", "--test-threads", "1"]));
        assert!(all.selects("s1_connect"));
        let some = Selection::from_libtest_args(&args(&["s4", "pid", "--skip", "pid_filter"]));
        assert!(some.selects("s4_linger"));
        assert!(!some.selects("s1_connect"));
        assert!(!some.selects("pid_filter_keeps"));
        let exact = Selection::from_libtest_args(&args(&["--exact", "s4"]));
        assert!(!exact.selects("s4_linger"));
    }

    #[test]
    fn reads_results_and_failure_messages_from_the_console() {
        let console = "\
VM-TEST-BINARY=resets
running 2 tests
test s1_closed ... FAILED
test s4_linger ... [   12.3] some kernel message
ok

failures:

---- s1_closed stdout ----

thread 's1_closed' panicked at rst-trace/tests/resets.rs:98:5:
no event for the RST within 15s
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    s1_closed

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 7 filtered out
VM-TEST-BINARY=cli
test check_lists ... ok
";
        let results = parse_console(console);
        let get = |binary: &str, name: &str| &results[&(binary.to_string(), name.to_string())];
        assert!(!get("resets", "s1_closed").passed);
        assert_eq!(
            summary(&get("resets", "s1_closed").message),
            [
                "thread 's1_closed' panicked at rst-trace/tests/resets.rs:98:5:",
                "no event for the RST within 15s"
            ]
        );
        assert!(
            get("resets", "s4_linger").passed,
            "its outcome after a kernel message"
        );
        assert!(get("cli", "check_lists").passed);
    }
}
