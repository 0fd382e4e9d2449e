//! BENCHMARKS.md and its chart: medians and ratios per workload and tracer, each target with
//! its figure and PASS or MISSED, the machine, the exact commands, and notes on what the
//! figures mean.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::Context as _;

use super::{
    Measured, Plan, Run,
    capture::{self, Matched},
    chart_link, command_output,
    needles::{NeedleKind, PER_SECOND},
    tracers::{BPFTRACE_PROGRAM, Mode, Setup},
    workloads::{self, KernelCount, Workload},
};

/// The targets, from the issue that asked for the bench.
const RATIO_JSON: f64 = 0.95;
const RATIO_SUMMARY_METRICS: f64 = 0.97;
const RATIO_ORDINARY: f64 = 0.99;
const KERNEL_TIME_FACTOR: f64 = 1.5;
const CPU_SECONDS_PER_MILLION: f64 = 1.0;
const PEAK_RSS_MIB: f64 = 32.0;
const STARTUP_MS: f64 = 300.0;
/// Delivered over the kernel's count, at least: "no lost events" with room for the resets of
/// other processes that the kernel counts too.
const DELIVERED_AT_LEAST: f64 = 0.999;
/// The storms issue's targets: rare resets reported as their own events, and with the right
/// cause and process, at least; all programs' kernel time per refused connect, at most this
/// times the reference program's per reset.
const RARE_OWN_AT_LEAST: f64 = 0.999;
const RARE_RIGHT_AT_LEAST: f64 = 0.99;
const KERNEL_TIME_PER_CONNECT_FACTOR: f64 = 2.0;

/// rst-trace's output modes with folding on (default) and off, side by side.
const FOLD_PAIRS: [[Mode; 2]; 3] = [
    [Mode::Json, Mode::JsonNoFold],
    [Mode::Summary, Mode::SummaryNoFold],
    [Mode::Metrics, Mode::MetricsNoFold],
];

/// The tracer modes drawn in the chart, in order.
const CHART_MODES: [Mode; 9] = [
    Mode::Json,
    Mode::Summary,
    Mode::Metrics,
    Mode::JsonNoFold,
    Mode::SummaryNoFold,
    Mode::MetricsNoFold,
    Mode::Bpftrace,
    Mode::Tcpdump,
    Mode::Reference,
];

/// One colour per charted mode (gnuplot's own cycle repeats after eight): each output mode
/// with folding, then a lighter shade of it without, then the other tracers.
const CHART_COLORS: [&str; 9] = [
    "#1f4e9c", "#1f8a4c", "#8a1f7a", "#8fb3e8", "#92d6a8", "#dba3d2", "#e07b00", "#333333",
    "#c0392b",
];

/// The machine the bench ran on, read before it started.
pub struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    kernel: String,
    os: String,
    date: String,
    commit: String,
    tools: Vec<String>,
    load_before: String,
    /// Share of CPU time idle in the second before the bench: other work on the machine.
    idle_before: Option<f64>,
}

impl Machine {
    pub fn describe(root: &Path) -> Self {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or_else(
                || "unknown".to_string(),
                |(_, name)| name.trim().to_string(),
            );
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|line| {
                line.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches(" kB")
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|line| {
                line.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let root_str = root.display().to_string();
        let commit = command_output("git", &["-C", &root_str, "rev-parse", "--short", "HEAD"])
            .unwrap_or_else(|| "unknown".to_string());
        let dirty = command_output("git", &["-C", &root_str, "status", "--porcelain"])
            .is_some_and(|status| !status.is_empty());
        let first_line = |text: Option<String>| {
            text.and_then(|t| t.lines().next().map(str::to_string))
                .unwrap_or_else(|| "missing".to_string())
        };
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_else(|| "unknown".to_string()),
            commit: if dirty {
                format!("{commit} with uncommitted changes")
            } else {
                commit
            },
            tools: vec![
                first_line(command_output("bpftrace", &["--version"])),
                first_line(command_output("tcpdump", &["--version"])),
                first_line(command_output("hping3", &["--version"])),
                first_line(command_output("bpftool", &["version"])),
            ],
            load_before: load_average(),
            idle_before: idle_share(Duration::from_secs(1)),
        }
    }
}

/// The share of all CPUs' time spent idle over `window`, from /proc/stat.
fn idle_share(window: Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let text = fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = text
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...: idle and iowait are idle.
        let idle = fields.get(3)? + fields.get(4)?;
        Some((idle, fields.iter().take(8).sum()))
    };
    let (idle0, total0) = sample()?;
    std::thread::sleep(window);
    let (idle1, total1) = sample()?;
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some((idle1 - idle0) as f64 / total as f64)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub struct Context<'a> {
    pub plan: Plan,
    pub setup: &'a Setup,
    pub machine: Machine,
    pub elapsed: Duration,
    /// The namespaces workload, run after the others.
    pub namespaces: Option<super::namespaces::Figures>,
}

/// A progress line for one run.
pub fn one_line(workload: Workload, measured: &Measured) -> String {
    let mut line = format!("{} {}", thousands(measured.throughput), workload.unit());
    let _ = write!(
        line,
        ", {} TcpOutRsts, {} ListenOverflows in {:.2} s",
        measured.out_rsts, measured.listen_overflows, measured.seconds
    );
    if let Some(tracer) = &measured.tracer {
        if let (Some(delivered), Some(expected)) = (tracer.delivered, tracer.expected) {
            let _ = write!(line, ", delivered {delivered} of {expected}");
        }
        if let Some(lost) = tracer.lost {
            let _ = write!(line, ", {lost} lost");
        }
        let _ = write!(
            line,
            ", {:.2} CPU s, {:.1} MiB peak, start-up {} ms",
            tracer.cpu_seconds,
            tracer.peak_rss_kib as f64 / 1024.0,
            tracer.startup.as_millis()
        );
    }
    for problem in &measured.problems {
        let _ = write!(line, " [{problem}]");
    }
    line
}

/// Medians and totals of one workload under one tracer, over its repetitions.
struct Cell<'a> {
    runs: Vec<&'a Measured>,
    failed: usize,
}

impl<'a> Cell<'a> {
    fn of(runs: &'a [Run], workload: Workload, mode: Mode) -> Self {
        let mine: Vec<&Run> = runs
            .iter()
            .filter(|run| run.workload == workload && run.mode == mode)
            .collect();
        Self {
            runs: mine
                .iter()
                .filter_map(|run| run.result.as_ref().ok())
                .collect(),
            failed: mine.iter().filter(|run| run.result.is_err()).count(),
        }
    }

    fn throughput(&self) -> Option<f64> {
        median(self.runs.iter().map(|m| m.throughput).collect())
    }

