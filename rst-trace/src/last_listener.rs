//! Who listened on an address: the kernel's record of the last listener on every (network
//! namespace, address, port), read when an event needs it. The set-state program writes it at
//! every listen() and every listener close, unfiltered and unfolded, so no close is missed.
//!
//! Two questions use it: a refused connection (`port_closed`, `connection_refused`) asks which
//! listener went away and when; a connection still waiting in a listener's accept queue (no
//! process has accepted it) asks whose listener holds it. Both look up the exact address first,
//! then the wildcard ones a listener could have been bound to (`0.0.0.0`, `::`, and for IPv4 a
//! dual-stack `::` listener).

use std::net::IpAddr;

use aya::maps::{HashMap as BpfHashMap, MapData};
use rst_trace_common::{ListenerHistory, ListenerKey, listener_flags};

use crate::{decoded::Task, event::Endpoint};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Where listener records are read from: the kernel's `LAST_LISTENERS` map, or a table in tests.
pub trait ListenerTable {
    fn get(&self, key: &ListenerKey) -> Option<ListenerHistory>;
}

impl ListenerTable for BpfHashMap<MapData, ListenerKey, ListenerHistory> {
    fn get(&self, key: &ListenerKey) -> Option<ListenerHistory> {
        BpfHashMap::get(self, key, 0).ok()
    }
}

impl ListenerTable for std::collections::HashMap<ListenerKey, ListenerHistory> {
    fn get(&self, key: &ListenerKey) -> Option<ListenerHistory> {
        std::collections::HashMap::get(self, key).copied()
    }
}

/// The listener that last stopped listening on an address before an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The process that closed it.
    pub closer: Task,
    /// CLOCK_MONOTONIC of the close.
    pub closed_ns: u64,
}

/// What the record says about the listeners on an address before an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum History {
    /// Nothing to go by: no record to read, or the event has no port or namespace.
    Unknown,
    /// No listener closed there since rst-trace started.
    NoneSinceStart,
    Closed(Closed),
}

/// The keys a listener accepting connections to `end` may have been recorded under, exact
/// address first.
pub fn candidate_keys(netns: u32, end: Endpoint) -> Vec<ListenerKey> {
    let key = |family, addr: [u8; 16]| ListenerKey {
        netns,
        family,
        port: end.port,
        addr,
    };
    let mut v4 = [0u8; 16];
    match end.addr {
        IpAddr::V4(ip) => {
            v4[..4].copy_from_slice(&ip.octets());
            vec![
                key(AF_INET, v4),
                key(AF_INET, [0; 16]),
                // A dual-stack IPv6 listener takes IPv4 connections too.
                key(AF_INET6, ip.to_ipv6_mapped().octets()),
                key(AF_INET6, [0; 16]),
            ]
        }
        IpAddr::V6(ip) => vec![key(AF_INET6, ip.octets()), key(AF_INET6, [0; 16])],
    }
}

/// Whether the record's listener was listening at `at_ns`: it listened before then and its
/// last close (kept across a new listen()) came before that listen.
fn listening_at(record: &ListenerHistory, at_ns: u64) -> bool {
    record.owner.since_ns != 0
        && record.owner.since_ns <= at_ns
        && record.closed_ns < record.owner.since_ns
}

/// Addresses whose records are kept between lookups.
const CACHED_ADDRESSES: usize = 1024;

/// The records behind one address as read at `read_ns` (CLOCK_MONOTONIC).
struct Read {
    read_ns: u64,
    records: Vec<ListenerHistory>,
}

/// Reads the records behind one address. A storm of refused connects to one port would read
/// the same keys for every event: records read after an event happened already hold every
/// close before it, so they answer for it without another read.
pub struct Listeners {
    table: Option<Box<dyn ListenerTable + Send>>,
    cache: std::collections::HashMap<(u64, Endpoint), Read>,
}

impl Listeners {
    /// No record to read (`rst-trace backlog`, tests): every answer is unknown.
    pub fn none() -> Self {
        Self {
            table: None,
            cache: std::collections::HashMap::new(),
        }
    }

    pub fn new(table: Box<dyn ListenerTable + Send>) -> Self {
        Self {
            table: Some(table),
            cache: std::collections::HashMap::new(),
        }
    }

