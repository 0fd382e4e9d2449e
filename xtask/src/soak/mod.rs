//! `cargo xtask soak --minutes M`: rst-trace for M minutes under churn ([`churn`]), with a
//! scraper on `--metrics` every second and `--output` rotated every minute the way logrotate's
//! `copytruncate` does, measuring every minute what must stay flat on a long run: resident
//! memory, open descriptors, BPF map occupancy, CPU, and events reported, lost and folded.
//! Writes SOAK.md and docs/soak.png ([`report`]).
//!
//! Why copytruncate: `--output` is opened once (O_APPEND), so a rename makes rst-trace go on
//! writing the renamed file (the soak checks that once, and says so in the report); copytruncate
//! keeps the inode, and O_APPEND makes the next write land at the new end, with no hole.

mod churn;
mod report;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use churn::{Churn, Counts, Ports};

/// Runs shorter than this cannot judge the target (minute 5 against the last 10 minutes): their
/// report goes under target/soak/ and compares later minutes with the first.
const FULL_RUN_MINUTES: u64 = 15;
/// The minute the target compares with, and how many final minutes it checks.
const BASELINE_MINUTE: usize = 5;
const FINAL_MINUTES: usize = 10;
/// RSS and fds of the final minutes must stay within this share of the baseline minute.
const FLAT_TOLERANCE: f64 = 0.05;

/// One row of the table: what one minute ended with.
#[derive(Debug, Clone, Default)]
pub struct Minute {
    pub minute: usize,
    pub rss_kib: u64,
    pub fds: u64,
    /// CPU seconds rst-trace spent in this minute, in user and in kernel mode.
    pub user_cpu: f64,
    pub system_cpu: f64,
    /// Entries in rst-trace's hash maps, by map name, with their capacity.
    pub maps: BTreeMap<String, (u64, u64)>,
    /// Lines written to --output in this minute, and the events the folded lines among them
    /// stand for.
    pub lines: u64,
    pub folded_lines: u64,
    pub folded_events: u64,
    /// rst_trace_lost_events_total at the end of the minute.
    pub lost: u64,
    /// rst_trace_resets_total + rst_trace_queue_drops_total at the end of the minute.
    pub counted: u64,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    /// Churn operations (connections that end in a reset or a drop, namespaces, cgroups).
    pub operations: u64,
}

/// What the rotation check found.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    /// What a rename of --output did (rst-trace keeps writing the renamed file).
    pub rename: String,
    pub rotations: u64,
    /// Bytes of NUL in the output (holes a truncation left, if writes did not append).
    pub nul_bytes: u64,
    /// Lines that are not whole JSON objects (a line cut by copy-then-truncate).
    pub torn_lines: u64,
    /// Lines left in --output after the last rotation, read once rst-trace has stopped.
    pub tail_lines: u64,
    /// Events by `kind cause` (a folded line counts the events it stands for).
    pub causes: BTreeMap<String, u64>,
    /// Events that named a container, and the network namespaces events came from.
    pub container_events: u64,
    pub namespaces: BTreeSet<u64>,
}

pub struct Outcome {
    pub minutes: Vec<Minute>,
    pub rotation: Rotation,
    /// `rst-trace: N events reported, L lost, F folded into K lines`.
    pub exit_line: Option<String>,
    pub warnings: Vec<String>,
    pub churn_errors: u64,
    pub first_churn_error: Option<String>,
    pub command: String,
    pub ports: [u16; 6],
    pub elapsed: Duration,
}