    /// (delivered, expected) summed over the runs that have both, and the lowest run's ratio.
    fn delivered(&self) -> Option<(u64, u64, f64)> {
        let pairs: Vec<(u64, u64)> = self
            .runs
            .iter()
            .filter_map(|m| {
                let tracer = m.tracer.as_ref()?;
                Some((tracer.delivered?, tracer.expected?))
            })
            .collect();
        if pairs.is_empty() {
            return None;
        }
        let lowest = pairs
            .iter()
            .map(|(d, e)| if *e == 0 { 1.0 } else { *d as f64 / *e as f64 })
            .fold(f64::INFINITY, f64::min);
        Some((
            pairs.iter().map(|p| p.0).sum(),
            pairs.iter().map(|p| p.1).sum(),
            lowest,
        ))
    }

    fn lost(&self) -> Option<u64> {
        let lost: Vec<u64> = self
            .runs
            .iter()
            .filter_map(|m| m.tracer.as_ref()?.lost)
            .collect();
        (!lost.is_empty()).then(|| lost.iter().sum())
    }

    /// Tracer CPU seconds per million events the kernel counted.
    fn cpu_per_million(&self) -> Option<f64> {
        let (mut cpu, mut events) = (0.0, 0u64);
        for m in &self.runs {
            let tracer = m.tracer.as_ref()?;
            let expected = tracer.expected?;
            cpu += tracer.cpu_seconds;
            events += expected;
        }
        (events > 0).then(|| cpu / events as f64 * 1e6)
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        self.runs
            .iter()
            .filter_map(|m| m.tracer.as_ref())
            .map(|t| t.peak_rss_kib as f64 / 1024.0)
            .reduce(f64::max)
    }

    /// Median and highest start-up, in ms.
    fn startup_ms(&self) -> Option<(f64, f64)> {
        let times: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|m| m.tracer.as_ref())
            .map(|t| t.startup.as_secs_f64() * 1e3)
            .collect();
        Some((
            median(times.clone())?,
            times.into_iter().fold(0.0, f64::max),
        ))
    }

    /// Per program: median ns per run and median runs per second, over runs where it ran.
    fn programs(&self) -> BTreeMap<String, (f64, f64)> {
        let mut samples: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for m in &self.runs {
            let Some(tracer) = &m.tracer else { continue };
            for program in tracer.programs.iter().filter(|p| p.runs > 0) {
                let entry = samples.entry(program.name.clone()).or_default();
                entry
                    .0
                    .push(program.run_time_ns as f64 / program.runs as f64);
                entry.1.push(program.runs as f64 / m.seconds);
            }
        }
        samples
            .into_iter()
            .filter_map(|(name, (ns, rate))| Some((name, (median(ns)?, median(rate)?))))
            .collect()
    }

    /// StormNeedles: the matching summed over the runs, and the lowest run's ratios (wire RSTs
    /// accounted for by sent events, rare ends their own event, rare ends right).
    fn matched(&self) -> Option<(Matched, [f64; 3])> {
        let mut total = Matched::default();
        let mut lowest = [f64::INFINITY; 3];
        let mut any = false;
        for matched in self.runs.iter().filter_map(|m| m.matched.as_ref()) {
            any = true;
            total.add(matched);
            let rare = matched.rare();
            let ratios = [
                capture::ratio(matched.sent_accounted, matched.wire).unwrap_or(0.0),
                rare.own_ratio().unwrap_or(0.0),
                rare.right_ratio().unwrap_or(0.0),
            ];
            for (low, ratio) in lowest.iter_mut().zip(ratios) {
                *low = low.min(ratio);
            }
        }
        any.then_some((total, lowest))
    }

    /// Packets tcpdump dropped, over the runs.
    fn tcpdump_dropped(&self) -> u64 {
        self.runs.iter().filter_map(|m| m.tcpdump_dropped).sum()
    }

    /// All the tracer's programs' kernel time per operation of the workload (a refused connect),
    /// median over runs.
    fn kernel_ns_per_op(&self) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|m| {
                    let tracer = m.tracer.as_ref()?;
                    let ops = m.throughput * m.seconds;
                    let total: u64 = tracer.programs.iter().map(|p| p.run_time_ns).sum();
                    (ops > 0.0).then(|| total as f64 / ops)
                })
                .collect(),
        )
    }

    /// All the tracer's programs' kernel time per event the kernel counted, median over runs.
    fn kernel_ns_per_event(&self) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|m| {
                    let tracer = m.tracer.as_ref()?;
                    let expected = tracer.expected.filter(|e| *e > 0)?;
                    let total: u64 = tracer.programs.iter().map(|p| p.run_time_ns).sum();
                    Some(total as f64 / expected as f64)
                })
                .collect(),
        )
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// 1234567.8 -> "1,234,568".
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "**MISSED**" }
}

/// The throughput ratio an rst-trace mode must reach on a workload.
fn ratio_target(workload: Workload, mode: Mode) -> f64 {
    if workload == Workload::Echo {
        RATIO_ORDINARY
    } else if mode.folding() == Mode::Json {
        RATIO_JSON
    } else {
        RATIO_SUMMARY_METRICS
    }
}

const RST_TRACE_MODES: [Mode; 3] = [Mode::Json, Mode::Summary, Mode::Metrics];

/// The workloads the general targets (the bench's first issue) judge; the storm + needles
/// workload has targets of its own.
const GENERAL: [Workload; 5] = [
    Workload::RefusedStorm,
    Workload::HpingFlood,
    Workload::LingerStorm,
    Workload::AcceptOverflow,
    Workload::Echo,
];

/// Every figure the report shows, computed once.
struct Figures<'a> {
    runs: &'a [Run],
}

impl<'a> Figures<'a> {
    fn cell(&self, workload: Workload, mode: Mode) -> Cell<'a> {
        Cell::of(self.runs, workload, mode)
    }

    /// The median over repetitions of throughput with the tracer divided by the no-tracer run
    /// of the same pass: neighbours in time, so that slow drift of the machine cancels.
    fn ratio(&self, workload: Workload, mode: Mode) -> Option<f64> {
        let throughput = |mode: Mode, repetition: usize| {
            self.runs
                .iter()
                .find(|r| r.workload == workload && r.mode == mode && r.repetition == repetition)
                .and_then(|r| r.result.as_ref().ok())
                .map(|m| m.throughput)
        };
        let ratios: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.workload == workload && r.mode == mode)
            .filter_map(|r| {
                let with = throughput(mode, r.repetition)?;
                let without = throughput(Mode::NoTracer, r.repetition)?;
                (without > 0.0).then(|| with / without)
            })
            .collect();
        median(ratios)
    }

    /// rst-trace's tcp_send_reset and the reference program, ns per run (medians). Only runs
    /// in which rst-trace lost nothing count: a record that finds the buffer full costs less
    /// than one delivered.
    fn kernel_times(&self, workload: Workload) -> Option<(f64, f64)> {
        let rst_trace: Vec<f64> = RST_TRACE_MODES
            .iter()
            .flat_map(|mode| self.cell(workload, *mode).runs)
            .filter_map(|m| {
                let tracer = m.tracer.as_ref().filter(|t| t.lost == Some(0))?;
                let program = tracer
                    .programs
                    .iter()
                    // The BTF tracepoint program where the kernel takes it, else the classic one.
                    .find(|p| {
                        matches!(p.name.as_str(), "tcp_send_reset" | "tcp_send_reset_btf")
                            && p.runs > 0
                    })?;
                Some(program.run_time_ns as f64 / program.runs as f64)
            })
            .collect();
        let reference = self.cell(workload, Mode::Reference).programs();
        Some((
            median(rst_trace)?,
            reference.get("bench_reference").map(|(ns, _)| *ns)?,
        ))
    }
}

