//! Listener drops no tracepoint shows (SYNs dropped at a full accept or SYN queue): from the
//! listener iterator ([`crate::listener_iter`]) where the kernel takes it, else by sampling every
//! network namespace ([`crate::listeners`]). A background watcher for the main trace, and the
//! `rst-trace backlog` command's per-listener report.

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
    listener_iter::{self, IterWatcher},
    listeners::{self, DropKind, ListenerDrop, Netns, Watcher},
};

/// How often the namespace list is walked again (sampling known namespaces is cheaper).
const RESCAN_NAMESPACES_EVERY: u32 = 5;

/// Samples the network namespaces each `interval` on a thread of its own, which enters each
/// namespace itself ([`listeners::Sampler`]: counters each tick, sockets only when a counter
/// moved), and sends the drops it finds. The thread ends when the receiver is dropped.
pub fn spawn_watcher(interval: Duration) -> mpsc::UnboundedReceiver<ListenerDrop> {
    let (sender, receiver) = mpsc::unbounded_channel();
    thread::spawn(move || {
        let mut sampler = match listeners::Sampler::new() {
            Ok(sampler) => sampler,
            Err(error) => {
                log::warn!("{error:#}: SYNs dropped at full queues are not reported");
                return;
            }
        };
        let mut watcher = Watcher::new();
        let mut namespaces: Vec<Netns> = Vec::new();
        let mut warned = HashSet::new();
        for round in 0u32.. {
            let rescan = round % RESCAN_NAMESPACES_EVERY == 0;
            if rescan {
                namespaces = listeners::network_namespaces();
                let alive: Vec<u64> = namespaces.iter().map(|ns| ns.inode).collect();
                watcher.retain(|inode| alive.contains(&inode));
                sampler.retain(|inode| alive.contains(&inode));
            }
            for netns in &namespaces {
                let sample = match sampler.sample(netns, rescan) {
                    Ok(Some(sample)) => sample,
                    Ok(None) => continue,
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

/// Turns passes of the listener iterator into drops on a thread of its own (reading a pass runs
/// the walk, and a namespace's counters may have to be looked for in /proc): the caller sends
/// each pass's file, one a second. The thread ends when either side is dropped.
pub fn spawn_iter_watcher() -> (
    std::sync::mpsc::Sender<std::fs::File>,
    mpsc::UnboundedReceiver<ListenerDrop>,
) {
    let (passes, incoming) = std::sync::mpsc::channel::<std::fs::File>();
    let (sender, receiver) = mpsc::unbounded_channel();
    thread::spawn(move || {
        let mut watcher = IterWatcher::new();
        let mut warned = false;
        while let Ok(file) = incoming.recv() {
            let pass = match listener_iter::read_pass(file) {
                Ok(pass) => pass,
                Err(error) => {
                    if !warned {
                        log::warn!("{error:#}: SYNs dropped at full queues may go unreported");
                        warned = true;
                    }
                    continue;
                }
            };
            log::debug!("listener iterator pass: {} listeners", pass.len());
            for drop in watcher.observe(pass) {
                if sender.send(drop).is_err() {
                    return;
                }
            }
        }
    });
    (passes, receiver)
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

/// Where `rst-trace backlog` finds listeners: the listener iterator where the kernel takes it,
/// else sampling every network namespace.
pub enum ListenerSource {
    // Boxed: the loaded object is large beside a watcher.
    Iterator(Box<crate::loader::ListenerIterator>, IterWatcher),
    Sampling(Watcher),
}

impl ListenerSource {
    /// The drops since the previous call, with each namespace's somaxconn where known; an error
    /// when nothing at all could be seen.
    fn drops(&mut self) -> anyhow::Result<Vec<(ListenerDrop, Option<u32>)>> {
        match self {
            Self::Iterator(iterator, watcher) => {
                let pass = listener_iter::read_pass(iterator.pass()?)?;
                Ok(watcher
                    .observe(pass)
                    .into_iter()
                    .map(|d| (d, None))
                    .collect())
            }
            Self::Sampling(watcher) => {
                let mut drops = Vec::new();
                let mut seen = 0;
                let mut why = None;
                for netns in listeners::network_namespaces() {
                    let sample = match listeners::sample(&netns) {
                        Ok(sample) => sample,
                        Err(error) => {
                            why.get_or_insert(error);
                            continue;
                        }
                    };
                    seen += 1;
                    let somaxconn = sample.somaxconn;
                    drops.extend(watcher.observe(sample).into_iter().map(|d| (d, somaxconn)));
                }
                if seen == 0 {
                    let why = why.map_or_else(
                        || "no network namespace found in /proc".to_string(),
                        |error| format!("{error:#}"),
                    );
                    anyhow::bail!(
                        "rst-trace backlog can see no listener: the listener iterator needs \
                         CAP_BPF and CAP_PERFMON, sampling needs CAP_SYS_ADMIN to enter each \
                         network namespace ({why})"
                    );
                }
                Ok(drops)
            }
        }
    }
}

/// `rst-trace backlog`: every `interval`, each listener on the host that dropped connections.
pub fn run(
    mut source: ListenerSource,
    interval: Duration,
    duration: Option<Duration>,
    json: bool,
    filter: &Filter,
    names: ContainerNames,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut attributor = Attributor::new(CgroupResolver::new()).with_container_names(names);
    let mut first = true;
    if !json {
        let how = match source {
            ListenerSource::Iterator(..) => "with the listener iterator",
            ListenerSource::Sampling(_) => "by entering each network namespace",
        };
        writeln!(
            out,
            "rst-trace backlog: reading every listener in every network namespace every {:.1} s \
             {how} (Ctrl-C to stop)",
            interval.as_secs_f64()
        )?;
        out.flush()?;
    }
    loop {
        let mut rows = Vec::new();
        for (drop, somaxconn) in source.drops()? {
            let Some(event) = attributor.listener_drop_event(&drop) else {
                continue;
            };
            if filter.keeps(&event) {
                rows.push(row(&drop, event, somaxconn));
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
