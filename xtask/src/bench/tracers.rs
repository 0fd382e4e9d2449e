//! The tracers the bench compares, each started as its own process: rst-trace in three output
//! modes, the reference program (`rst-trace bench-reference`), a bpftrace one-liner and
//! `tcpdump -w`. A tracer counts as started when it says so (or, for bpftrace, when its program
//! is loaded after "Attaching"); it is stopped with SIGINT, and its CPU time and peak RSS come
//! from wait4(2).

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{kernel, workloads::Workload};

/// How long a tracer may take to start before the run fails (bpftrace compiles with LLVM).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tracer may take to exit after SIGINT before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// bpftrace prints "Attaching 1 probe..." just before it attaches: a margin after that line.
const BPFTRACE_ATTACH_MARGIN: Duration = Duration::from_millis(200);

/// The bpftrace program: count resets sent, by the kernel's reason number.
pub const BPFTRACE_PROGRAM: &str =
    "tracepoint:tcp:tcp_send_reset { @resets[args->reason] = count(); }";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    NoTracer,
    Json,
    Summary,
    Metrics,
    /// The same three with `--fold-after 0` (every event one by one, as before folding), so
    /// that what folding gains shows side by side.
    JsonNoFold,
    SummaryNoFold,
    MetricsNoFold,
    Bpftrace,
    Tcpdump,
    Reference,
}

impl Mode {
    pub const ALL: [Self; 10] = [
        Self::NoTracer,
        Self::Json,
        Self::Summary,
        Self::Metrics,
        Self::JsonNoFold,
        Self::SummaryNoFold,
        Self::MetricsNoFold,
        Self::Bpftrace,
        Self::Tcpdump,
        Self::Reference,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::NoTracer => "none",
            Self::Json => "json",
            Self::Summary => "summary",
            Self::Metrics => "metrics",
            Self::JsonNoFold => "json-f0",
            Self::SummaryNoFold => "summary-f0",
            Self::MetricsNoFold => "metrics-f0",
            Self::Bpftrace => "bpftrace",
            Self::Tcpdump => "tcpdump",
            Self::Reference => "reference",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::NoTracer => "no tracer",
            Self::Json => "rst-trace --json > /dev/null",
            Self::Summary => "rst-trace --summary",
            Self::Metrics => "rst-trace --metrics --quiet",
            Self::JsonNoFold => "rst-trace --json --fold-after 0 > /dev/null",
            Self::SummaryNoFold => "rst-trace --summary --fold-after 0",
            Self::MetricsNoFold => "rst-trace --metrics --quiet --fold-after 0",
            Self::Bpftrace => "bpftrace one-liner",
            Self::Tcpdump => "tcpdump -w (RST filter)",
            Self::Reference => "reference program",
        }
    }

    /// The label as the mode runs on `workload` (where rst-trace's JSON is kept in a file).
    pub fn label_on(self, workload: Workload) -> String {
        if self.keeps_json(workload) {
            self.label().replace("> /dev/null", "> FILE")
        } else {
            self.label().to_string()
        }
    }

    pub fn is_rst_trace(self) -> bool {
        matches!(
            self,
            Self::Json
                | Self::Summary
                | Self::Metrics
                | Self::JsonNoFold
                | Self::SummaryNoFold
                | Self::MetricsNoFold
        )
    }

    pub fn folds(self) -> bool {
        !matches!(
            self,
            Self::JsonNoFold | Self::SummaryNoFold | Self::MetricsNoFold
        )
    }

    /// The same output mode with folding on (itself for modes that fold).
    pub fn folding(self) -> Self {
        match self {
            Self::JsonNoFold => Self::Json,
            Self::SummaryNoFold => Self::Summary,
            Self::MetricsNoFold => Self::Metrics,
            other => other,
        }
    }

    /// The reference program only makes sense where tcp_send_reset fires; the `--fold-after 0`
    /// rows are for the storms (the refused storm, and JSON beside the needles). The storm +
    /// needles workload is about rst-trace's JSON: tcpdump is part of its load.
    pub fn applies_to(self, workload: Workload) -> bool {
        match workload {
            Workload::StormNeedles => {
                matches!(self, Self::NoTracer | Self::Json | Self::JsonNoFold)
            }
            Workload::RefusedStorm => true,
            _ => self.folds() && (self != Self::Reference || workload.sends_resets()),
        }
    }

    /// Whether rst-trace's JSON is kept in a file (to be matched against the capture) rather
    /// than thrown away.
    fn keeps_json(self, workload: Workload) -> bool {
        workload == Workload::StormNeedles && matches!(self, Self::Json | Self::JsonNoFold)
    }

    /// The exact command line, for the report (None: no tracer).
    pub fn command_line(self, setup: &Setup, workload: Workload) -> Option<String> {
        let (program, args) = self.argv(setup, workload)?;
        let mut line = vec![program];
        line.extend(args.iter().map(|arg| shell_quote(arg)));
        let redirect = match self {
            Self::Json | Self::JsonNoFold if self.keeps_json(workload) => " > FILE",
            Self::Json | Self::Metrics | Self::JsonNoFold | Self::MetricsNoFold => " > /dev/null",
            Self::Summary | Self::SummaryNoFold | Self::Bpftrace => " > FILE",
            _ => "",
        };
        Some(format!("{}{redirect}", line.join(" ")))
    }

    fn argv(self, setup: &Setup, workload: Workload) -> Option<(String, Vec<String>)> {
        let rst_trace = || "rst-trace".to_string();
        let mut filters = Vec::new();
        for port in workload.ports(setup) {
            filters.push("--port".to_string());
            filters.push(port.to_string());
        }
        if !self.folds() {
            filters.push("--fold-after".to_string());
            filters.push("0".to_string());
        }
        let with_filters = |args: &[&str]| {
            let mut all: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
            all.extend(filters.iter().cloned());
            Some((rst_trace(), all))
        };
        let port = setup.port.to_string();
        let args: Vec<&str> = match self {
            Self::NoTracer => return None,
            Self::Json | Self::JsonNoFold => return with_filters(&["--json"]),
            Self::Summary | Self::SummaryNoFold => return with_filters(&["--summary", "2"]),
            Self::Metrics | Self::MetricsNoFold => {
                let addr = setup.metrics_addr().to_string();
                return with_filters(&["--metrics", &addr, "--quiet"]);
            }
            Self::Reference => vec!["bench-reference"],
            Self::Bpftrace => {
                return Some((
                    "bpftrace".to_string(),
                    vec!["-e".to_string(), BPFTRACE_PROGRAM.to_string()],
                ));
            }
            Self::Tcpdump => {
                return Some((
                    "tcpdump".to_string(),
                    vec![
                        "-i".to_string(),
                        "lo".to_string(),
                        "-n".to_string(),
                        "-w".to_string(),
                        "FILE".to_string(),
                        format!("tcp[tcpflags] & tcp-rst != 0 and port {port}"),
                    ],
                ));
            }
        };
        Some((rst_trace(), args.into_iter().map(String::from).collect()))
    }
}

