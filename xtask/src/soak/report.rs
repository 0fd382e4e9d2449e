//! The soak's verdicts against its targets, SOAK.md and the chart (gnuplot).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;

use super::{BASELINE_MINUTE, FINAL_MINUTES, FLAT_TOLERANCE, Minute, Outcome};

/// Warnings a soak run may print: the kernel here lacks optional hooks (fentry, kprobes), which
/// rst-trace says once at start-up. Anything else on stderr with `warning` or `error` fails.
const EXPECTED_WARNINGS: &[&str] = &[" is off ("];

/// The events the churn makes, as `kind cause` (a 2-minute run on 6.18 reported each).
const EXPECTED_CAUSES: &[&str] = &[
    "queue_drop accept_queue_full",
    "reset_received connection_refused",
    "reset_received linger_abort",
    "reset_received listener_closed",
    "reset_received stale_connection_reuse",
    "reset_received unread_data_close",
    "reset_sent data_after_close",
    "reset_sent linger_abort",
    "reset_sent listener_closed",
    "reset_sent port_closed",
    "reset_sent unread_data_close",
];

pub struct Verdict {
    pub target: String,
    pub found: String,
    pub ok: bool,
}

/// The minute the flatness targets compare with, and the minutes compared.
fn window(rows: &[Minute]) -> Option<(&Minute, &[Minute])> {
    let baseline = if rows.len() >= BASELINE_MINUTE + FINAL_MINUTES {
        BASELINE_MINUTE
    } else {
        1
    };
    let base = rows.get(baseline - 1)?;
    let later = &rows[baseline..];
    let last = &later[later.len().saturating_sub(FINAL_MINUTES)..];
    (!last.is_empty()).then_some((base, last))
}

fn flat(rows: &[Minute], what: &str, value: impl Fn(&Minute) -> u64) -> Verdict {
    let Some((base, last)) = window(rows) else {
        return Verdict {
            target: format!("{what} flat"),
            found: "the run is too short to judge (fewer than 2 minutes)".to_string(),
            ok: false,
        };
    };
    let base_value = value(base) as f64;
    let worst = last
        .iter()
        .map(|row| {
            (
                row.minute,
                (value(row) as f64 - base_value) / base_value.max(1.0),
            )
        })
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()));
    let (minute, change) = worst.unwrap_or((base.minute, 0.0));
    Verdict {
        target: format!(
            "{what}: minutes {}-{} within {:.0}% of minute {}",
            last[0].minute,
            last[last.len() - 1].minute,
            FLAT_TOLERANCE * 100.0,
            base.minute
        ),
        found: format!(
            "minute {}: {}; largest change {:+.1}% (minute {minute})",
            base.minute,
            value(base),
            change * 100.0
        ),
        ok: change.abs() <= FLAT_TOLERANCE,
    }
}

/// Stderr lines that warn or report an error.
fn warnings(outcome: &Outcome) -> (Vec<&String>, Vec<&String>) {
    outcome
        .warnings
        .iter()
        .filter(|line| line.contains("warning") || line.contains("error"))
        .partition(|line| {
            EXPECTED_WARNINGS
                .iter()
                .any(|pattern| line.contains(pattern))
        })
}

/// `rst-trace: N events reported, L lost, F folded into K lines` -> (N, L, F, K).
fn exit_totals(line: &str) -> Option<(u64, u64, u64, u64)> {
    let rest = line.strip_prefix("rst-trace: ")?;
    let (reported, rest) = rest.split_once(" events reported, ")?;
    let (lost, rest) = rest.split_once(" lost, ")?;
    let (folded, rest) = rest.split_once(" folded into ")?;
    let (lines, _) = rest.split_once(" lines")?;
    Some((
        reported.parse().ok()?,
        lost.parse().ok()?,
        folded.parse().ok()?,
        lines.parse().ok()?,
    ))
}

