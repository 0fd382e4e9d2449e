//! Folded storms: the events the kernel programs counted instead of sending (see the kernel
//! crate's `fold` module), taken out once a second.
//!
//! The programs send the first `--fold-after` events of a key each second and count the rest per
//! CPU in one of two count maps (and each CPU's storm key of each record kind in a per-CPU slot
//! beside them), chosen by the epoch's low bit, with each key's first folded event in the
//! matching sample map. Taking them out flips the epoch, waits for programs that
//! read the old one to finish, then reads and empties the maps they left: nothing is counted
//! twice or lost between the read and the delete.

use std::{collections::HashMap as StdHashMap, thread, time::Duration};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use rst_trace_common::{FoldCount, FoldKey, FoldedEvents, HOT_SLOTS, HotCount, RawTracepoint};

/// How long a program that read the old epoch may still be counting into its map: programs run
/// for microseconds with migration disabled, so this is generous.
const GRACE: Duration = Duration::from_millis(2);

/// Default of `--fold-after`: events of one key sent one by one per second.
pub const DEFAULT_FOLD_AFTER: u32 = 20;

/// New keys per CPU per second past which the programs fold on the coarse key (without the
/// remote address): a flood from random source addresses still comes out as a few lines.
pub const COARSE_AFTER: u32 = 64;

/// One key's events counted in one epoch: how many, when, and the first of them as the
/// programs would have sent it.
pub struct FoldedSample {
    pub count: u64,
    /// CLOCK_MONOTONIC of the first and last event counted.
    pub first_ns: u64,
    pub last_ns: u64,
    /// The service end (the port listened on or connected to) is this host's end.
    pub service_local: bool,
    /// 0: the key as it is; 1: the remote address was left out (a flood from many sources);
    /// 2: the service port too (a scan of many ports).
    pub coarse: u8,
    /// The first folded event's record, to be decoded like any other.
    pub record: Vec<u8>,
}

/// One epoch's maps: each folded key's sample, and its counts per CPU.
pub struct EpochMaps {
    pub samples: HashMap<MapData, FoldKey, FoldedEvents>,
    pub counts: PerCpuHashMap<MapData, FoldKey, FoldCount>,
}

/// The kernel programs' folded maps and their epoch.
pub struct FoldReader {
    even: EpochMaps,
    odd: EpochMaps,
    /// Each CPU's hot counts (one key per record kind), `HOT_SLOTS` per epoch.
    hot: PerCpuArray<MapData, HotCount>,
    epoch: Array<MapData, u32>,
    current: u32,
}

impl FoldReader {
    pub fn new(
        even: EpochMaps,
        odd: EpochMaps,
        hot: PerCpuArray<MapData, HotCount>,
        epoch: Array<MapData, u32>,
    ) -> Self {
        Self {
            even,
            odd,
            hot,
            epoch,
            current: 0,
        }
    }

    /// Flips the epoch and takes out what the programs counted in the one before.
    pub async fn take(&mut self) -> anyhow::Result<Vec<FoldedSample>> {
        let previous = self.flip()?;
        tokio::time::sleep(GRACE).await;
        self.empty(previous)
    }

    /// Takes out everything, once the programs are detached (at the end of a trace).
    pub fn take_all(&mut self) -> anyhow::Result<Vec<FoldedSample>> {
        let previous = self.flip()?;
        thread::sleep(GRACE);
        let mut folded = self.empty(previous)?;
        folded.extend(self.empty(self.current)?);
        Ok(folded)
    }

    /// Points the programs at the other map; returns the epoch they counted in until now.
    fn flip(&mut self) -> anyhow::Result<u32> {
        let previous = self.current;
        self.current ^= 1;
        self.epoch
            .set(0, self.current, 0)
            .context("switching the folded-events map")?;
        Ok(previous)
    }