pub fn shell_quote(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{arg}'")
    }
}

/// What every tracer of a bench shares.
pub struct Setup {
    pub rst_trace: PathBuf,
    /// The workloads' port: closed, or their listener's.
    pub port: u16,
    pub metrics_port: u16,
    /// The needles' listener ports (StormNeedles), in the order of `NeedleKind::ALL`.
    pub needle_ports: [u16; 4],
    /// This xtask binary, which the needles run as (`bench-needle`).
    pub xtask: PathBuf,
    /// Where tracers write files (summary tables, bpftrace's maps, tcpdump's capture).
    pub scratch: PathBuf,
}

impl Setup {
    fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }
}

/// A started tracer.
pub struct Running {
    mode: Mode,
    child: Child,
    pid: u32,
    pub startup: Duration,
    cpu_at_ready: f64,
    stderr: JoinHandle<Vec<String>>,
    stdout_path: Option<PathBuf>,
    pcap_path: Option<PathBuf>,
}

/// A stopped tracer.
pub struct Finished {
    pub startup: Duration,
    /// CPU seconds (user + system) from "started" to exit: start-up work is left out.
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    /// "exit 0", "exit 1", "signal 9".
    pub exit: String,
    pub exited_cleanly: bool,
    pub stderr: Vec<String>,
    /// What it wrote to its stdout file (summary tables, bpftrace's maps).
    pub stdout: String,
    pub pcap_bytes: u64,
}