pub fn verdicts(outcome: &Outcome) -> Vec<Verdict> {
    let rows = &outcome.minutes;
    let mut verdicts = vec![
        flat(rows, "RSS (KiB)", |row| row.rss_kib),
        flat(rows, "open fds", |row| row.fds),
    ];
    let lost_metric = rows.last().map_or(0, |row| row.lost);
    let totals = outcome.exit_line.as_deref().and_then(exit_totals);
    verdicts.push(Verdict {
        target: "nothing lost".to_string(),
        found: match totals {
            Some((reported, lost, folded, lines)) => format!(
                "exit line: {reported} reported, {lost} lost, {folded} folded into {lines} \
                 lines; rst_trace_lost_events_total {lost_metric}"
            ),
            None => "rst-trace printed no exit line".to_string(),
        },
        ok: lost_metric == 0 && totals.is_some_and(|(_, lost, _, _)| lost == 0),
    });
    let (expected, unexpected) = warnings(outcome);
    verdicts.push(Verdict {
        target: "no warning except the expected ones".to_string(),
        found: format!(
            "{} expected, {} unexpected{}",
            expected.len(),
            unexpected.len(),
            unexpected
                .first()
                .map(|line| format!(" (first: {line})"))
                .unwrap_or_default()
        ),
        ok: unexpected.is_empty(),
    });
    let missing: Vec<&str> = EXPECTED_CAUSES
        .iter()
        .copied()
        .filter(|cause| !outcome.rotation.causes.contains_key(*cause))
        .collect();
    verdicts.push(Verdict {
        target: "every kind and cause the churn makes was reported".to_string(),
        found: if missing.is_empty() {
            format!("all {}", EXPECTED_CAUSES.len())
        } else {
            format!("missing: {}", missing.join(", "))
        },
        ok: missing.is_empty(),
    });
    let scrapes_failed: u64 = rows.iter().map(|row| row.scrapes_failed).sum();
    let scrapes_ok: u64 = rows.iter().map(|row| row.scrapes_ok).sum();
    verdicts.push(Verdict {
        target: "every scrape of --metrics answered".to_string(),
        found: format!("{scrapes_ok} answered, {scrapes_failed} failed"),
        ok: scrapes_failed == 0 && scrapes_ok > 0,
    });
    verdicts.push(Verdict {
        target: "--output rotated with copytruncate leaves no hole".to_string(),
        found: format!(
            "{} rotations, {} NUL bytes, {} lines cut by the copy",
            outcome.rotation.rotations, outcome.rotation.nul_bytes, outcome.rotation.torn_lines
        ),
        ok: outcome.rotation.nul_bytes == 0 && outcome.rotation.rotations > 0,
    });
    verdicts.push(Verdict {
        target: "the churn ran without errors".to_string(),
        found: match &outcome.first_churn_error {
            Some(first) => format!("{} errors; first: {first}", outcome.churn_errors),
            None => "no errors".to_string(),
        },
        ok: outcome.churn_errors == 0,
    });
    verdicts
}