    /// Reads and deletes every key of one epoch's maps and empties its hot slots: a key's
    /// counts on every CPU added up, with its sample.
    fn empty(&mut self, epoch: u32) -> anyhow::Result<Vec<FoldedSample>> {
        let mut totals = self.take_hot(epoch)?;
        let maps = if epoch & 1 == 1 {
            &mut self.odd
        } else {
            &mut self.even
        };
        let keys = maps
            .counts
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .context("reading the folded-counts map")?;
        for key in keys {
            let counts = maps.counts.get(&key, 0).context("reading a folded count")?;
            if let Some(sum) = total(counts.iter()) {
                add(&mut totals, key, sum);
            }
            maps.counts
                .remove(&key)
                .context("emptying the folded-counts map")?;
        }
        let mut folded = Vec::with_capacity(totals.len());
        for (key, total) in totals {
            // A key has counts only once its sample is stored (see the kernel's `fold::count`).
            match maps.samples.get(&key, 0) {
                Ok(sample) => folded.push(FoldedSample {
                    count: total.count,
                    first_ns: total.first_ns,
                    last_ns: total.last_ns,
                    service_local: key.service_local != 0,
                    coarse: key.coarse,
                    record: record_bytes(&sample.record),
                }),
                Err(error) => log::warn!(
                    "{} folded events have no sample to describe them: {error}",
                    total.count
                ),
            }
        }
        // Samples whose counts could not be stored (a full map sent those events one by one).
        let samples = maps
            .samples
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .context("reading the folded-samples map")?;
        for key in samples {
            maps.samples
                .remove(&key)
                .context("emptying the folded-samples map")?;
        }
        // Keys in the order the kernel first folded them.
        folded.sort_by_key(|sample| sample.first_ns);
        Ok(folded)
    }

    /// Every CPU's hot counts of one epoch, by key; the slots are emptied.
    fn take_hot(&mut self, epoch: u32) -> anyhow::Result<StdHashMap<FoldKey, FoldCount>> {
        let mut totals = StdHashMap::new();
        let first = if epoch & 1 == 1 { HOT_SLOTS } else { 0 };
        for index in first..first + HOT_SLOTS {
            let values = self
                .hot
                .get(&index, 0)
                .context("reading a hot folded count")?;
            let cpus = values.len();
            let counted: Vec<&HotCount> = values.iter().filter(|v| v.count.count > 0).collect();
            for value in &counted {
                add(&mut totals, value.key, value.count);
            }
            if !counted.is_empty() {
                let empty = PerCpuValues::try_from(vec![HotCount::default(); cpus])
                    .context("emptying a hot folded count")?;
                self.hot
                    .set(index, empty, 0)
                    .context("emptying a hot folded count")?;
            }
        }
        Ok(totals)
    }
}

/// Adds one key's count to the totals by key.
fn add(totals: &mut StdHashMap<FoldKey, FoldCount>, key: FoldKey, count: FoldCount) {
    totals.entry(key).or_default().add(&count);
}

/// One key's counts on every CPU as one: their sum, the earliest first and the latest last
/// event; `None` when no CPU counted any.
fn total<'a>(counts: impl Iterator<Item = &'a FoldCount>) -> Option<FoldCount> {
    let mut total = FoldCount::default();
    for count in counts.filter(|count| count.count > 0) {
        total.add(count);
    }
    (total.count > 0).then_some(total)
}

fn record_bytes(record: &RawTracepoint) -> Vec<u8> {
    // SAFETY: RawTracepoint is plain old data without padding (see rst-trace-common's layout
    // test); its bytes are what the ring buffer would have held.
    unsafe {
        std::slice::from_raw_parts(
            (record as *const RawTracepoint).cast::<u8>(),
            size_of::<RawTracepoint>(),
        )
    }
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(count: u64, first_ns: u64, last_ns: u64) -> FoldCount {
        FoldCount {
            count,
            first_ns,
            last_ns,
        }
    }

    #[test]
    fn counts_of_every_cpu_add_up() {
        let cpus = [count(5, 200, 900), count(0, 0, 0), count(3, 100, 700)];
        let sum = total(cpus.iter()).expect("counted");
        assert_eq!((sum.count, sum.first_ns, sum.last_ns), (8, 100, 900));
        assert!(total([count(0, 0, 0)].iter()).is_none());
    }

    #[test]
    fn a_keys_hot_slots_and_map_counts_add_up() {
        let key = FoldKey {
            service_port: 20001,
            ..FoldKey::default()
        };
        let other = FoldKey {
            service_port: 20002,
            ..key
        };
        let mut totals = StdHashMap::new();
        add(&mut totals, key, count(4, 300, 800));
        add(&mut totals, other, count(1, 50, 50));
        add(&mut totals, key, count(6, 100, 500));
        let sum = totals[&key];
        assert_eq!((sum.count, sum.first_ns, sum.last_ns), (10, 100, 800));
        assert_eq!(totals[&other].count, 1);
    }
}