/// Starts the tracer for `mode` and waits until it traces (None: no tracer).
pub fn start(mode: Mode, setup: &Setup, workload: Workload) -> anyhow::Result<Option<Running>> {
    let Some((program, mut args)) = mode.argv(setup, workload) else {
        return Ok(None);
    };
    let program = if program == "rst-trace" {
        setup.rst_trace.clone()
    } else {
        PathBuf::from(program)
    };
    let file = |name: &str| setup.scratch.join(format!("{}.{name}", mode.id()));
    let pcap_path = (mode == Mode::Tcpdump).then(|| file("pcap"));
    if let Some(pcap) = &pcap_path {
        for arg in args.iter_mut().filter(|arg| *arg == "FILE") {
            *arg = pcap.display().to_string();
        }
    }
    let stdout_path = (matches!(mode, Mode::Summary | Mode::SummaryNoFold | Mode::Bpftrace)
        || mode.keeps_json(workload))
    .then(|| file("stdout"));
    let stdout = match &stdout_path {
        Some(path) => Stdio::from(
            File::create(path).with_context(|| format!("could not create {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let spawned = Instant::now();
    let mut child = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {}", program.display()))?;
    let pid = child.id();
    let (lines, stderr) = read_lines(child.stderr.take());
    let ready = match mode {
        Mode::Bpftrace => wait_for_bpftrace(pid, stdout_path.as_deref(), &lines),
        _ => wait_for_line(&lines, |line| match mode {
            Mode::Reference => line.starts_with("rst-trace: bench-reference: tracing"),
            Mode::Tcpdump => line.contains("listening on"),
            _ => line.starts_with("rst-trace: tracing "),
        }),
    };
    match ready {
        Ok(at) => {
            let startup = at.saturating_duration_since(spawned);
            let cpu_at_ready = kernel::cpu_seconds(pid)?;
            if mode == Mode::Bpftrace {
                thread::sleep(BPFTRACE_ATTACH_MARGIN);
            }
            Ok(Some(Running {
                mode,
                child,
                pid,
                startup,
                cpu_at_ready,
                stderr,
                stdout_path,
                pcap_path,
            }))
        }
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            let said = stderr.join().unwrap_or_default();
            bail!(
                "{} did not start: {error:#}; it said: {}",
                mode.label(),
                said.join(" | ")
            )
        }
    }
}

/// Reads a child's stderr on a thread: every line goes to the channel as it arrives (with when)
/// and into the list the thread returns at EOF.
pub(super) fn read_lines(
    stderr: Option<std::process::ChildStderr>,
) -> (mpsc::Receiver<(Instant, String)>, JoinHandle<Vec<String>>) {
    let (sender, receiver) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut all = Vec::new();
        let Some(stderr) = stderr else {
            return all;
        };
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = sender.send((Instant::now(), line.clone()));
            all.push(line);
        }
        all
    });
    (receiver, handle)
}

pub(super) fn wait_for_line(
    lines: &mpsc::Receiver<(Instant, String)>,
    ready: impl Fn(&str) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((at, line)) if ready(&line) => return Ok(at),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("no sign of tracing after {} s", START_TIMEOUT.as_secs())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("it exited"),
        }
    }
}