/// One target's verdict, with the figures behind it.
struct Target {
    name: String,
    ok: bool,
    figures: Vec<String>,
}

fn targets(f: &Figures) -> Vec<Target> {
    let mut out = Vec::new();
    let reset_workloads: Vec<Workload> = GENERAL
        .into_iter()
        .filter(|w| w.kernel_count() == KernelCount::Resets)
        .collect();

    // No lost events.
    let highest = reset_workloads
        .iter()
        .filter_map(|w| {
            let cell = f.cell(*w, Mode::NoTracer);
            median(
                cell.runs
                    .iter()
                    .map(|m| m.out_rsts as f64 / m.seconds)
                    .collect(),
            )
            .map(|rate| (*w, rate))
        })
        .fold(
            None,
            |best: Option<(Workload, f64)>, (w, rate)| match best {
                Some((_, best_rate)) if best_rate >= rate => best,
                _ => Some((w, rate)),
            },
        );
    let mut ok = true;
    let mut figures = Vec::new();
    if let Some((workload, rate)) = highest {
        figures.push(format!(
            "highest reset rate made here: {} resets/s ({}, no tracer)",
            thousands(rate),
            workload.id()
        ));
    }
    for workload in &reset_workloads {
        for mode in RST_TRACE_MODES {
            let cell = f.cell(*workload, mode);
            let lost = cell.lost().unwrap_or(0);
            let delivered = cell.delivered();
            let good = lost == 0
                && delivered.is_some_and(|(_, _, lowest)| lowest >= DELIVERED_AT_LEAST)
                && cell.failed == 0;
            ok &= good;
            let rate = median(
                cell.runs
                    .iter()
                    .map(|m| m.out_rsts as f64 / m.seconds)
                    .collect(),
            )
            .unwrap_or(0.0);
            figures.push(format!(
                "{} {}: {lost} lost, lowest run delivered {} at {} resets/s {}",
                workload.id(),
                mode.id(),
                delivered.map_or("n/a".to_string(), |(_, _, lowest)| format!("{lowest:.4}")),
                thousands(rate),
                verdict(good)
            ));
        }
    }
    out.push(Target {
        name: format!(
            "no lost events up to the highest reset rate (0 lost, delivered / kernel count >= \
             {DELIVERED_AT_LEAST} in every run)"
        ),
        ok,
        figures,
    });

    // Throughput ratios.
    for (name, workloads) in [
        (
            format!(
                "throughput ratio >= {RATIO_SUMMARY_METRICS} (summary, metrics), >= \
                 {RATIO_JSON} (JSON) under reset and drop storms"
            ),
            GENERAL
                .into_iter()
                .filter(|w| *w != Workload::Echo)
                .collect::<Vec<_>>(),
        ),
        (
            format!("throughput ratio >= {RATIO_ORDINARY} on ordinary traffic (echo)"),
            vec![Workload::Echo],
        ),
    ] {
        let mut ok = true;
        let mut figures = Vec::new();
        for workload in workloads {
            for mode in RST_TRACE_MODES {
                let target = ratio_target(workload, mode);
                let ratio = f.ratio(workload, mode);
                let good = ratio.is_some_and(|r| r >= target);
                ok &= good;
                figures.push(format!(
                    "{} {}: {} {}",
                    workload.id(),
                    mode.id(),
                    ratio.map_or("n/a".to_string(), |r| format!("{r:.3}")),
                    verdict(good)
                ));
            }
        }
        out.push(Target { name, ok, figures });
    }

    // Better than bpftrace and tcpdump.
    let mut ok = true;
    let mut figures = Vec::new();
    for workload in GENERAL {
        let others = [Mode::Bpftrace, Mode::Tcpdump].map(|m| f.ratio(workload, m));
        let best_other = others.iter().flatten().copied().fold(0.0, f64::max);
        for mode in RST_TRACE_MODES {
            let ratio = f.ratio(workload, mode);
            let good = ratio.is_some_and(|r| r > best_other);
            ok &= good;
            figures.push(format!(
                "{} {}: {} vs bpftrace {}, tcpdump {} {}",
                workload.id(),
                mode.id(),
                ratio.map_or("n/a".to_string(), |r| format!("{r:.3}")),
                others[0].map_or("n/a".to_string(), |r| format!("{r:.3}")),
                others[1].map_or("n/a".to_string(), |r| format!("{r:.3}")),
                verdict(good)
            ));
        }
    }
    out.push(Target {
        name: "throughput ratio better than bpftrace's and tcpdump's in the same run".to_string(),
        ok,
        figures,
    });

    // Kernel time per event against the reference.
    let mut ok = true;
    let mut figures = Vec::new();
    for workload in &reset_workloads {
        match f.kernel_times(*workload) {
            Some((ours, reference)) => {
                let good = ours <= KERNEL_TIME_FACTOR * reference;
                ok &= good;
                figures.push(format!(
                    "{}: tcp_send_reset {ours:.0} ns per run, reference {reference:.0} ns \
                     ({:.2}x) {}",
                    workload.id(),
                    ours / reference,
                    verdict(good)
                ));
            }
            None => figures.push(format!(
                "{}: not judged: rst-trace lost events in every run (a record that finds the \
                 buffer full costs less than one delivered)",
                workload.id()
            )),
        }
    }
    out.push(Target {
        name: format!(
            "kernel time per event <= {KERNEL_TIME_FACTOR} x the reference program's \
             (tcp:tcp_send_reset; rst-trace runs without lost events)"
        ),
        ok,
        figures,
    });

    // Userspace CPU.
    let mut ok = true;
    let mut figures = Vec::new();
    for workload in GENERAL.into_iter().filter(|w| *w != Workload::Echo) {
        for mode in RST_TRACE_MODES {
            let cpu = f.cell(workload, mode).cpu_per_million();
            let good = cpu.is_some_and(|c| c <= CPU_SECONDS_PER_MILLION);
            ok &= good;
            figures.push(format!(
                "{} {}: {} {}",
                workload.id(),
                mode.id(),
                cpu.map_or("n/a".to_string(), |c| format!("{c:.2} s")),
                verdict(good)
            ));
        }
    }
    out.push(Target {
        name: format!(
            "<= {CPU_SECONDS_PER_MILLION} CPU second per million events in userspace \
             (rst-trace, start-up excluded)"
        ),
        ok,
        figures,
    });

    // Memory and start-up, over every workload.
    let mut rss_ok = true;
    let mut rss = Vec::new();
    let mut startup_ok = true;
    let mut startup = Vec::new();
    for mode in RST_TRACE_MODES {
        let cells: Vec<Cell> = Workload::ALL.iter().map(|w| f.cell(*w, mode)).collect();
        let peak = cells.iter().filter_map(Cell::peak_rss_mib).reduce(f64::max);
        let good = peak.is_some_and(|p| p <= PEAK_RSS_MIB);
        rss_ok &= good;
        rss.push(format!(
            "{}: {} {}",
            mode.id(),
            peak.map_or("n/a".to_string(), |p| format!("{p:.1} MiB")),
            verdict(good)
        ));
        let times: Vec<f64> = cells
            .iter()
            .flat_map(|cell| &cell.runs)
            .filter_map(|m| m.tracer.as_ref())
            .map(|t| t.startup.as_secs_f64() * 1e3)
            .collect();
        let highest = times.iter().copied().fold(0.0, f64::max);
        let middle = median(times);
        let good = middle.is_some_and(|m| m <= STARTUP_MS);
        startup_ok &= good;
        startup.push(format!(
            "{}: median {} ms, highest {highest:.0} ms {}",
            mode.id(),
            middle.map_or("n/a".to_string(), |m| format!("{m:.0}")),
            verdict(good)
        ));
    }
    out.push(Target {
        name: format!("peak RSS <= {PEAK_RSS_MIB} MiB (highest over every run)"),
        ok: rss_ok,
        figures: rss,
    });
    out.push(Target {
        name: format!(
            "start-up <= {STARTUP_MS} ms (spawn to \"tracing\", every program attached; median)"
        ),
        ok: startup_ok,
        figures: startup,
    });
    out.extend(storm_targets(f));
    out
}

