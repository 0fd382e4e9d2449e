//! Listener drops no tracepoint shows (SYNs dropped at a full accept or SYN queue), found by
//! sampling every network namespace ([`crate::listeners`]): a background watcher for the main
//! trace, and the `rst-trace backlog` command's per-listener report.

use std::{
    collections::HashSet,
    io, thread,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    attribute::Attributor,
    cause::Cause,
    container::Container,
    container_names::ContainerNames,
    enrich::CgroupResolver,
    escape::for_terminal,
    event::{Event, Process},
    filter::Filter,
    listeners::{self, DropKind, ListenerDrop, Netns, Watcher},
};

/// How often the namespace list is walked again (sampling known namespaces is cheaper).
const RESCAN_NAMESPACES_EVERY: u32 = 5;

/// Samples every network namespace each `interval` on a thread of its own (sock_diag needs a
/// thread that enters each namespace) and sends the drops it finds. The thread ends when the
/// receiver is dropped.
pub fn spawn_watcher(interval: Duration) -> mpsc::UnboundedReceiver<ListenerDrop> {
    let (sender, receiver) = mpsc::unbounded_channel();
    thread::spawn(move || {
        let mut watcher = Watcher::new();
        let mut namespaces: Vec<Netns> = Vec::new();
        let mut warned = HashSet::new();
        for round in 0u32.. {
            if round % RESCAN_NAMESPACES_EVERY == 0 {
                namespaces = listeners::network_namespaces();
                let alive: Vec<u64> = namespaces.iter().map(|ns| ns.inode).collect();
                watcher.retain(|inode| alive.contains(&inode));
            }
            for netns in &namespaces {
                let sample = match listeners::sample(netns) {
                    Ok(sample) => sample,
                    // A namespace can vanish between listing and sampling; one that cannot be
                    // read at all (no sock_diag in this kernel) is said once.
                    Err(error) => {
                        if warned.insert(netns.inode) && netns.path.exists() {
                            log::warn!(
                                "cannot read the listeners of network namespace {} ({error:#}): \
                                 SYNs dropped at full queues there are not reported",
                                netns.inode
                            );
                        }
                        continue;
                    }
                };
                for drop in watcher.observe(sample) {
                    if sender.send(drop).is_err() {
                        return;
                    }
                }
            }
            thread::sleep(interval);
        }
    });
    receiver
}

/// A row of `rst-trace backlog`.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogRow {
    pub time: String,
    pub netns: u64,
    pub container: Option<Container>,
    pub listen: String,
    pub process: Option<Process>,
    pub cause: Cause,
    pub accept_queue: QueueView,
    pub syn_queue: u32,
    pub drops: u64,
    pub counter: &'static str,
    pub counter_delta: u64,
    pub somaxconn: Option<u32>,
    pub verdict: String,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueueView {
    pub len: u32,
    pub max: u32,
}

/// `rst-trace backlog`: every `interval`, each listener on the host that dropped connections.
pub fn run(
    interval: Duration,
    duration: Option<Duration>,
    json: bool,
    filter: &Filter,
    names: ContainerNames,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut watcher = Watcher::new();
    let mut attributor = Attributor::new(CgroupResolver::new()).with_container_names(names);
    let mut first = true;
    if !json {
        writeln!(
            out,
            "rst-trace backlog: sampling every listener in every network namespace every {:.1} s \
             (Ctrl-C to stop)",
            interval.as_secs_f64()
        )?;
        out.flush()?;
    }
    loop {
        let mut rows = Vec::new();
        for netns in listeners::network_namespaces() {
            let Ok(sample) = listeners::sample(&netns) else {
                continue;
            };
            let somaxconn = sample.somaxconn;
            for drop in watcher.observe(sample) {
                let Some(event) = attributor.listener_drop_event(&drop) else {
                    continue;
                };
                if filter.keeps(&event) {
                    rows.push(row(&drop, event, somaxconn));
                }
            }
        }
        if !first {
            for row in &rows {
                if json {
                    serde_json::to_writer(&mut *out, row)?;
                    writeln!(out)?;
                } else {
                    write_row(out, row)?;
                }
            }
            out.flush()?;
        }
        first = false;
        if duration.is_some_and(|duration| started.elapsed() + interval > duration) {
            return Ok(());
        }
        thread::sleep(interval);
    }
}

fn row(drop: &ListenerDrop, event: Event, somaxconn: Option<u32>) -> BacklogRow {
    let listener = &drop.listener;
    let verdict = match drop.kind {
        DropKind::AcceptQueueFull => format!(
            "accept queue full ({}/{}): accept faster, or raise the listen() backlog (now {}) \
             and net.core.somaxconn ({}) in this namespace",
            listener.accept_len,
            listener.accept_max,
            listener.accept_max,
            somaxconn.map_or_else(|| "?".to_string(), |v| v.to_string())
        ),
        DropKind::SynQueueFull => format!(
            "SYN queue full ({} waiting) with syncookies off: enable net.ipv4.tcp_syncookies, or \
             raise net.ipv4.tcp_max_syn_backlog and the listen() backlog",
            listener.syn_queue
        ),
    };
    BacklogRow {
        time: crate::event::format_rfc3339_nanos(event.time),
        netns: listener.netns,
        container: event.container,
        listen: listener.local.to_string(),
        process: event.process,
        cause: event.cause.unwrap_or(Cause::Other),
        accept_queue: QueueView {
            len: listener.accept_len,
            max: listener.accept_max,
        },
        syn_queue: listener.syn_queue,
        drops: drop.drops,
        counter: drop.counter,
        counter_delta: drop.counter_delta,
        somaxconn,
        verdict,
        note: drop.note.clone(),
    }
}

fn write_row(out: &mut impl io::Write, row: &BacklogRow) -> io::Result<()> {
    let process = row.process.as_ref().map_or_else(
        || "owner unknown".to_string(),
        |p| match p.ns_pid {
            Some(ns_pid) => format!("{} (pid {}, {} in its namespace)", p.comm, p.pid, ns_pid),
            None => format!("{} (pid {})", p.comm, p.pid),
        },
    );
    let container = row.container.as_ref().map_or_else(
        || "no container".to_string(),
        |c| format!("{} {}", c.runtime, c.label()),
    );
    // The process and container names are other users' choice: escaped as the line is made.
    let line = format!(
        "{} {} netns {} listen {} {}: {} dropped ({} +{}), accept queue {}/{}, SYN queue {}",
        row.time.get(11..19).unwrap_or(&row.time),
        container,
        row.netns,
        row.listen,
        process,
        row.drops,
        row.counter,
        row.counter_delta,
        row.accept_queue.len,
        row.accept_queue.max,
        row.syn_queue
    );
    writeln!(out, "{}", for_terminal(&line))?;
    writeln!(out, "    -> {}", for_terminal(&row.verdict))?;
    if let Some(note) = &row.note {
        writeln!(out, "    note: {}", for_terminal(note))?;
    }
    Ok(())
}