pub fn write(
    outcome: &Outcome,
    verdicts: &[Verdict],
    report: &Path,
    chart: &Path,
) -> anyhow::Result<()> {
    if let Some(dir) = chart.parent() {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    draw_chart(&outcome.minutes, chart)?;
    let chart_link = report
        .parent()
        .and_then(|dir| chart.strip_prefix(dir).ok())
        .unwrap_or(chart);
    fs::write(report, markdown(outcome, verdicts, chart_link))
        .with_context(|| format!("could not write {}", report.display()))
}

fn markdown(outcome: &Outcome, verdicts: &[Verdict], chart: &Path) -> String {
    let mut w = String::new();
    let minutes = outcome.minutes.len();
    let _ = writeln!(w, "# Soak: rst-trace for {minutes} minutes under churn\n");
    let _ = writeln!(
        w,
        "Written by `cargo xtask soak --minutes {minutes}` ({:.0} s in all, load average at the \
         end: {}). rst-trace ran as\n\n```\n{}\n```\n",
        outcome.elapsed.as_secs_f64(),
        load_average(),
        outcome.command
    );
    let _ = writeln!(
        w,
        "Every second the churn (`xtask/src/soak/churn.rs`) made, on 127.0.0.1 ports {:?}: 20 refused connects \
         (port_closed / connection_refused) from the soak and 2 from new bash processes, 5 \
         SO_LINGER 0 closes (linger_abort / peer_abort), 3 closes with unread data \
         (unread_data_close), 3 writes on connections the server had closed \
         (data_after_close / stale_connection_reuse); every 5 s a listener closed with 3 \
         connections queued (listener_closed); every 10 s a listener with backlog 1 filled and \
         sent 3 SYNs it drops (accept_queue_full), closed 3 s later; every 2 s a new network \
         namespace with one refused connect on its own loopback, every other time from a \
         process in a new cgroup named as docker names a container's scope, then removed. A \
         scraper read `--metrics` every second; `--output` was rotated every minute the way \
         logrotate's copytruncate does. Not made: half_open, timewait, keepalive_timeout and \
         syn_queue_full (they need dropped or forged segments, timers or syncookies off; the \
         integration tests cover them).\n",
        outcome.ports
    );
    let _ = writeln!(
        w,
        "rst-trace samples the listeners of every network namespace on the host each second, so \
         its system CPU grows with the namespaces other programs keep: {} were named in \
         /run/netns at the end of this run.\n",
        fs::read_dir("/run/netns").map_or(0, |dir| dir.count())
    );
    let _ = writeln!(w, "## Targets\n\n| target | found | |\n| --- | --- | --- |");
    for verdict in verdicts {
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            verdict.target,
            verdict.found.replace('|', "\\|"),
            if verdict.ok { "met" } else { "**missed**" }
        );
    }
    let _ = writeln!(w, "\n![RSS and open fds per minute]({})\n", chart.display());
    let _ = writeln!(
        w,
        "## Every minute\n\nRSS and fds at the end of the minute; CPU seconds rst-trace spent in \
         the minute (user / system); the hash maps' entries at the end of the minute \
         (`bpftool map dump`) of their capacity; lines written to `--output` in the minute, of \
         which folded (and the events they stand for); `rst_trace_lost_events_total`; resets \
         and drops the metrics counted so far; scrapes; churn operations in the minute. \
         OWNERS, CLOSED, ABORTS and RATES are LRU maps: they fill up to their capacity on a \
         busy host and then evict, so growth up to capacity is by design.\n"
    );
    let _ = writeln!(
        w,
        "| min | RSS KiB | fds | CPU user s | CPU sys s | map entries | lines | folded (events) \
         | lost | counted | scrapes ok/failed | operations |\n\
         | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in &outcome.minutes {
        let maps: Vec<String> = row
            .maps
            .iter()
            .map(|(name, (entries, max))| format!("{name} {entries}/{max}"))
            .collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.2} | {:.2} | {} | {} | {} ({}) | {} | {} | {}/{} | {} |",
            row.minute,
            row.rss_kib,
            row.fds,
            row.user_cpu,
            row.system_cpu,
            if maps.is_empty() {
                "-".to_string()
            } else {
                maps.join(", ")
            },
            row.lines,
            row.folded_lines,
            row.folded_events,
            row.lost,
            row.counted,
            row.scrapes_ok,
            row.scrapes_failed,
            row.operations
        );
    }
    let _ = writeln!(w, "\n## --output and rotation\n");
    let _ = writeln!(w, "- Rename: {}.", outcome.rotation.rename);
    let _ = writeln!(
        w,
        "- copytruncate: {} rotations. rst-trace opens `--output` with O_APPEND, so after a \
         truncation its next write lands at the new end: {} NUL bytes (a hole would show as \
         NULs). {} lines were cut in two by a copy (a line being written as the file was \
         copied: logrotate's copytruncate has the same window, and so can lose or cut the \
         lines written between its copy and its truncate).",
        outcome.rotation.rotations, outcome.rotation.nul_bytes, outcome.rotation.torn_lines
    );
    let lines: u64 = outcome.minutes.iter().map(|row| row.lines).sum();
    let rotation = &outcome.rotation;
    let _ = writeln!(
        w,
        "- Lines read: {lines} from the rotated copies and {} written after the last rotation, {} \
         in all; rst-trace's exit line: {} (its events one per line, plus the folded lines).",
        rotation.tail_lines,
        lines + rotation.tail_lines,
        outcome.exit_line.as_deref().unwrap_or("none")
    );
    let _ = writeln!(
        w,
        "\n## Events by kind and cause\n\nFrom `--output` (a folded line counts the events it \
         stands for); {} events named a container; events came from {} network namespaces.\n\n\
         | kind cause | events |\n| --- | ---: |",
        rotation.container_events,
        rotation.namespaces.len()
    );
    for (cause, events) in &rotation.causes {
        let _ = writeln!(w, "| {cause} | {events} |");
    }
    let (expected, unexpected) = warnings(outcome);
    let _ = writeln!(w, "\n## rst-trace's stderr\n");
    if expected.is_empty() && unexpected.is_empty() {
        let _ = writeln!(w, "No warnings.");
    }
    for line in expected {
        let _ = writeln!(w, "- expected: `{line}`");
    }
    for line in unexpected {
        let _ = writeln!(w, "- **unexpected**: `{line}`");
    }
    w
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn draw_chart(rows: &[Minute], path: &Path) -> anyhow::Result<()> {
    let mut data = String::from("minute\trss_mib\tfds\n");
    for row in rows {
        let _ = writeln!(
            data,
            "{}\t{:.2}\t{}",
            row.minute,
            row.rss_kib as f64 / 1024.0,
            row.fds
        );
    }
    let data_path = crate::gnuplot::data_path(path);
    let max_rss = rows.iter().map(|r| r.rss_kib).max().unwrap_or(1) as f64 / 1024.0;
    let max_fds = rows.iter().map(|r| r.fds).max().unwrap_or(1) as f64;
    let script = format!(
        "set terminal pngcairo size 1000,500 font 'sans,10'\n\
         set output '{output}'\n\
         set title 'rst-trace under churn: resident memory and open descriptors per minute'\n\
         set xlabel 'minute'\n\
         set xtics {xstep}\n\
         set ylabel 'RSS (MiB)'\n\
         set y2label 'open fds'\n\
         set yrange [0:{rss_top}]\n\
         set y2range [0:{fds_top}]\n\
         set ytics nomirror\n\
         set y2tics\n\
         set grid ytics\n\
         set key outside bottom center horizontal\n\
         plot '{data}' using 1:2 with linespoints lw 2 title 'RSS (MiB)', \
         '' using 1:3 axes x1y2 with linespoints lw 2 title 'open fds'\n",
        output = path.display(),
        data = data_path.display(),
        xstep = if rows.len() > 10 { 5 } else { 1 },
        rss_top = (max_rss * 1.3).ceil().max(1.0),
        fds_top = (max_fds * 1.3).ceil().max(1.0),
    );
    crate::gnuplot::draw(path, &data, &script)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rss: &[u64]) -> Vec<Minute> {
        rss.iter()
            .enumerate()
            .map(|(i, rss)| Minute {
                minute: i + 1,
                rss_kib: *rss,
                fds: 20,
                ..Minute::default()
            })
            .collect()
    }

    #[test]
    fn flatness_compares_the_last_ten_minutes_with_minute_five() {
        // Minutes 1-4 grow (start-up), 5-15 stay within 5% of minute 5.
        let mut rss = vec![1000, 2000, 3000, 4000, 10_000];
        rss.extend([
            10_100, 10_200, 10_300, 10_400, 10_450, 10_480, 10_490, 10_400, 10_300, 10_200,
        ]);
        let verdict = flat(&rows(&rss), "RSS", |row| row.rss_kib);
        assert!(verdict.ok, "{}", verdict.found);
        assert_eq!(verdict.target, "RSS: minutes 6-15 within 5% of minute 5");
        rss.push(10_600);
        let verdict = flat(&rows(&rss), "RSS", |row| row.rss_kib);
        assert!(!verdict.ok, "{}", verdict.found);
        assert!(
            verdict.found.contains("+6.0% (minute 16)"),
            "{}",
            verdict.found
        );
    }

    #[test]
    fn short_runs_compare_with_the_first_minute() {
        let verdict = flat(&rows(&[1000, 1040]), "RSS", |row| row.rss_kib);
        assert!(verdict.ok);
        assert_eq!(verdict.target, "RSS: minutes 2-2 within 5% of minute 1");
        assert!(!flat(&rows(&[1000]), "RSS", |row| row.rss_kib).ok);
    }

    #[test]
    fn reads_the_exit_line() {
        assert_eq!(
            exit_totals("rst-trace: 108074 events reported, 0 lost, 2000 folded into 4 lines"),
            Some((108_074, 0, 2000, 4))
        );
        assert_eq!(exit_totals("rst-trace: tracing x"), None);
    }
}