    /// The records behind `end`, read at or after `at_ns`.
    fn records(&mut self, netns: u64, end: Endpoint, at_ns: u64) -> Option<&[ListenerHistory]> {
        let table = self.table.as_ref()?;
        let key_netns = u32::try_from(netns).ok()?;
        if end.port == 0 {
            return None;
        }
        let fresh = self
            .cache
            .get(&(netns, end))
            .is_some_and(|read| read.read_ns >= at_ns);
        if !fresh {
            if self.cache.len() >= CACHED_ADDRESSES {
                self.cache.clear();
            }
            // Taken before reading: a close after this instant may or may not be in the read.
            let read_ns = monotonic_ns();
            // An IPv6-only listener never took the IPv4 connections its wildcard key covers.
            let ipv4 = end.addr.is_ipv4();
            let records = candidate_keys(key_netns, end)
                .iter()
                .filter_map(|key| table.get(key))
                .filter(|record| !(ipv4 && record.flags & listener_flags::IPV6_ONLY != 0))
                .collect();
            self.cache.insert((netns, end), Read { read_ns, records });
        }
        self.cache
            .get(&(netns, end))
            .map(|read| read.records.as_slice())
    }

    /// The last listener closed on `end` (in `netns`) before `at_ns`, for a connection refused
    /// there at `at_ns`.
    pub fn closed_before(
        &mut self,
        netns: Option<u64>,
        end: Option<Endpoint>,
        at_ns: u64,
    ) -> History {
        let (Some(netns), Some(end)) = (netns, end) else {
            return History::Unknown;
        };
        let Some(records) = self.records(netns, end, at_ns) else {
            return History::Unknown;
        };
        records
            .iter()
            .filter(|record| record.closed_ns != 0 && record.closed_ns <= at_ns)
            // A record that says its listener was listening then is about another address the
            // connection did not reach (an IPv6-only listener, for one).
            .filter(|record| !listening_at(record, at_ns))
            .filter_map(|record| {
                Some(Closed {
                    closer: Task::from_owner(&record.closer)?,
                    closed_ns: record.closed_ns,
                })
            })
            .max_by_key(|closed| closed.closed_ns)
            .map_or(History::NoneSinceStart, History::Closed)
    }

    /// The process that listens on `end` (in `netns`) at `at_ns`: the owner of a connection no
    /// process has accepted yet is the listener's.
    pub fn listener_of(
        &mut self,
        netns: Option<u64>,
        end: Option<Endpoint>,
        at_ns: u64,
    ) -> Option<Task> {
        let records = self.records(netns?, end?, at_ns)?;
        records
            .iter()
            .filter(|record| record.closed_ns < record.owner.since_ns)
            .find_map(|record| Task::from_owner(&record.owner))
    }
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rst_trace_common::{COMM_LEN, Owner};

    use super::*;

    const NETNS: u32 = 4026531840;
    const S: u64 = 1_000_000_000;

    fn owner(tgid: u32, name: &str, since_ns: u64) -> Owner {
        let mut comm = [0u8; COMM_LEN];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        Owner {
            tgid,
            pid: tgid,
            since_ns,
            comm,
            ..Owner::default()
        }
    }

    fn end(text: &str) -> Endpoint {
        Endpoint::from(text.parse::<std::net::SocketAddr>().unwrap())
    }

    fn key_of(text: &str) -> ListenerKey {
        candidate_keys(NETNS, end(text))[0]
    }

    /// A listener that listened at `listened_s` and was closed at `closed_s` (0: still open).
    fn record(pid: u32, listened_s: u64, closed_s: u64) -> ListenerHistory {
        ListenerHistory {
            sk: 1,
            owner: owner(pid, "server", listened_s * S),
            closer: if closed_s == 0 {
                Owner::default()
            } else {
                owner(pid, "server", closed_s * S)
            },
            closed_ns: closed_s * S,
            ..ListenerHistory::default()
        }
    }

    fn v6only(record: ListenerHistory) -> ListenerHistory {
        ListenerHistory {
            flags: listener_flags::IPV6_ONLY,
            ..record
        }
    }

    fn listeners(records: &[(&str, ListenerHistory)]) -> Listeners {
        let table: HashMap<ListenerKey, ListenerHistory> = records
            .iter()
            .map(|(addr, record)| (key_of(addr), *record))
            .collect();
        Listeners::new(Box::new(table))
    }

    fn closer_pid(history: History) -> Option<(u32, u64)> {
        match history {
            History::Closed(closed) => Some((closed.closer.pid, closed.closed_ns / S)),
            _ => None,
        }
    }