/// The targets of the storms issue: the storm + needles workload matched against tcpdump, the
/// 4-thread refused storm's ratios against bpftrace's, and the kernel time per refused connect
/// against the reference program. The `--fold-after 0` rows are shown beside them, not judged.
fn storm_targets(f: &Figures) -> Vec<Target> {
    let mut out = Vec::new();

    let mut ok = true;
    let mut figures = Vec::new();
    for mode in [Mode::Json, Mode::JsonNoFold] {
        let cell = f.cell(Workload::StormNeedles, mode);
        let lost = cell.lost();
        let judged = mode.folds();
        let text = match cell.matched() {
            Some((total, [accounted, own, right])) => {
                let good = accounted == 1.0
                    && total.sent_unmatched == 0
                    && own >= RARE_OWN_AT_LEAST
                    && right >= RARE_RIGHT_AT_LEAST
                    && lost == Some(0)
                    && cell.failed == 0;
                if judged {
                    ok &= good;
                }
                format!(
                    "{}: {} RSTs on the wire (tcpdump dropped {}), lowest run accounted for \
                     {accounted:.4} ({} events with no RST); rare resets: lowest run {own:.4} \
                     own events, {right:.4} right cause and process; {} lost {}",
                    mode.label_on(Workload::StormNeedles),
                    thousands(total.wire as f64),
                    cell.tcpdump_dropped(),
                    thousands((total.sent_unmatched) as f64),
                    lost.map_or("n/a".to_string(), |l| thousands(l as f64)),
                    if judged {
                        verdict(good)
                    } else {
                        "(without folding, for comparison)"
                    }
                )
            }
            None => {
                if judged {
                    ok = false;
                }
                format!(
                    "{}: no run completed",
                    mode.label_on(Workload::StormNeedles)
                )
            }
        };
        figures.push(text);
    }
    out.push(Target {
        name: format!(
            "storm + needles + capture: every RST on the wire accounted for by an event or a \
             folded count (1.0000), every rare reset its own event at both ends (>= \
             {RARE_OWN_AT_LEAST}) with the right cause and process (>= {RARE_RIGHT_AT_LEAST}), 0 \
             lost"
        ),
        ok,
        figures,
    });

    let storm = Workload::RefusedStorm;
    let bpftrace = f.ratio(storm, Mode::Bpftrace);
    let mut ok = true;
    let mut figures = Vec::new();
    for mode in FOLD_PAIRS.iter().flat_map(|pair| *pair) {
        let target = ratio_target(storm, mode);
        let ratio = f.ratio(storm, mode);
        let good = ratio.is_some_and(|r| r >= target && bpftrace.is_none_or(|b| r >= b));
        let judged = mode.folds();
        if judged {
            ok &= good;
        }
        figures.push(format!(
            "{}: {} (target {target}, bpftrace {}) {}",
            mode.label(),
            ratio.map_or("n/a".to_string(), |r| format!("{r:.3}")),
            bpftrace.map_or("n/a".to_string(), |b| format!("{b:.3}")),
            if judged {
                verdict(good)
            } else {
                "(without folding, for comparison)"
            }
        ));
    }
    out.push(Target {
        name: format!(
            "4-thread refused storm: throughput ratio >= {RATIO_JSON} (JSON), >= \
             {RATIO_SUMMARY_METRICS} (summary, metrics), and not below bpftrace's one-liner in \
             the same run"
        ),
        ok,
        figures,
    });

    let reference = f
        .cell(storm, Mode::Reference)
        .programs()
        .get("bench_reference")
        .map(|(ns, _)| *ns);
    let mut ok = true;
    let mut figures = Vec::new();
    for mode in FOLD_PAIRS.iter().flat_map(|pair| *pair) {
        let ours = f.cell(storm, mode).kernel_ns_per_op();
        let judged = mode.folds();
        let good = match (ours, reference) {
            (Some(ours), Some(reference)) => ours <= KERNEL_TIME_PER_CONNECT_FACTOR * reference,
            _ => false,
        };
        if judged {
            ok &= good;
        }
        figures.push(format!(
            "{}: {} ns per refused connect, reference {} ns ({}) {}",
            mode.label(),
            ours.map_or("n/a".to_string(), |o| format!("{o:.0}")),
            reference.map_or("n/a".to_string(), |r| format!("{r:.0}")),
            match (ours, reference) {
                (Some(o), Some(r)) if r > 0.0 => format!("{:.2}x", o / r),
                _ => "n/a".to_string(),
            },
            if judged {
                verdict(good)
            } else {
                "(without folding, for comparison)"
            }
        ));
    }
    out.push(Target {
        name: format!(
            "kernel time of all programs per refused connect <= \
             {KERNEL_TIME_PER_CONNECT_FACTOR} x the reference program's per reset (refused storm)"
        ),
        ok,
        figures,
    });
    out
}

