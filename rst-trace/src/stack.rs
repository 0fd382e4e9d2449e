//! `--stack`: the kernel stack where each reset or drop was generated, symbolized from
//! `/proc/kallsyms` (`tcp_v4_send_reset+0x1a5`).

use std::fs;

use anyhow::Context as _;
use aya::maps::{MapData, StackTraceMap};

/// Reads the stack a record names (its decoded `stack_id`) from the `STACKS` map.
pub struct StackReader {
    map: StackTraceMap<MapData>,
    symbols: KernelSymbols,
}

impl StackReader {
    pub fn new(map: StackTraceMap<MapData>) -> anyhow::Result<Self> {
        let text = fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
        let symbols = KernelSymbols::parse(&text);
        if symbols.is_empty() {
            log::warn!(
                "/proc/kallsyms shows no addresses (kernel.kptr_restrict): stacks are printed as \
                 raw addresses"
            );
        }
        Ok(Self { map, symbols })
    }

    /// The symbolized stack `id`, innermost frame first.
    pub fn read(&mut self, id: u32) -> Option<Vec<String>> {
        let stack = self.map.get(&id, 0).ok()?;
        Some(
            stack
                .frames()
                .iter()
                .map(|frame| self.symbols.describe(frame.ip))
                .collect(),
        )
    }
}

/// Kernel text symbols sorted by address.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    symbols: Vec<(u64, String)>,
}

impl KernelSymbols {
    /// Parses `/proc/kallsyms` (`ffffffff81000000 T _text [module]`), keeping text symbols.
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let address = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (address != 0 && matches!(kind, "T" | "t")).then(|| (address, name.to_string()))
            })
            .collect();
        symbols.sort_unstable_by_key(|(address, _)| *address);
        Self { symbols }
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// `name+0xoffset`, or the raw address when no symbol precedes it.
    pub fn describe(&self, ip: u64) -> String {
        let index = self.symbols.partition_point(|(address, _)| *address <= ip);
        match index.checked_sub(1).and_then(|i| self.symbols.get(i)) {
            Some((address, name)) => format!("{name}+{:#x}", ip - address),
            None => format!("{ip:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizes_addresses_to_the_preceding_text_symbol() {
        let symbols = KernelSymbols::parse(
            "ffffffff81a00000 T tcp_v4_send_reset\n\
             ffffffff81a00400 t tcp_v4_rcv\n\
             ffffffff81a00300 D some_data\n\
             0000000000000000 T hidden\n\
             ffffffffc0100000 t nf_hook_slow\t[nf_tables]\n",
        );
        assert_eq!(
            symbols.describe(0xffffffff81a001a5),
            "tcp_v4_send_reset+0x1a5"
        );
        assert_eq!(symbols.describe(0xffffffff81a00400), "tcp_v4_rcv+0x0");
        assert_eq!(symbols.describe(0xffffffffc0100010), "nf_hook_slow+0x10");
        assert_eq!(symbols.describe(0x1000), "0x1000");
        assert!(KernelSymbols::parse("0000000000000000 T x\n").is_empty());
    }
}
