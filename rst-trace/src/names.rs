//! Names of kernel enum values (reset reasons, TCP states) as the running kernel numbers them.
//!
//! Numbers change between kernels (values are inserted and reordered), so nothing here is a table
//! in our source: names come from the tracefs `print fmt` tables first, and from BTF where tracefs
//! names a value by symbol only.

use std::collections::BTreeMap;

use crate::{
    kernel_btf::KernelBtf,
    kernel_enums::{DropReason, ResetReason, TcpState},
    tracefs::EventFormat,
};

/// Number -> name for one kernel enum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    names: BTreeMap<u64, String>,
}

impl NameTable {
    /// Builds a table, removing `prefix` from each name (`TCP_ESTABLISHED` -> `ESTABLISHED`).
    pub fn new(entries: impl IntoIterator<Item = (u64, String)>, prefix: &str) -> Self {
        let names = entries
            .into_iter()
            .map(|(value, name)| {
                let short = name.strip_prefix(prefix).unwrap_or(&name).to_string();
                (value, short)
            })
            .collect();
        Self { names }
    }

    pub fn get(&self, value: u64) -> Option<&str> {
        self.names.get(&value).map(String::as_str)
    }

    /// The number the running kernel uses for `name`.
    pub fn value_of(&self, name: &str) -> Option<u64> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(v, _)| *v)
    }

    /// The name of `value`, or `UNKNOWN(value)` for a number this kernel did not name.
    pub fn describe(&self, value: u64) -> String {
        self.get(value)
            .map_or_else(|| format!("UNKNOWN({value})"), str::to_string)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// Everything rst-trace names in its output.
#[derive(Debug, Clone, Default)]
pub struct KernelNames {
    /// `enum sk_rst_reason` (6.10+), without the `SK_RST_REASON_` prefix.
    pub reset_reasons: NameTable,
    /// TCP states, without the `TCP_` prefix.
    pub tcp_states: NameTable,
    /// `enum skb_drop_reason`, without the `SKB_DROP_REASON_` prefix.
    pub drop_reasons: NameTable,
}

impl KernelNames {
    /// `send_reset` is the `tcp:tcp_send_reset` format, `set_state` the `sock:inet_sock_set_state`
    /// one (its state table is numeric, unlike tcp_send_reset's).
    pub fn from_kernel(
        send_reset: Option<&EventFormat>,
        set_state: Option<&EventFormat>,
        btf: Option<&KernelBtf>,
    ) -> Self {
        let mut reset_reasons = NameTable::new(
            send_reset
                .map(|f| f.symbolic_names("reason"))
                .unwrap_or_default(),
            "",
        );
        if reset_reasons.is_empty()
            && send_reset.is_some_and(|f| f.field("reason").is_some())
            && let Some(values) = btf.and_then(|btf| btf.enum_values("sk_rst_reason"))
        {
            reset_reasons = NameTable::new(swap(values), "SK_RST_REASON_");
        }

        let mut tcp_states = NameTable::new(
            set_state
                .map(|f| f.symbolic_names("newstate"))
                .unwrap_or_default(),
            "TCP_",
        );
        if tcp_states.is_empty()
            && let Some(values) = btf.and_then(|btf| btf.enum_with_member("TCP_ESTABLISHED"))
        {
            tcp_states = NameTable::new(swap(values), "TCP_");
        }
        Self {
            reset_reasons,
            tcp_states,
            drop_reasons: NameTable::default(),
        }
    }

    /// Drop reason names from skb:kfree_skb's `print fmt`, or BTF.
    pub fn add_drop_reasons(&mut self, kfree_skb: Option<&EventFormat>, btf: Option<&KernelBtf>) {
        self.drop_reasons = NameTable::new(
            kfree_skb
                .map(|f| f.symbolic_names("reason"))
                .unwrap_or_default(),
            "",
        );
        if self.drop_reasons.is_empty()
            && let Some(values) = btf.and_then(|btf| btf.enum_values("skb_drop_reason"))
        {
            self.drop_reasons = NameTable::new(swap(values), "SKB_DROP_REASON_");
        }
    }
}

impl KernelNames {
    /// The TCP state the running kernel numbers `value`.
    pub fn tcp_state(&self, value: u64) -> TcpState {
        resolve(
            &self.tcp_states,
            value,
            TcpState::from_name,
            TcpState::Other,
        )
    }

    /// The reset reason the running kernel numbers `value`.
    pub fn reset_reason(&self, value: u64) -> ResetReason {
        resolve(
            &self.reset_reasons,
            value,
            ResetReason::from_name,
            ResetReason::Other,
        )
    }

    /// The drop reason the running kernel numbers `value`.
    pub fn drop_reason(&self, value: u64) -> DropReason {
        resolve(
            &self.drop_reasons,
            value,
            DropReason::from_name,
            DropReason::Other,
        )
    }
}

/// The variant of the name `table` gives `value`; `UNKNOWN(value)` when it gives none.
fn resolve<T>(
    table: &NameTable,
    value: u64,
    from_name: fn(&str) -> T,
    other: fn(String) -> T,
) -> T {
    table
        .get(value)
        .map_or_else(|| other(format!("UNKNOWN({value})")), from_name)
}

fn swap(values: Vec<(String, u64)>) -> impl Iterator<Item = (u64, String)> {
    values.into_iter().map(|(name, value)| (value, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracefs::tests::fixture;

    #[test]
    fn names_come_from_the_kernel_formats() {
        let send = fixture("6.18", "tcp__tcp_send_reset");
        let set_state = fixture("6.18", "sock__inet_sock_set_state");
        let names = KernelNames::from_kernel(Some(&send), Some(&set_state), None);
        assert_eq!(names.reset_reasons.get(1), Some("NO_SOCKET"));
        assert_eq!(names.reset_reasons.value_of("TCP_ABORT_ON_CLOSE"), Some(11));
        assert_eq!(names.tcp_states.get(2), Some("SYN_SENT"));
        assert_eq!(names.tcp_states.get(6), Some("TIME_WAIT"));
        assert_eq!(names.tcp_states.describe(99), "UNKNOWN(99)");
        assert_eq!(names.tcp_state(2), TcpState::SynSent);
        assert_eq!(names.tcp_state(99).name(), "UNKNOWN(99)");
        assert_eq!(names.reset_reason(1), ResetReason::NoSocket);
    }

    #[test]
    fn kernels_without_a_reset_reason_have_no_reason_names() {
        let send = fixture("6.1", "tcp__tcp_send_reset");
        let set_state = fixture("6.1", "sock__inet_sock_set_state");
        let names = KernelNames::from_kernel(Some(&send), Some(&set_state), None);
        assert!(names.reset_reasons.is_empty());
        assert_eq!(names.tcp_states.len(), 12);
    }
}