pub fn write(runs: &[Run], ctx: &Context, report: &Path, chart: &Path) -> anyhow::Result<()> {
    let f = Figures { runs };
    if let Some(dir) = chart.parent() {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    draw_chart(&f, ctx, chart)?;
    let text = markdown(&f, ctx, &chart_link(report, chart));
    fs::write(report, text).with_context(|| format!("could not write {}", report.display()))
}

fn markdown(f: &Figures, ctx: &Context, chart: &Path) -> String {
    let plan = &ctx.plan;
    let m = &ctx.machine;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# rst-trace benchmarks\n");
    let _ = writeln!(
        w,
        "Written by `cargo xtask bench{}` on {} (commit {}), in {:.1} minutes. Every figure \
         below comes from that one run; run the command again to refresh this file.\n",
        if plan.quick { " --quick" } else { "" },
        m.date,
        m.commit,
        ctx.elapsed.as_secs_f64() / 60.0
    );
    if plan.quick {
        let _ = writeln!(
            w,
            "**This is a `--quick` smoke run: one short repetition; the timings mean nothing.**\n"
        );
    }
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n| --- | --- |");
    let _ = writeln!(w, "| CPU | {} ({} cores) |", m.cpu, m.cores);
    let _ = writeln!(w, "| memory | {:.1} GiB |", m.memory_gib);
    let _ = writeln!(w, "| kernel | {} |", m.kernel);
    let _ = writeln!(w, "| OS | {} |", m.os);
    let _ = writeln!(
        w,
        "| before the bench | {} idle over 1 s; load average {} |",
        m.idle_before.map_or("unknown".to_string(), |idle| format!(
            "{:.0}%",
            idle * 100.0
        )),
        m.load_before
    );
    let _ = writeln!(w, "| tools | {} |\n", m.tools.join("; "));

    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "| target | result | figures |\n| --- | --- | --- |");
    for target in targets(f) {
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            target.name,
            verdict(target.ok),
            target.figures.join("<br>")
        );
    }
    let _ = writeln!(
        w,
        "\n![Throughput with each tracer divided by throughput without]({})\n",
        chart.display()
    );

    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "- Each workload runs {} s under each tracer in turn, interleaved (no tracer, JSON, \
         summary, metrics, bpftrace, tcpdump, reference, then again), {} times; the tables show \
         medians over those repetitions; rst-trace also runs with `--fold-after 0` (every event \
         one by one, as before folding) on the refused storm and beside the needles, to show \
         what folding gains. Load generators use {} threads on {} cores and send only to \
         127.0.0.1.",
        plan.duration.as_secs(),
        plan.repetitions,
        plan.threads,
        m.cores
    );
    let _ = writeln!(
        w,
        "- **ratio**: the workload's throughput with the tracer divided by the no-tracer run of \
         the same pass (its neighbour in time), median over the passes. The \
         reset workloads are closed loops that keep every core busy, so every cycle a tracer \
         spends, in the kernel or in its own process, shows here."
    );
    let _ = writeln!(
        w,
        "- **delivered / kernel**: events the tracer delivered (rst-trace: `N events reported` \
         at exit) divided by the kernel's own count over the run: resets sent (`TcpOutRsts` \
         delta) plus, for rst-trace, resets received (runs of its `tcp_receive_reset` program: \
         the tracepoint fires once per received reset whether or not the ring buffer has \
         room); for the overflow workload, drops (`TcpExtListenOverflows` delta) against the \
         drops rst-trace counted (`--summary` totals, `rst_trace_queue_drops_total`). \
         `TcpOutRsts` counts the whole host, so resets of other processes during a run lower \
         the ratio (see notes)."
    );
    let _ = writeln!(
        w,
        "- **lost**: what the tracer itself says it lost (rst-trace: records that found the ring \
         buffer full; tcpdump: packets dropped by the kernel)."
    );
    let _ = writeln!(
        w,
        "- **CPU s / M events**: the tracer's user+system CPU from the moment it was tracing to \
         its exit (wait4), per million events the kernel counted. **peak RSS**: `VmHWM` in \
         `/proc/PID/status` just before the tracer is stopped (not wait4's `ru_maxrss`, which \
         starts from the bench's own size at fork). **start-up**: from spawn to the line `rst-trace: tracing ...` (printed \
         once every program is attached)."
    );
    let _ = writeln!(
        w,
        "- **kernel time**: with `kernel.bpf_stats_enabled=1` for the whole bench (put back \
         after), `run_time_ns` / `run_cnt` of every BPF program the tracer process holds, read \
         from `/proc/PID/fdinfo` before and after the load (names from `bpftool prog show \
         --json`). The reference program (`rst-trace bench-reference`) reads the same two \
         record fields as rst-trace's classic `tcp_send_reset` and submits a 64-byte ring buffer \
         record without waking its reader, nothing else. rst-trace itself runs \
         `tcp_send_reset_btf` where the kernel takes BTF tracepoints (here): the same work \
         with plain loads instead of a probe read per field. **per refused connect**: the run \
         time of all of a tracer's programs divided by the refused connects the storm made \
         (each is one reset sent and one received), against the reference program's time per \
         run (one run per reset sent)."
    );
    let _ = writeln!(
        w,
        "- **storm + needles + capture**: tcpdump's capture (read back with `tcpdump -r`) is \
         the truth: every RST on lo appears in it once. rst-trace's `--json` output is matched \
         against it (see the section), and the needles' own records say which of those RSTs \
         are the rare ones, who made them and what their causes must be.\n"
    );

    let _ = writeln!(w, "## Results\n");
    for workload in Workload::ALL {
        workload_section(w, f, workload, ctx);
    }

    let _ = writeln!(w, "## Commands\n");
    let _ = writeln!(w, "```sh");
    let _ = writeln!(
        w,
        "cargo xtask bench{}   # everything below, as root",
        if plan.quick { " --quick" } else { "" }
    );
    let _ = writeln!(
        w,
        "sysctl kernel.bpf_stats_enabled=1   # for the bench; the previous value is put back"
    );
    for mode in Mode::ALL {
        if let Some(line) = mode.command_line(ctx.setup, Workload::RefusedStorm) {
            let _ = writeln!(w, "{line}   # {}", mode.label());
        }
    }
    let needles = Workload::StormNeedles;
    let _ = writeln!(w, "# {}:", needles.title());
    let _ = writeln!(
        w,
        "{}   # the capture, part of the workload in every run",
        workloads::tcpdump_command(needles, ctx.setup, Path::new("FILE"))
    );
    for (kind, port) in NeedleKind::ALL.into_iter().zip(ctx.setup.needle_ports) {
        let _ = writeln!(
            w,
            "cargo xtask bench-needle {kind} --port {port} --millis {} --out FILE   # {PER_SECOND} \
             {kind} resets a second, one line each: KIND PID CLIENT_PORT SERVER_PORT",
            ctx.plan.duration.as_millis()
        );
    }
    for mode in Mode::ALL.into_iter().filter(|m| m.applies_to(needles)) {
        if let Some(line) = mode.command_line(ctx.setup, needles) {
            let _ = writeln!(
                w,
                "{line}   # {}, kept to be matched",
                mode.label_on(needles)
            );
        }
    }
    let _ = writeln!(
        w,
        "tcpdump -r FILE -n -q -t   # the capture's RSTs, matched against the JSON events"
    );
    let _ = writeln!(
        w,
        "hping3 -S --flood -p {} 127.0.0.1   # the hping3 workload",
        ctx.setup.port
    );
    let _ = writeln!(
        w,
        "bpftool prog show --json   # program names; counters from /proc/PID/fdinfo/FD"
    );
    let _ = writeln!(w, "```\n");
    let _ = writeln!(
        w,
        "rst-trace is `target/release/rst-trace` built from this commit. The bpftrace program is \
         `{BPFTRACE_PROGRAM}`.\n"
    );

    if let Some(namespaces) = &ctx.namespaces {
        out.push_str(&super::namespaces::markdown(namespaces));
    }
    let w = &mut out;
    let _ = writeln!(w, "## Notes\n");
    for note in notes(f, ctx) {
        let _ = writeln!(w, "- {note}");
    }
    out
}