pub fn run(root: &Path, minutes: u64) -> anyhow::Result<()> {
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let env = crate::setup::run(crate::setup::Purpose::Soak)?;
    crate::require_root("the soak loads BPF programs and creates network namespaces and cgroups")?;
    crate::cargo(
        root,
        &env,
        &["build", "--release", "--package", "rst-trace"],
    )?;
    let binary = root.join("target/release/rst-trace");
    let (report_path, chart_path) = if minutes >= FULL_RUN_MINUTES {
        (root.join("SOAK.md"), root.join("docs/soak.png"))
    } else {
        let dir = root.join("target/soak");
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        eprintln!(
            "soak: a run under {FULL_RUN_MINUTES} minutes cannot judge minute {BASELINE_MINUTE} \
             against the last {FINAL_MINUTES}: the report goes to {}",
            dir.display()
        );
        (dir.join("SOAK.md"), dir.join("soak.png"))
    };
    let outcome = soak(&binary, minutes)?;
    let verdicts = report::verdicts(&outcome);
    report::write(&outcome, &verdicts, &report_path, &chart_path)?;
    eprintln!(
        "soak: wrote {} and {}",
        report_path.display(),
        chart_path.display()
    );
    let failed: Vec<&report::Verdict> = verdicts.iter().filter(|v| !v.ok).collect();
    if !failed.is_empty() {
        let lines: Vec<String> = failed
            .iter()
            .map(|v| format!("{}: {}", v.target, v.found))
            .collect();
        bail!("the soak missed its targets:\n  {}", lines.join("\n  "));
    }
    Ok(())
}