/// bpftrace says "Attaching 1 probe..." on stdout; it is ready once that is written and its
/// program is loaded.
fn wait_for_bpftrace(
    pid: u32,
    stdout: Option<&Path>,
    lines: &mpsc::Receiver<(Instant, String)>,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut stderr_open = true;
    while Instant::now() < deadline {
        let attaching = stdout
            .and_then(|path| fs::read_to_string(path).ok())
            .is_some_and(|text| text.contains("Attaching"));
        if attaching && kernel::programs_of(pid).is_ok_and(|programs| !programs.is_empty()) {
            return Ok(Instant::now());
        }
        // bpftrace's stderr carries only warnings; its end means bpftrace exited.
        while stderr_open {
            match lines.try_recv() {
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => stderr_open = false,
            }
        }
        if !stderr_open {
            bail!("it exited");
        }
        thread::sleep(Duration::from_millis(5));
    }
    bail!("no sign of tracing after {} s", START_TIMEOUT.as_secs())
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops the tracer with SIGINT (as Ctrl-C would) and collects what it did.
    pub fn stop(self) -> anyhow::Result<Finished> {
        let pid = libc::pid_t::try_from(self.pid).context("a pid does not fit pid_t")?;
        // The tracer's own high-water mark, read before it exits. wait4's ru_maxrss is not
        // it: a child forked from the bench starts with the bench's resident size (carried over
        // exec), which grows as the bench reads captures back.
        let peak_rss = crate::procfs::status_kib(self.pid, "VmHWM").ok();
        // SAFETY: kill and wait4 on a child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: valid pointers to locals.
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                break;
            }
            if reaped < 0 {
                bail!(
                    "waiting for {} failed: {}",
                    self.mode.label(),
                    std::io::Error::last_os_error()
                );
            }
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(5));
        }
        // The child is reaped: dropping `Child` now only closes our ends of its pipes.
        drop(self.child);
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let cpu_total = seconds(usage.ru_utime) + seconds(usage.ru_stime);
        let (exit, exited_cleanly) = if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            (format!("exit {code}"), code == 0)
        } else if libc::WIFSIGNALED(status) {
            (format!("signal {}", libc::WTERMSIG(status)), false)
        } else {
            (format!("status {status}"), false)
        };
        let stderr = self.stderr.join().unwrap_or_default();
        let stdout = self
            .stdout_path
            .as_ref()
            .and_then(|path| fs::read_to_string(path).ok())
            .unwrap_or_default();
        let pcap_bytes = self
            .pcap_path
            .as_ref()
            .and_then(|path| fs::metadata(path).ok())
            .map_or(0, |meta| meta.len());
        for path in self.stdout_path.iter().chain(&self.pcap_path) {
            let _ = fs::remove_file(path);
        }
        Ok(Finished {
            startup: self.startup,
            cpu_seconds: (cpu_total - self.cpu_at_ready).max(0.0),
            peak_rss_kib: peak_rss.unwrap_or_else(|| u64::try_from(usage.ru_maxrss).unwrap_or(0)),
            exit,
            exited_cleanly,
            stderr,
            stdout,
            pcap_bytes,
        })
    }
}

/// rst-trace's Prometheus text, fetched over plain HTTP/1.0.
pub fn scrape_metrics(setup: &Setup) -> anyhow::Result<String> {
    let addr = setup.metrics_addr();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("could not connect to rst-trace's metrics at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("reading rst-trace's metrics")?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("rst-trace's metrics response has no body");
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "rst-trace's metrics answered {}",
            head.lines().next().unwrap_or("nothing")
        );
    }
    Ok(body.to_string())
}

/// The sum of a metric's samples whose labels contain `label` (every sample with "").
pub fn metric_sum(text: &str, metric: &str, label: &str) -> u64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// `rst-trace: 108074 events reported, 0 lost, 2000 folded into 4 lines` -> (108074, 0, 2000).
pub fn rst_trace_totals(stderr: &[String]) -> Option<(u64, u64, u64)> {
    stderr.iter().rev().find_map(|line| {
        let rest = line.strip_prefix("rst-trace: ")?;
        let (reported, rest) = rest.split_once(" events reported, ")?;
        let (lost, rest) = rest.split_once(" lost, ")?;
        let (folded, _) = rest.split_once(" folded into ")?;
        Some((
            reported.parse().ok()?,
            lost.parse().ok()?,
            folded.parse().ok()?,
        ))
    })
}

/// `rst-trace: bench-reference: 20002 records` -> 20002.
pub fn reference_records(stderr: &[String]) -> Option<u64> {
    stderr.iter().rev().find_map(|line| {
        line.strip_prefix("rst-trace: bench-reference: ")?
            .strip_suffix(" records")?
            .parse()
            .ok()
    })
}