fn workload_section(w: &mut String, f: &Figures, workload: Workload, ctx: &Context) {
    let _ = writeln!(w, "### {}\n", workload.title());
    let _ = writeln!(
        w,
        "Load: {}.\n",
        workload.description(ctx.plan.threads, ctx.setup)
    );
    let baseline: Vec<f64> = f
        .cell(workload, Mode::NoTracer)
        .runs
        .iter()
        .map(|m| m.throughput)
        .collect();
    if let Some(middle) = median(baseline.clone()) {
        let spread = baseline.iter().copied().fold(f64::MIN, f64::max)
            - baseline.iter().copied().fold(f64::MAX, f64::min);
        let _ = writeln!(
            w,
            "No-tracer runs: {} (spread {:.1}% of the median: differences of that order between \
             tracers are noise).\n",
            baseline
                .iter()
                .map(|t| thousands(*t))
                .collect::<Vec<_>>()
                .join(", "),
            if middle > 0.0 {
                spread / middle * 100.0
            } else {
                0.0
            }
        );
    }
    let _ = writeln!(
        w,
        "| tracer | throughput ({}) | ratio | delivered / kernel | lost | CPU s / M events | \
         peak RSS (MiB) | start-up (ms) |",
        workload.unit()
    );
    let _ = writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for mode in Mode::ALL.into_iter().filter(|m| m.applies_to(workload)) {
        let cell = f.cell(workload, mode);
        let ours = mode.is_rst_trace();
        let dash = || "–".to_string();
        let throughput = cell.throughput().map_or_else(dash, thousands);
        let ratio = if mode == Mode::NoTracer {
            "1 (baseline)".to_string()
        } else {
            f.ratio(workload, mode).map_or_else(dash, |r| {
                if ours {
                    let target = ratio_target(workload, mode);
                    format!("{r:.3} {} (≥ {target})", verdict(r >= target))
                } else {
                    format!("{r:.3}")
                }
            })
        };
        let delivered = cell.delivered().map_or_else(dash, |(d, e, lowest)| {
            let ratio = if e == 0 { 1.0 } else { d as f64 / e as f64 };
            let mut text = format!(
                "{} / {} = {ratio:.4}",
                thousands(d as f64),
                thousands(e as f64)
            );
            if ours && workload.kernel_count() == KernelCount::Resets {
                let _ = write!(
                    text,
                    " {}",
                    verdict(lowest >= DELIVERED_AT_LEAST && cell.lost() == Some(0))
                );
            }
            text
        });
        let lost = cell.lost().map_or_else(dash, |l| l.to_string());
        let cpu = cell.cpu_per_million().map_or_else(dash, |c| {
            if ours {
                format!("{c:.2} {}", verdict(c <= CPU_SECONDS_PER_MILLION))
            } else {
                format!("{c:.2}")
            }
        });
        let rss = cell.peak_rss_mib().map_or_else(dash, |r| {
            if ours {
                format!("{r:.1} {}", verdict(r <= PEAK_RSS_MIB))
            } else {
                format!("{r:.1}")
            }
        });
        let startup = if mode == Mode::NoTracer {
            dash()
        } else {
            cell.startup_ms().map_or_else(dash, |(median, _)| {
                if ours {
                    format!("{median:.0} {}", verdict(median <= STARTUP_MS))
                } else {
                    format!("{median:.0}")
                }
            })
        };
        let failed = if cell.failed > 0 {
            format!(" ({} runs failed)", cell.failed)
        } else {
            String::new()
        };
        let _ = writeln!(
            w,
            "| {}{failed} | {throughput} | {ratio} | {delivered} | {lost} | {cpu} | {rss} | \
             {startup} |",
            mode.label_on(workload)
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Kernel time (programs that ran; medians):\n\n| tracer | program | ns per run | runs/s |"
    );
    let _ = writeln!(w, "| --- | --- | ---: | ---: |");
    for mode in Mode::ALL.into_iter().filter(|m| m.applies_to(workload)) {
        let cell = f.cell(workload, mode);
        for (name, (ns, rate)) in cell.programs() {
            let _ = writeln!(
                w,
                "| {} | `{name}` | {ns:.0} | {} |",
                mode.label_on(workload),
                thousands(rate)
            );
        }
        if mode.is_rst_trace()
            && let Some(total) = cell.kernel_ns_per_event()
        {
            let _ = writeln!(
                w,
                "| {} | all programs, per event counted | {total:.0} | |",
                mode.label_on(workload)
            );
        }
        if mode.is_rst_trace()
            && matches!(workload, Workload::RefusedStorm | Workload::StormNeedles)
            && let Some(total) = cell.kernel_ns_per_op()
        {
            let _ = writeln!(
                w,
                "| {} | all programs, per refused connect | {total:.0} | |",
                mode.label_on(workload)
            );
        }
    }
    let _ = writeln!(w);
    match workload {
        Workload::RefusedStorm => fold_table(w, f, workload),
        Workload::StormNeedles => needles_tables(w, f),
        _ => {}
    }
}

/// Folding on (the default) and off (`--fold-after 0`) side by side, per output mode.
fn fold_table(w: &mut String, f: &Figures, workload: Workload) {
    let _ = writeln!(
        w,
        "Folding on (default, `--fold-after 20`) and off (`--fold-after 0`), side by side \
         (medians; delivered counts folded events in full):\n"
    );
    let _ = writeln!(
        w,
        "| output | ratio, folding | ratio, --fold-after 0 | lost, folding | lost, \
         --fold-after 0 | CPU s / M events, folding | CPU s / M events, --fold-after 0 | kernel \
         ns per refused connect, folding | kernel ns per refused connect, --fold-after 0 |"
    );
    let _ = writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let dash = || "–".to_string();
    for [on, off] in FOLD_PAIRS {
        let ratio = |mode| {
            f.ratio(workload, mode)
                .map_or_else(dash, |r| format!("{r:.3}"))
        };
        let lost = |mode| {
            f.cell(workload, mode)
                .lost()
                .map_or_else(dash, |l| thousands(l as f64))
        };
        let cpu = |mode| {
            f.cell(workload, mode)
                .cpu_per_million()
                .map_or_else(dash, |c| format!("{c:.2}"))
        };
        let kernel = |mode| {
            f.cell(workload, mode)
                .kernel_ns_per_op()
                .map_or_else(dash, |k| format!("{k:.0}"))
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            on.label(),
            ratio(on),
            ratio(off),
            lost(on),
            lost(off),
            cpu(on),
            cpu(off),
            kernel(on),
            kernel(off)
        );
    }
    let _ = writeln!(w);
}

/// The storm + needles workload matched against tcpdump's capture: every RST, then each rare
/// kind at both ends.
fn needles_tables(w: &mut String, f: &Figures) {
    let workload = Workload::StormNeedles;
    let _ = writeln!(
        w,
        "Matched against tcpdump's capture (sums over the runs; \"lowest\" is the lowest \
         single run). A reset on the wire is accounted for by a `reset_sent` event with its \
         exact ends, or by a folded `reset_sent` event whose ends match it (the folded end's \
         port is any), each event taking as many resets as it stands for; the same with \
         `reset_received` events, ends reversed. A rare reset is reported as its own event when \
         an event written one by one (`folded` null) has its exact ends, and it is right when \
         that event's cause is the one its kind implies and its process is the needle's pid.\n"
    );
    let _ = writeln!(
        w,
        "| tracer | RSTs on the wire | tcpdump dropped | accounted for by sent events (lowest \
         run) | by received events | events with no RST | rare resets made | own event, both \
         ends (lowest run) | right cause and process (lowest run) | lost |"
    );
    let _ = writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let dash = || "–".to_string();
    for mode in Mode::ALL.into_iter().filter(|m| m.applies_to(workload)) {
        let cell = f.cell(workload, mode);
        let Some((total, [accounted, own, right])) = cell.matched() else {
            continue;
        };
        let rare = total.rare();
        let fraction = |part: u64, whole: u64| {
            capture::ratio(part, whole).map_or_else(dash, |r| {
                format!(
                    "{} / {} = {r:.4}",
                    thousands(part as f64),
                    thousands(whole as f64)
                )
            })
        };
        let judged = mode.folds() && mode.is_rst_trace();
        let mark = |good: bool| {
            if judged {
                format!(" {}", verdict(good))
            } else {
                String::new()
            }
        };
        if total.traced {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} ({accounted:.4}){} | {} | {} | {} | {} ({own:.4}){} | {} \
                 ({right:.4}){} | {} |",
                mode.label_on(workload),
                thousands(total.wire as f64),
                cell.tcpdump_dropped(),
                fraction(total.sent_accounted, total.wire),
                mark(accounted == 1.0 && total.sent_unmatched == 0),
                fraction(total.received_accounted, total.wire),
                thousands((total.sent_unmatched + total.received_unmatched) as f64),
                thousands(rare.made as f64),
                fraction(rare.sent_own + rare.received_own, 2 * rare.made),
                mark(own >= RARE_OWN_AT_LEAST),
                fraction(rare.sent_right + rare.received_right, 2 * rare.made),
                mark(right >= RARE_RIGHT_AT_LEAST),
                cell.lost().map_or_else(dash, |l| thousands(l as f64)),
            );
        } else {
            let _ = writeln!(
                w,
                "| {} | {} | {} | – | – | – | {} | – | – | – |",
                mode.label_on(workload),
                thousands(total.wire as f64),
                cell.tcpdump_dropped(),
                thousands(rare.made as f64),
            );
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Each rare kind, both ends (sums over the runs; the expected causes are sent / \
         received):\n"
    );
    let _ = writeln!(
        w,
        "| tracer | kind | expected causes | made | on the wire | sent end: own event | sent \
         end: right | received end: own event | received end: right |"
    );
    let _ = writeln!(
        w,
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for mode in Mode::ALL
        .into_iter()
        .filter(|m| m.applies_to(workload) && m.is_rst_trace())
    {
        let Some((total, _)) = f.cell(workload, mode).matched() else {
            continue;
        };
        for kind in NeedleKind::ALL {
            let k = total.kinds.get(&kind).copied().unwrap_or_default();
            let (sent, received) = kind.causes();
            let _ = writeln!(
                w,
                "| {} | {kind} | `{sent}` / `{received}` | {} | {} | {} | {} | {} | {} |",
                mode.label_on(workload),
                k.made,
                k.on_wire,
                k.sent_own,
                k.sent_right,
                k.received_own,
                k.received_right
            );
        }
    }
    let _ = writeln!(w);
}

fn notes(f: &Figures, ctx: &Context) -> Vec<String> {
    let mut notes = Vec::new();
    let background: Vec<i64> = f
        .runs
        .iter()
        .filter_map(|run| run.result.as_ref().ok()?.background_resets)
        .collect();
    if !background.is_empty() {
        let most = background.iter().copied().max().unwrap_or(0);
        let middle = median(background.iter().map(|b| *b as f64).collect()).unwrap_or(0.0);
        notes.push(format!(
            "Resets the kernel counted that the refused, linger and storm + needles workloads \
             did not make: \
             median {middle:.0}, at most {most} per run. `TcpOutRsts` counts the whole host; \
             rst-trace runs with `--port {}` and does not report resets of other processes, so \
             these lower its delivered ratio without any event being lost (its `lost` count is \
             the ring buffer's own).",
            ctx.setup.port
        ));
    }
    notes.push(format!(
        "Storm + needles + capture: the storm is the refused-connect storm's {} threads; each \
         needle is its own process (the xtask binary, `bench-needle`) that makes both ends of \
         its connections on its own port and writes down its pid and both ports for each reset, \
         so that its resets are found exactly among the events and packets. tcpdump runs in \
         every run of this workload, the no-tracer one included (its copies of the storm's \
         packets are part of the load, as in the issue's report), with `-B {}` (KiB) so that \
         its own capture is complete (it reports any packet the kernel dropped for it: the \
         column `tcpdump dropped`), and a filter on the workload's ports: the tests of other \
         people on the host make resets on lo too. rst-trace watches the same ports \
         (`--port`, repeated). Its JSON goes to a file here (to /dev/null in the other \
         workloads), and `--fold-after 0` shows what the same storm does without folding.",
        ctx.plan.threads,
        workloads::CAPTURE_BUFFER_KIB
    ));
    if let Some(idle) = ctx.machine.idle_before.filter(|idle| *idle < 0.9) {
        notes.push(format!(
            "The machine was not idle when the bench started ({:.0}% idle over a second): other \
             work competes for the same {} cores and adds noise to every ratio.",
            idle * 100.0,
            ctx.machine.cores
        ));
    }
    notes.push(
        "Where rst-trace's kernel time goes: it reads more than the reference (the socket's \
         state, owner, cookie and namespace, the segment's flags and ends, who closed the \
         connection, the running task's name and cgroup) and writes a 248-byte record. Its BTF \
         tracepoint programs read kernel structs with plain loads; what remains over the \
         reference is the timestamp, the owner and closed-connection map lookups, one probe \
         read of the segment's headers (packet bytes are not typed for the verifier) and the \
         record itself. Under the refused-connect storm both CPUs produce records at once, so \
         ring buffer reservations contend and records miss the cache more often than under \
         hping3. Past a key's first `--fold-after` events in a second, the record is still \
         built (its key needs the owner and both ends) but only counted: in a per-CPU slot \
         when the key is that CPU's storm of its kind, else in per-CPU hash maps."
            .to_string(),
    );
    notes.push(
        "Why the storm ratios stay below 0.97 here: the workloads are closed loops on two cores, \
         so a tracer's every cycle comes out of the workload (and the no-tracer runs alone \
         spread by a fifth or more, see each table). A refused connect fires six of rst-trace's \
         programs (connect, reset sent, reset received, close, destroy, the drop of the refused \
         SYN). Past a key's first events in a second both resets are only counted, so the ring \
         buffer and userspace cost next to nothing; what every connection still pays is its \
         bookkeeping (the owner recorded at connect and forgotten at destroy: the set-state \
         and destroy rows) and the reads that make a reset's fold key (the reset rows). The \
         reference program reserves and submits one record per reset and nothing else; \
         bpftrace's one-liner only bumps a map counter."
            .to_string(),
    );
    notes.push(
        "Ring buffer wakeups: a submit that wakes a waiting reader costs microseconds on this \
         virtual machine (an interrupt the hypervisor must deliver), far more than the \
         program's own work. rst-trace wakes its reader once each time the data waiting \
         crosses an eighth of the buffer (and drains every 50 ms); the reference program never \
         wakes its reader, which drains every 10 ms, so its time is the least a reset tracer \
         can spend per event. bpftrace's one-liner only updates a map."
            .to_string(),
    );
    notes.push(
        "On the echo workload no eBPF program runs per request (rst-trace's run on connection \
         set-up and teardown, resets and drops; bpftrace's on resets), so the ratios of \
         rst-trace and bpftrace there measure noise: compare them with the spread of the \
         no-tracer runs. tcpdump's packet filter does run on every packet."
            .to_string(),
    );
    notes.push(
        "Kernel time is measured with `kernel.bpf_stats_enabled=1`, which adds a little to every \
         program run (two clock reads); the reference pays it too."
            .to_string(),
    );
    notes.push(
        "The bpftrace one-liner counts in a kernel map and does nothing per event in userspace; \
         rst-trace reads every event, attributes it (process, socket, cause) and formats it. \
         tcpdump copies every matching packet to userspace and writes it to a file. bpftrace \
         start-up includes compiling its program with LLVM."
            .to_string(),
    );
    notes.push(
        "The hping3 workload's throughput is the kernel's count of resets sent per second \
         (hping3 reports no rate). On the overflow workload rst-trace reports drops from a \
         once-a-second sample of listener counters (no tracepoint fires for a SYN dropped at \
         a full accept queue), so its JSON events stand for several drops each and are not \
         compared one to one; `--summary` and `--metrics` add them up."
            .to_string(),
    );
    notes
}

/// The chart: throughput ratio per workload (clusters) and tracer (bars), drawn by gnuplot.
fn draw_chart(f: &Figures, ctx: &Context, path: &Path) -> anyhow::Result<()> {
    let mut data = String::from("workload");
    for mode in CHART_MODES {
        let _ = write!(data, "\t\"{}\"", mode.label());
    }
    data.push('\n');
    let mut lowest: f64 = 1.0;
    for workload in Workload::ALL {
        let _ = write!(data, "\"{}\"", workload.id());
        for mode in CHART_MODES {
            match f.ratio(workload, mode) {
                Some(ratio) if mode.applies_to(workload) => {
                    lowest = lowest.min(ratio);
                    let _ = write!(data, "\t{ratio:.4}");
                }
                _ => data.push_str("\t-"),
            }
        }
        data.push('\n');
    }
    let data_path = crate::gnuplot::data_path(path);
    let bottom = ((lowest - 0.05) * 20.0).floor() / 20.0;
    let mut columns = Vec::new();
    for (i, color) in CHART_COLORS.iter().enumerate().take(CHART_MODES.len()) {
        let using = if i == 0 {
            format!("'{}' using 2:xtic(1) title columnhead", data_path.display())
        } else {
            format!("'' using {} title columnhead", i + 2)
        };
        columns.push(format!("{using} lc rgb '{color}'"));
    }
    let title = format!(
        "Throughput with each tracer / without (median of {} runs of {} s){}",
        ctx.plan.repetitions,
        ctx.plan.duration.as_secs(),
        if ctx.plan.quick {
            " - quick smoke run, not a measurement"
        } else {
            ""
        }
    );
    let script = format!(
        "set terminal pngcairo size 1000,600 font 'sans,10'\n\
         set output '{output}'\n\
         set title \"{title}\"\n\
         set datafile missing '-'\n\
         set style data histogram\n\
         set style histogram cluster gap 1\n\
         set style fill solid 0.85 border -1\n\
         set boxwidth 0.9\n\
         set ylabel 'throughput ratio'\n\
         set yrange [{bottom}:1.05]\n\
         set grid ytics\n\
         set arrow from graph 0, first 1 to graph 1, first 1 nohead lc rgb '#333333'\n\
         set arrow from graph 0, first {RATIO_SUMMARY_METRICS} to graph 1, first \
         {RATIO_SUMMARY_METRICS} nohead dt 2 lc rgb '#b00000'\n\
         set arrow from graph 0, first {RATIO_JSON} to graph 1, first {RATIO_JSON} nohead \
         dt 3 lc rgb '#b00000'\n\
         set xlabel 'dashed: target 0.97 (summary, metrics); dotted: 0.95 (JSON); echo: 0.99'\n\
         set key outside bottom center horizontal maxrows 2\n\
         plot {plot}\n",
        output = path.display(),
        plot = columns.join(", ")
    );
    crate::gnuplot::draw(path, &data, &script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