fn soak(binary: &Path, minutes: u64) -> anyhow::Result<Outcome> {
    let scratch = std::env::temp_dir().join(format!("rst-trace-soak-{}", std::process::id()));
    fs::create_dir_all(&scratch)
        .with_context(|| format!("could not create {}", scratch.display()))?;
    let output = scratch.join("events.ndjson");
    let ports = Ports::find()?;
    let metrics_port = free_metrics_port(&ports)?;
    let mut args = vec![
        "--json".to_string(),
        "--quiet".to_string(),
        "--output".to_string(),
        output.display().to_string(),
        "--metrics".to_string(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    for port in ports.all() {
        args.push("--port".to_string());
        args.push(port.to_string());
    }
    let command = format!("rst-trace {}", args.join(" "));
    eprintln!("soak: {command} for {minutes} min");
    let mut tracer = Tracer::start(binary, &args, metrics_port)?;
    let result = drive(&mut tracer, &output, ports, metrics_port, minutes);
    let exit_line = tracer.stop();
    let (minutes_seen, mut rotation, churn_errors, first_churn_error, elapsed) = match result {
        Ok(driven) => driven,
        Err(error) => {
            let _ = fs::remove_dir_all(&scratch);
            return Err(error);
        }
    };
    // What rst-trace wrote after the last rotation, up to its exit.
    let mut tail = Minute::default();
    let tailed = rotate(&output, &mut rotation, &mut tail);
    rotation.rotations -= 1;
    rotation.tail_lines = tail.lines;
    let _ = fs::remove_dir_all(&scratch);
    tailed?;
    let warnings = tracer
        .stderr
        .lock()
        .map(|lines| lines.clone())
        .unwrap_or_default();
    Ok(Outcome {
        minutes: minutes_seen,
        rotation,
        exit_line,
        warnings,
        churn_errors,
        first_churn_error,
        command,
        ports: ports.all(),
        elapsed,
    })
}

type Driven = (Vec<Minute>, Rotation, u64, Option<String>, Duration);

/// Runs the churn in a thread and samples every second until `minutes` have passed.
fn drive(
    tracer: &mut Tracer,
    output: &Path,
    ports: Ports,
    metrics_port: u16,
    minutes: u64,
) -> anyhow::Result<Driven> {
    let cgroup_parent = cgroup2_root()?.join(format!("rst-soak-{}.slice", std::process::id()));
    let mut churn = Churn::new(ports, cgroup_parent)?;
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut rotation = Rotation::default();
    let sampled = thread::scope(|scope| {
        let churning = scope.spawn(|| churn.run(&counts, &stop));
        let sampled = sample(
            tracer,
            output,
            metrics_port,
            minutes,
            &counts,
            &mut rows,
            &mut rotation,
        );
        stop.store(true, Ordering::Relaxed);
        if churning.join().is_err() {
            return Err(anyhow::anyhow!("the churn thread panicked"));
        }
        sampled
    });
    let elapsed = started.elapsed();
    sampled?;
    Ok((
        rows,
        rotation,
        counts.errors.load(Ordering::Relaxed),
        churn.first_error.take(),
        elapsed,
    ))
}

fn sample(
    tracer: &mut Tracer,
    output: &Path,
    metrics_port: u16,
    minutes: u64,
    counts: &Counts,
    rows: &mut Vec<Minute>,
    rotation: &mut Rotation,
) -> anyhow::Result<()> {
    let pid = tracer.child.id();
    let started = Instant::now();
    let mut cpu = cpu_ticks(pid)?;
    let mut minute = Minute {
        minute: 1,
        ..Minute::default()
    };
    let mut operations_before = 0;
    for second in 1..=minutes * 60 {
        let next = started + Duration::from_secs(second);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if let Ok(Some(status)) = tracer.child.try_wait() {
            bail!("rst-trace exited early ({status}) after {second} s");
        }
        match scrape(metrics_port) {
            Ok(text) => {
                minute.scrapes_ok += 1;
                minute.lost = metric_sum(&text, "rst_trace_lost_events_total");
                minute.counted = metric_sum(&text, "rst_trace_resets_total")
                    + metric_sum(&text, "rst_trace_queue_drops_total");
            }
            Err(_) => minute.scrapes_failed += 1,
        }
        if second == 30 {
            rotation.rename = check_rename(output)?;
        }
        if second % 60 != 0 {
            continue;
        }
        let now = cpu_ticks(pid)?;
        minute.user_cpu = (now.0 - cpu.0) / ticks_per_second();
        minute.system_cpu = (now.1 - cpu.1) / ticks_per_second();
        cpu = now;
        minute.rss_kib = crate::procfs::status_kib(pid, "VmRSS")?;
        minute.fds = open_fds(pid)?;
        minute.maps = map_occupancy(pid);
        let operations = counts.operations();
        minute.operations = operations - operations_before;
        operations_before = operations;
        rotate(output, rotation, &mut minute)?;
        eprintln!(
            "soak: minute {}: RSS {} KiB, {} fds, CPU {:.2} s user {:.2} s system, {} lines \
             ({} folded for {} events), {} lost, {} operations",
            minute.minute,
            minute.rss_kib,
            minute.fds,
            minute.user_cpu,
            minute.system_cpu,
            minute.lines,
            minute.folded_lines,
            minute.folded_events,
            minute.lost,
            minute.operations
        );
        let next_minute = Minute {
            minute: minute.minute + 1,
            lost: minute.lost,
            counted: minute.counted,
            ..Minute::default()
        };
        rows.push(std::mem::replace(&mut minute, next_minute));
    }
    Ok(())
}

/// logrotate's copytruncate: copy the file, then truncate it in place; rst-trace keeps its
/// descriptor. The copied part is read for the minute's figures.
fn rotate(output: &Path, rotation: &mut Rotation, minute: &mut Minute) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(output)
        .with_context(|| format!("could not open {}", output.display()))?;
    let mut copy = Vec::new();
    file.read_to_end(&mut copy)
        .with_context(|| format!("could not read {}", output.display()))?;
    file.set_len(0)
        .with_context(|| format!("could not truncate {}", output.display()))?;
    rotation.rotations += 1;
    rotation.nul_bytes += copy.iter().filter(|b| **b == 0).count() as u64;
    for line in copy.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Value>(line) {
            Ok(event) => {
                minute.lines += 1;
                let mut events = 1;
                if let Some(count) = event["folded"]["count"].as_u64() {
                    minute.folded_lines += 1;
                    minute.folded_events += count;
                    events = count;
                }
                let key = format!(
                    "{} {}",
                    event["kind"].as_str().unwrap_or("?"),
                    event["cause"].as_str().unwrap_or("none")
                );
                *rotation.causes.entry(key).or_default() += events;
                if !event["container"].is_null() {
                    rotation.container_events += events;
                }
                if let Some(netns) = event["netns"].as_u64() {
                    rotation.namespaces.insert(netns);
                }
            }
            Err(_) => rotation.torn_lines += 1,
        }
    }
    Ok(())
}

/// Renames --output for two seconds and says where rst-trace wrote meanwhile, then puts it back.
fn check_rename(output: &Path) -> anyhow::Result<String> {
    let moved = output.with_extension("renamed");
    let size = |path: &Path| fs::metadata(path).map(|m| m.len()).ok();
    let before = size(output).unwrap_or(0);
    fs::rename(output, &moved).with_context(|| format!("could not rename {}", output.display()))?;
    thread::sleep(Duration::from_secs(2));
    let after = size(&moved).unwrap_or(0);
    let recreated = output.exists();
    fs::rename(&moved, output).with_context(|| format!("could not rename {}", moved.display()))?;
    Ok(format!(
        "renamed away for 2 s: the renamed file grew from {before} to {after} bytes and the \
         original name was {}: rst-trace keeps writing the file it opened (the old inode), so \
         rotate --output with copytruncate, or restart rst-trace after a rename",
        if recreated {
            "created again"
        } else {
            "not created again"
        }
    ))
}