/// bpftrace's map at exit, `@resets[2]: 1234` per line, summed.
pub fn bpftrace_total(stdout: &str) -> Option<u64> {
    let counts: Vec<u64> = stdout
        .lines()
        .filter(|line| line.starts_with("@resets["))
        .filter_map(|line| line.rsplit(": ").next()?.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// tcpdump's statistics at exit: (captured, dropped by kernel).
pub fn tcpdump_totals(stderr: &[String]) -> Option<(u64, u64)> {
    let number = |suffix: &str| {
        stderr
            .iter()
            .find_map(|line| line.strip_suffix(suffix)?.trim().parse::<u64>().ok())
    };
    Some((
        number(" packets captured")?,
        number(" packets dropped by kernel").unwrap_or(0),
    ))
}

/// The COUNT column of the last `--summary` totals table, summed per direction
/// (`SENT`, `RECV`, `DROP`).
pub fn summary_totals(stdout: &str) -> Option<[u64; 3]> {
    let start = stdout.rfind("rst-trace summary, totals:")?;
    let mut totals = [0u64; 3];
    for line in stdout[start..].lines().skip(2) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 {
            continue;
        }
        let Ok(count) = fields[fields.len() - 2].parse::<u64>() else {
            continue;
        };
        match fields[1] {
            "SENT" => totals[0] += count,
            "RECV" => totals[1] += count,
            "DROP" => totals[2] += count,
            _ => {}
        }
    }
    Some(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_tracers_print_at_exit() {
        let stderr = vec![
            "rst-trace: tracing tcp:tcp_send_reset (Ctrl-C to stop)".to_string(),
            "rst-trace: 108074 events reported, 3 lost, 2000 folded into 4 lines".to_string(),
        ];
        assert_eq!(rst_trace_totals(&stderr), Some((108074, 3, 2000)));
        let reference = vec!["rst-trace: bench-reference: 20002 records".to_string()];
        assert_eq!(reference_records(&reference), Some(20002));
        assert_eq!(
            bpftrace_total("Attaching 1 probe...\n\n\n@resets[14]: 1\n@resets[1]: 100\n"),
            Some(101)
        );
        let tcpdump = vec![
            "tcpdump: listening on lo, link-type EN10MB (Ethernet)".to_string(),
            "1200 packets captured".to_string(),
            "1300 packets received by filter".to_string(),
            "100 packets dropped by kernel".to_string(),
        ];
        assert_eq!(tcpdump_totals(&tcpdump), Some((1200, 100)));
    }

    #[test]
    fn sums_summary_totals_and_metrics() {
        let summary = "rst-trace summary, totals: 12 events in 4.0 s (3.0/s)\n\
             CAUSE                    DIR  PROCESS                        PORT     COUNT    RATE/s\n\
             port_closed              SENT -                                 9         6       3.0\n\
             accept_queue_full        DROP app (42)                       8080         4       2.0\n\
             peer_abort               RECV nginx (42)                      443         2       1.0\n";
        assert_eq!(summary_totals(summary), Some([6, 2, 4]));
        let metrics = "# TYPE rst_trace_resets_total counter\n\
             rst_trace_resets_total{direction=\"sent\",cause=\"port_closed\"} 5\n\
             rst_trace_resets_total{direction=\"received\",cause=\"x\"} 7\n\
             rst_trace_resets_total_created 1\n\
             rst_trace_lost_events_total 0\n";
        assert_eq!(
            metric_sum(metrics, "rst_trace_resets_total", "direction=\"sent\""),
            5
        );
        assert_eq!(metric_sum(metrics, "rst_trace_resets_total", ""), 12);
    }

    #[test]
    fn command_lines_are_the_ones_run() {
        let setup = Setup {
            rst_trace: PathBuf::from("/x/rst-trace"),
            port: 20001,
            metrics_port: 20002,
            needle_ports: [20003, 20004, 20005, 20006],
            xtask: PathBuf::from("/x/xtask"),
            scratch: PathBuf::from("/tmp"),
        };
        let refused = Workload::RefusedStorm;
        assert_eq!(
            Mode::Metrics.command_line(&setup, refused).as_deref(),
            Some("rst-trace --metrics 127.0.0.1:20002 --quiet --port 20001 > /dev/null")
        );
        assert_eq!(
            Mode::SummaryNoFold.command_line(&setup, refused).as_deref(),
            Some("rst-trace --summary 2 --port 20001 --fold-after 0 > FILE")
        );
        assert_eq!(
            Mode::Tcpdump.command_line(&setup, refused).as_deref(),
            Some("tcpdump -i lo -n -w FILE 'tcp[tcpflags] & tcp-rst != 0 and port 20001'")
        );
        assert_eq!(Mode::NoTracer.command_line(&setup, refused), None);
        let needles = Workload::StormNeedles;
        assert_eq!(
            Mode::JsonNoFold.command_line(&setup, needles).as_deref(),
            Some(
                "rst-trace --json --port 20001 --port 20003 --port 20004 --port 20005 --port \
                 20006 --fold-after 0 > FILE"
            )
        );
        assert!(!Mode::Tcpdump.applies_to(needles) && !Mode::SummaryNoFold.applies_to(needles));
        assert!(!Mode::JsonNoFold.applies_to(Workload::Echo));
    }
}
