//! `rst-trace bench-reference` (hidden): a benchmark aid, not a feature.
//!
//! `cargo xtask bench` needs a yardstick for what rst-trace's `tcp_send_reset` program costs in
//! the kernel: the least any reset tracer must do on the same tracepoint. This command loads the
//! embedded object with this kernel's offsets, attaches only its `bench_reference` program (read
//! the same two record fields, submit a 64-byte ring buffer record without a wakeup), drains and
//! counts the records on a timer until stopped, and prints the count. None of rst-trace's own
//! programs is attached.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    EbpfLoader,
    maps::{MapData, RingBuf},
    programs::TracePoint,
};
use rst_trace_common::NO_OFFSET;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use crate::{loader::EBPF_OBJECT, privileges, sources::KernelSupport};

/// As large as rst-trace's default: the reference must never find its buffer full, or it would
/// be measured doing less than it should.
const RING_BUFFER_BYTES: u32 = 4 * 1024 * 1024;

/// The program never wakes the reader; it drains this often (4 MiB holds over 50,000 records:
/// far more than arrive in this time at any rate a machine makes).
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Runs until SIGINT, SIGTERM or `duration`, then prints how many records arrived.
pub fn run(duration: Option<Duration>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?
        .block_on(drain(duration))
}

async fn drain(duration: Option<Duration>) -> anyhow::Result<()> {
    privileges::ensure_can_trace()?;
    let support = KernelSupport::probe()?;
    if support.offsets.send_reset_skaddr == NO_OFFSET
        || support.offsets.send_reset_skbaddr == NO_OFFSET
    {
        bail!("this kernel's tcp:tcp_send_reset record has no skaddr or skbaddr field to read");
    }
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", &support.offsets, true)
        .map_max_entries("BENCH_EVENTS", RING_BUFFER_BYTES)
        .load(EBPF_OBJECT)
        .context("the kernel refused rst-trace's BPF maps")?;
    let program: &mut TracePoint = ebpf
        .program_mut("bench_reference")
        .ok_or_else(|| anyhow!("program bench_reference missing from the object"))?
        .try_into()?;
    program
        .load()
        .context("the kernel refused program bench_reference")?;
    program
        .attach("tcp", "tcp_send_reset")
        .context("attaching bench_reference to tcp:tcp_send_reset")?;
    let map = ebpf
        .take_map("BENCH_EVENTS")
        .ok_or_else(|| anyhow!("BENCH_EVENTS map missing"))?;
    let mut ring: RingBuf<MapData> = RingBuf::try_from(map)?;

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = duration.map(|duration| Instant::now() + duration);
    eprintln!(
        "rst-trace: bench-reference: tracing tcp:tcp_send_reset with the reference program only \
         (a benchmark aid)"
    );
    let mut records = 0u64;
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    loop {
        tokio::select! {
            _ = drain.tick() => {
                while ring.next().is_some() {
                    records += 1;
                }
            }
            _ = async {
                match deadline {
                    Some(deadline) => sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    while ring.next().is_some() {
        records += 1;
    }
    eprintln!("rst-trace: bench-reference: {records} records");
    Ok(())
}