fn scrape(port: u16) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.") || !response.contains(" 200 ") {
        bail!(
            "metrics answered: {}",
            response.lines().next().unwrap_or("")
        );
    }
    Ok(response)
}

/// The sum of a metric's samples in the exposition text.
fn metric_sum(text: &str, metric: &str) -> u64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

fn free_metrics_port(ports: &Ports) -> anyhow::Result<u16> {
    (22001..23000)
        .filter(|port| !ports.all().contains(port))
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .context("no free port on 127.0.0.1 for the metrics")
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// (utime, stime) in clock ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    // The command name may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |index: usize| -> anyhow::Result<f64> {
        fields
            .get(index - 3)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("{path} has no field {index}"))
    };
    Ok((field(14)?, field(15)?))
}

fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&path)
        .with_context(|| format!("could not list {path}"))?
        .count() as u64)
}

/// BPF map types whose entries come and go (the ones that could grow on a long run).
const HASH_MAP_TYPES: &[u64] = &[
    1,  // hash
    5,  // percpu_hash
    9,  // lru_hash
    10, // lru_percpu_hash
];

/// Entries and capacity of each hash map rst-trace holds, found through its descriptors'
/// fdinfo (`map_id`, `map_type`, `max_entries`) and counted with `bpftool map dump`.
fn map_occupancy(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let mut maps = BTreeMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return maps;
    };
    let mut seen = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().parse().ok())
        };
        let (Some(id), Some(kind), Some(max)) =
            (field("map_id:"), field("map_type:"), field("max_entries:"))
        else {
            continue;
        };
        if !HASH_MAP_TYPES.contains(&kind) || seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let Some((name, count)) = dump_count(id) else {
            continue;
        };
        maps.insert(name, (count, max));
    }
    maps
}

/// A map's name and how many entries `bpftool map dump` lists.
fn dump_count(id: u64) -> Option<(String, u64)> {
    let json = |args: &[&str]| -> Option<Value> {
        let out = Command::new("bpftool")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let id = id.to_string();
    let show = json(&["-j", "map", "show", "id", &id])?;
    let name = show["name"].as_str().unwrap_or("?").to_string();
    let dump = json(&["-j", "map", "dump", "id", &id])?;
    Some((name, dump.as_array()?.len() as u64))
}

fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("could not read mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 mount (/sys/fs/cgroup or /sys/fs/cgroup/unified)")
}

/// rst-trace under the soak, its stderr collected by a thread.
struct Tracer {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Tracer {
    fn start(binary: &Path, args: &[String], metrics_port: u16) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().context("rst-trace's stderr")?;
        let lines = Arc::clone(&stderr);
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        let mut tracer = Self {
            child,
            stderr,
            reader: Some(reader),
        };
        // Attached once it says `tracing ...` (it serves metrics from before loading).
        let started = Instant::now();
        loop {
            thread::sleep(Duration::from_millis(100));
            if let Ok(Some(status)) = tracer.child.try_wait() {
                let said = tracer
                    .stderr
                    .lock()
                    .map(|l| l.join("\n"))
                    .unwrap_or_default();
                bail!("rst-trace exited at start-up ({status}): {said}");
            }
            let attached = tracer
                .stderr
                .lock()
                .is_ok_and(|l| l.iter().any(|line| line.starts_with("rst-trace: tracing ")));
            if attached && scrape(metrics_port).is_ok() {
                return Ok(tracer);
            }
            if started.elapsed() > Duration::from_secs(60) {
                tracer.stop();
                bail!("rst-trace did not serve metrics within 60 s of starting");
            }
        }
    }

    /// SIGINT, then the exit line.
    fn stop(&mut self) -> Option<String> {
        let pid = i32::try_from(self.child.id()).ok()?;
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let lines = self.stderr.lock().ok()?;
        lines
            .iter()
            .rev()
            .find(|line| line.contains(" events reported, "))
            .cloned()
    }
}