    #[test]
    fn finds_the_last_close_on_the_address_or_a_wildcard() {
        let at = 10 * S;
        // (case, records by address, refused address, closer's pid and close time in seconds)
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, ListenerHistory)>,
            &'a str,
            Option<(u32, u64)>,
        );
        let cases: Vec<Case> = vec![
            (
                "exact address",
                vec![("127.0.0.1:9001", record(7, 1, 5))],
                "127.0.0.1:9001",
                Some((7, 5)),
            ),
            (
                "bound to 0.0.0.0",
                vec![("0.0.0.0:9001", record(8, 1, 6))],
                "127.0.0.1:9001",
                Some((8, 6)),
            ),
            (
                "dual-stack ::",
                vec![("[::]:9001", record(9, 1, 4))],
                "127.0.0.1:9001",
                Some((9, 4)),
            ),
            (
                "IPv6 to ::",
                vec![("[::]:9001", record(9, 1, 4))],
                "[::1]:9001",
                Some((9, 4)),
            ),
            (
                "IPv6-only :: takes no IPv4",
                vec![("[::]:9001", v6only(record(9, 1, 4)))],
                "127.0.0.1:9001",
                None,
            ),
            (
                "IPv6-only :: to IPv6",
                vec![("[::]:9001", v6only(record(9, 1, 4)))],
                "[::1]:9001",
                Some((9, 4)),
            ),
            (
                "the later of two",
                vec![
                    ("127.0.0.1:9001", record(7, 1, 5)),
                    ("0.0.0.0:9001", record(8, 1, 6)),
                ],
                "127.0.0.1:9001",
                Some((8, 6)),
            ),
            (
                "another port",
                vec![("127.0.0.1:9002", record(7, 1, 5))],
                "127.0.0.1:9001",
                None,
            ),
            (
                "still listening",
                vec![("127.0.0.1:9001", record(7, 1, 0))],
                "127.0.0.1:9001",
                None,
            ),
            (
                "closed after the event",
                vec![("127.0.0.1:9001", record(7, 1, 11))],
                "127.0.0.1:9001",
                None,
            ),
            // Listened again after the event: the close before it is kept in the record.
            (
                "re-listened since",
                vec![(
                    "127.0.0.1:9001",
                    ListenerHistory {
                        owner: owner(10, "server", 12 * S),
                        ..record(7, 1, 5)
                    },
                )],
                "127.0.0.1:9001",
                Some((7, 5)),
            ),
        ];
        for (name, records, to, want) in cases {
            let history =
                listeners(&records).closed_before(Some(u64::from(NETNS)), Some(end(to)), at);
            assert_eq!(closer_pid(history.clone()), want, "{name}: {history:?}");
            if want.is_none() {
                assert_eq!(history, History::NoneSinceStart, "{name}");
            }
        }
        // Nothing to go by.
        let mut table = listeners(&[("127.0.0.1:9001", record(7, 1, 5))]);
        assert_eq!(
            table.closed_before(None, Some(end("127.0.0.1:9001")), at),
            History::Unknown
        );
        assert_eq!(
            table.closed_before(Some(u64::from(NETNS)), Some(end("127.0.0.1:0")), at),
            History::Unknown
        );
        assert_eq!(
            Listeners::none().closed_before(
                Some(u64::from(NETNS)),
                Some(end("127.0.0.1:9001")),
                at
            ),
            History::Unknown
        );
    }

    #[test]
    fn names_the_process_listening_on_an_address() {
        let mut table = listeners(&[
            ("0.0.0.0:8080", record(7, 1, 0)),
            ("127.0.0.1:9001", record(8, 1, 5)),
        ]);
        let netns = Some(u64::from(NETNS));
        let listener = table.listener_of(netns, Some(end("127.0.0.1:8080")), 2 * S);
        assert_eq!(
            listener.map(|task| (task.pid, task.comm)),
            Some((7, "server".to_string()))
        );
        // Closed: it holds no connection any more.
        assert_eq!(
            table.listener_of(netns, Some(end("127.0.0.1:9001")), 6 * S),
            None
        );
    }

    /// A table another party changes between lookups, as the kernel does.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<HashMap<ListenerKey, ListenerHistory>>>);

    impl ListenerTable for Shared {
        fn get(&self, key: &ListenerKey) -> Option<ListenerHistory> {
            self.0.lock().unwrap().get(key).copied()
        }
    }

    #[test]
    fn a_read_answers_only_for_events_that_happened_before_it() {
        let shared = Shared::default();
        let mut listeners = Listeners::new(Box::new(shared.clone()));
        let (netns, to) = (Some(u64::from(NETNS)), Some(end("127.0.0.1:9001")));
        let before = monotonic_ns();
        assert_eq!(
            listeners.closed_before(netns, to, before),
            History::NoneSinceStart
        );
        // A listener closes now; an event from before the read is still answered from it.
        let closed_ns = monotonic_ns();
        shared.0.lock().unwrap().insert(
            key_of("127.0.0.1:9001"),
            ListenerHistory {
                closed_ns,
                closer: owner(7, "server", closed_ns),
                ..record(7, 0, 0)
            },
        );
        assert_eq!(
            listeners.closed_before(netns, to, before),
            History::NoneSinceStart
        );
        // An event after it is read afresh.
        let after = monotonic_ns();
        let history = listeners.closed_before(netns, to, after);
        assert_eq!(
            closer_pid(history.clone()).map(|(pid, _)| pid),
            Some(7),
            "{history:?}"
        );
    }
}
