//! Where each field sits in a reset tracepoint's raw record, on the running kernel.
//!
//! The kernel programs copy records verbatim; this module turns a format file into offsets and
//! reads the fields back. Both layouts of `tcp:tcp_send_reset` are handled: 6.10+ (a `reason`,
//! and `saddr`/`daddr` as `sockaddr_in`/`sockaddr_in6` with the port inside) and the older one
//! (`sport`, `dport`, `family`, `saddr`, `daddr`, `saddr_v6`, `daddr_v6`, no reason), which is also
//! the layout of `tcp:tcp_receive_reset` on every kernel that has `family`. Older kernels (5.10:
//! `fixtures/tracefs/5.10/`) have neither tracepoint with a `family`; the ends are then read from
//! the IPv6 fields, which such kernels fill for every socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context as _, bail};
use rst_trace_common::RAW_LEN;

use crate::tracefs::{EventFormat, Field};

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// A field's position in the raw record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldAt {
    pub offset: usize,
    pub size: usize,
}

/// How the two endpoints are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// `__u8 saddr[28]`, `__u8 daddr[28]` holding a `sockaddr_in` or `sockaddr_in6`.
    Sockaddr { local: usize, remote: usize },
    /// Separate family, host-order ports, IPv4 and IPv6 addresses. Without a family (5.10) the
    /// IPv6 fields hold both kinds: kernels of that age store an IPv4 socket's ends there as
    /// v4-mapped addresses (`TP_STORE_V4MAPPED`), an IPv6 socket's as they are.
    Split {
        family: Option<usize>,
        sport: usize,
        dport: usize,
        saddr: usize,
        daddr: usize,
        saddr_v6: usize,
        daddr_v6: usize,
    },
}

/// Offsets of the fields rst-trace reads from a reset tracepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetLayout {
    pub skaddr: FieldAt,
    /// `sk->sk_state`, 0 when there was no socket (only in tcp_send_reset).
    pub state: Option<FieldAt>,
    /// `enum sk_rst_reason` (tcp_send_reset on 6.10+).
    pub reason: Option<FieldAt>,
    /// The socket cookie (tcp_receive_reset).
    pub sock_cookie: Option<FieldAt>,
    pub addresses: Addresses,
}

/// The fields decode reads from one record: a reset tracepoint's, through its layout, or those a
/// program read from the socket and the segment (BTF tracepoints, resets with no socket, queue
/// drops), in the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFields {
    pub skaddr: u64,
    pub state: Option<u32>,
    pub reason: Option<u32>,
    pub sock_cookie: Option<u64>,
    /// This host's end; `None` when the kernel recorded no address (family 0).
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
}

impl ResetLayout {
    pub fn from_format(format: &EventFormat) -> anyhow::Result<Self> {
        let get = |name: &str, sizes: &[usize]| -> anyhow::Result<FieldAt> {
            let field = format
                .field(name)
                .with_context(|| format!("{} has no field `{name}`", format.name))?;
            at(field, sizes)
                .with_context(|| format!("field `{name}` of {} cannot be read", format.name))
        };
        let optional = |name: &str, sizes: &[usize]| -> anyhow::Result<Option<FieldAt>> {
            format.field(name).map(|f| at(f, sizes)).transpose()
        };
        let addresses = if format.field("sport").is_some() {
            Addresses::Split {
                family: optional("family", &[2])?.map(|f| f.offset),
                sport: get("sport", &[2])?.offset,
                dport: get("dport", &[2])?.offset,
                saddr: get("saddr", &[4])?.offset,
                daddr: get("daddr", &[4])?.offset,
                saddr_v6: get("saddr_v6", &[16])?.offset,
                daddr_v6: get("daddr_v6", &[16])?.offset,
            }
        } else {
            Addresses::Sockaddr {
                local: get("saddr", &[28])?.offset,
                remote: get("daddr", &[28])?.offset,
            }
        };
        Ok(Self {
            skaddr: get("skaddr", &[8])?,
            state: optional("state", &[4])?,
            reason: optional("reason", &[4])?,
            sock_cookie: optional("sock_cookie", &[8])?,
            addresses,
        })
    }

    pub fn decode(&self, raw: &[u8; RAW_LEN]) -> RecordFields {
        let (local, remote) = match self.addresses {
            Addresses::Sockaddr { local, remote } => (
                sockaddr(&raw[local..local + 28]),
                sockaddr(&raw[remote..remote + 28]),
            ),
            Addresses::Split {
                family,
                sport,
                dport,
                saddr,
                daddr,
                saddr_v6,
                daddr_v6,
            } => {
                let family = family.map(|offset| u16_ne(raw, offset));
                let ip = |v4: usize, v6: usize| match family {
                    Some(AF_INET) => Some(IpAddr::V4(ipv4(raw, v4))),
                    Some(AF_INET6) | None => Some(unmap(ipv6(raw, v6))),
                    Some(_) => None,
                };
                let endpoint =
                    |v4, v6, port| ip(v4, v6).map(|ip| SocketAddr::new(ip, u16_ne(raw, port)));
                (
                    endpoint(saddr, saddr_v6, sport),
                    endpoint(daddr, daddr_v6, dport),
                )
            }
        };
        RecordFields {
            skaddr: u64_ne(raw, self.skaddr.offset),
            state: self.state.map(|f| u32_ne(raw, f.offset)),
            reason: self.reason.map(|f| u32_ne(raw, f.offset)),
            sock_cookie: self.sock_cookie.map(|f| u64_ne(raw, f.offset)),
            local,
            remote,
        }
    }
}

/// Offset of `reason` in `skb:kfree_skb`'s record, when the kernel has one rst-trace can read.
pub fn drop_reason_offset(kfree_skb: &EventFormat) -> Option<usize> {
    kfree_skb
        .field("reason")
        .filter(|field| field.size == 4 && field.end() <= RAW_LEN)
        .map(|field| field.offset)
}

fn at(field: &Field, sizes: &[usize]) -> anyhow::Result<FieldAt> {
    if !sizes.contains(&field.size) {
        bail!("it is {} bytes, expected {:?}", field.size, sizes);
    }
    if field.end() > RAW_LEN {
        bail!(
            "it ends at byte {}, beyond the {RAW_LEN} bytes the kernel program copies",
            field.end()
        );
    }
    Ok(FieldAt {
        offset: field.offset,
        size: field.size,
    })
}

/// A `sockaddr_in` or `sockaddr_in6` as the tracepoint stores it (family in host order, port in
/// network order).
fn sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]);
    let port = u16::from_be_bytes([bytes[2], bytes[3]]);
    match family {
        AF_INET => Some(SocketAddr::new(IpAddr::V4(ipv4(bytes, 4)), port)),
        AF_INET6 => Some(SocketAddr::new(unmap(ipv6(bytes, 8)), port)),
        _ => None,
    }
}

/// IPv4 traffic on a dual-stack socket shows as `::ffff:a.b.c.d`; report it as the IPv4 it is.
fn unmap(ip: Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

fn ipv4(raw: &[u8], offset: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        raw[offset],
        raw[offset + 1],
        raw[offset + 2],
        raw[offset + 3],
    )
}

fn ipv6(raw: &[u8], offset: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&raw[offset..offset + 16]);
    Ipv6Addr::from(octets)
}

fn u16_ne(raw: &[u8], offset: usize) -> u16 {
    u16::from_ne_bytes([raw[offset], raw[offset + 1]])
}

fn u32_ne(raw: &[u8], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&raw[offset..offset + 4]);
    u32::from_ne_bytes(bytes)
}

fn u64_ne(raw: &[u8], offset: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&raw[offset..offset + 8]);
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tracefs::tests::{fixture, fuzz_input};

    /// Builds raw records the way the kernel fills them, for decoder tests.
    pub(crate) struct RawBuilder(pub [u8; RAW_LEN]);

    impl RawBuilder {
        pub(crate) fn new() -> Self {
            Self([0; RAW_LEN])
        }
        pub(crate) fn put(&mut self, offset: usize, bytes: &[u8]) -> &mut Self {
            self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
            self
        }
        pub(crate) fn sockaddr_in(&mut self, offset: usize, ip: [u8; 4], port: u16) -> &mut Self {
            self.put(offset, &AF_INET.to_ne_bytes())
                .put(offset + 2, &port.to_be_bytes())
                .put(offset + 4, &ip)
        }
        pub(crate) fn sockaddr_in6(&mut self, offset: usize, ip: Ipv6Addr, port: u16) -> &mut Self {
            self.put(offset, &AF_INET6.to_ne_bytes())
                .put(offset + 2, &port.to_be_bytes())
                .put(offset + 8, &ip.octets())
        }
    }

    #[test]
    fn a_field_ending_beyond_usize_is_refused_not_wrapped() {
        let input = fuzz_input("tracefs_format", "offset-overflow");
        let text = std::str::from_utf8(&input).expect("UTF-8");
        let format = EventFormat::parse(text).expect("the format itself parses");
        assert_eq!(format.fields[0].end(), usize::MAX);
        let error = ResetLayout::from_format(&format).expect_err("skaddr cannot be read");
        assert_eq!(
            format!("{error:#}"),
            format!(
                "field `skaddr` of tcp_send_reset cannot be read: it ends at byte {}, beyond \
                 the {RAW_LEN} bytes the kernel program copies",
                usize::MAX
            )
        );
    }

    #[test]
    fn send_reset_6_18_ipv4_with_no_socket() {
        let layout = ResetLayout::from_format(&fixture("6.18", "tcp__tcp_send_reset")).unwrap();
        assert_eq!(
            layout.addresses,
            Addresses::Sockaddr {
                local: 32,
                remote: 60
            }
        );
        assert_eq!(
            layout.reason,
            Some(FieldAt {
                offset: 28,
                size: 4
            })
        );
        assert_eq!(layout.sock_cookie, None);
        let mut raw = RawBuilder::new();
        raw.put(16, &0u64.to_ne_bytes())
            .put(24, &0i32.to_ne_bytes())
            .put(28, &1u32.to_ne_bytes())
            .sockaddr_in(32, [127, 0, 0, 1], 9)
            .sockaddr_in(60, [127, 0, 0, 1], 35340);
        let fields = layout.decode(&raw.0);
        assert_eq!(fields.skaddr, 0);
        assert_eq!(fields.state, Some(0));
        assert_eq!(fields.reason, Some(1));
        assert_eq!(fields.local, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(fields.remote, Some("127.0.0.1:35340".parse().unwrap()));
    }

    #[test]
    fn send_reset_6_18_ipv6_and_v4_mapped() {
        let layout = ResetLayout::from_format(&fixture("6.18", "tcp__tcp_send_reset")).unwrap();
        let mut raw = RawBuilder::new();
        raw.put(16, &0xffff_8880_1234_5678u64.to_ne_bytes())
            .put(24, &7i32.to_ne_bytes())
            .sockaddr_in6(32, Ipv6Addr::LOCALHOST, 8080)
            .sockaddr_in6(60, "::ffff:10.1.2.3".parse().unwrap(), 41000);
        let fields = layout.decode(&raw.0);
        assert_eq!(fields.skaddr, 0xffff_8880_1234_5678);
        assert_eq!(fields.state, Some(7));
        assert_eq!(fields.local, Some("[::1]:8080".parse().unwrap()));
        assert_eq!(fields.remote, Some("10.1.2.3:41000".parse().unwrap()));
    }

    #[test]
    fn send_reset_6_1_split_layout() {
        let layout = ResetLayout::from_format(&fixture("6.1", "tcp__tcp_send_reset")).unwrap();
        assert_eq!(layout.reason, None);
        assert_eq!(
            layout.addresses,
            Addresses::Split {
                family: Some(32),
                sport: 28,
                dport: 30,
                saddr: 34,
                daddr: 38,
                saddr_v6: 42,
                daddr_v6: 58
            }
        );
        let mut raw = RawBuilder::new();
        raw.put(16, &0xffff_8880_0000_1000u64.to_ne_bytes())
            .put(24, &1i32.to_ne_bytes())
            .put(28, &5432u16.to_ne_bytes())
            .put(30, &50000u16.to_ne_bytes())
            .put(32, &AF_INET.to_ne_bytes())
            .put(34, &[192, 168, 7, 1])
            .put(38, &[192, 168, 7, 2]);
        let fields = layout.decode(&raw.0);
        assert_eq!(fields.reason, None);
        assert_eq!(fields.state, Some(1));
        assert_eq!(fields.local, Some("192.168.7.1:5432".parse().unwrap()));
        assert_eq!(fields.remote, Some("192.168.7.2:50000".parse().unwrap()));
    }

    #[test]
    fn send_reset_5_10_has_no_family_and_reads_the_ipv6_fields() {
        let layout = ResetLayout::from_format(&fixture("5.10", "tcp__tcp_send_reset")).unwrap();
        assert_eq!((layout.reason, layout.sock_cookie), (None, None));
        assert_eq!(
            layout.state,
            Some(FieldAt {
                offset: 24,
                size: 4
            })
        );
        assert_eq!(
            layout.addresses,
            Addresses::Split {
                family: None,
                sport: 28,
                dport: 30,
                saddr: 32,
                daddr: 36,
                saddr_v6: 40,
                daddr_v6: 56
            }
        );
        // An IPv4 socket: the kernel stores its ends in the IPv4 fields and, v4-mapped, in the
        // IPv6 ones (TP_STORE_V4MAPPED).
        let mut raw = RawBuilder::new();
        raw.put(8, &0xffff_8880_0000_3000u64.to_ne_bytes())
            .put(16, &0xffff_8880_0000_1000u64.to_ne_bytes())
            .put(24, &1i32.to_ne_bytes())
            .put(28, &5432u16.to_ne_bytes())
            .put(30, &50000u16.to_ne_bytes())
            .put(32, &[192, 168, 7, 1])
            .put(36, &[192, 168, 7, 2])
            .put(
                40,
                &"::ffff:192.168.7.1".parse::<Ipv6Addr>().unwrap().octets(),
            )
            .put(
                56,
                &"::ffff:192.168.7.2".parse::<Ipv6Addr>().unwrap().octets(),
            );
        let fields = layout.decode(&raw.0);
        assert_eq!(fields.skaddr, 0xffff_8880_0000_1000);
        assert_eq!(fields.state, Some(1));
        assert_eq!(fields.local, Some("192.168.7.1:5432".parse().unwrap()));
        assert_eq!(fields.remote, Some("192.168.7.2:50000".parse().unwrap()));
        // An IPv6 socket: the IPv6 fields hold its ends; the IPv4 ones whatever inet_saddr was.
        let mut raw = RawBuilder::new();
        raw.put(16, &0xffff_8880_0000_1100u64.to_ne_bytes())
            .put(24, &4i32.to_ne_bytes())
            .put(28, &443u16.to_ne_bytes())
            .put(30, &41000u16.to_ne_bytes())
            .put(32, &[127, 0, 0, 6])
            .put(40, &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets())
            .put(56, &"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        let fields = layout.decode(&raw.0);
        assert_eq!(fields.state, Some(4));
        assert_eq!(fields.local, Some("[2001:db8::1]:443".parse().unwrap()));
        assert_eq!(fields.remote, Some("[2001:db8::2]:41000".parse().unwrap()));
    }

    #[test]
    fn receive_reset_5_10_has_no_family_and_a_cookie() {
        let layout = ResetLayout::from_format(&fixture("5.10", "tcp__tcp_receive_reset")).unwrap();
        assert_eq!(layout.state, None);
        assert_eq!(
            layout.addresses,
            Addresses::Split {
                family: None,
                sport: 16,
                dport: 18,
                saddr: 20,
                daddr: 24,
                saddr_v6: 28,
                daddr_v6: 44
            }
        );
        let mut raw = RawBuilder::new();
        raw.put(8, &0xffff_8880_0000_2000u64.to_ne_bytes())
            .put(16, &40000u16.to_ne_bytes())
            .put(18, &8080u16.to_ne_bytes())
            .put(20, &[127, 0, 0, 1])
            .put(24, &[127, 0, 0, 1])
            .put(
                28,
                &"::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets(),
            )
            .put(
                44,
                &"::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets(),
            )
            .put(64, &91u64.to_ne_bytes());
        let fields = layout.decode(&raw.0);
        assert_eq!(fields.sock_cookie, Some(91));
        assert_eq!(fields.local, Some("127.0.0.1:40000".parse().unwrap()));
        assert_eq!(fields.remote, Some("127.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn kfree_skb_5_10_has_no_drop_reason() {
        assert_eq!(drop_reason_offset(&fixture("5.10", "skb__kfree_skb")), None);
        assert_eq!(
            drop_reason_offset(&fixture("6.1", "skb__kfree_skb")),
            Some(28)
        );
    }

    #[test]
    fn receive_reset_has_a_cookie_and_no_state() {
        for kernel in ["6.18", "6.1"] {
            let layout =
                ResetLayout::from_format(&fixture(kernel, "tcp__tcp_receive_reset")).unwrap();
            assert_eq!(layout.state, None);
            assert_eq!(
                layout.sock_cookie,
                Some(FieldAt {
                    offset: 64,
                    size: 8
                })
            );
            let mut raw = RawBuilder::new();
            raw.put(8, &0xffff_8880_0000_2000u64.to_ne_bytes())
                .put(16, &443u16.to_ne_bytes())
                .put(18, &51000u16.to_ne_bytes())
                .put(20, &AF_INET6.to_ne_bytes())
                .put(30, &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets())
                .put(46, &"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets())
                .put(64, &77u64.to_ne_bytes());
            let fields = layout.decode(&raw.0);
            assert_eq!(fields.skaddr, 0xffff_8880_0000_2000);
            assert_eq!(fields.sock_cookie, Some(77));
            assert_eq!(fields.local, Some("[2001:db8::1]:443".parse().unwrap()));
            assert_eq!(fields.remote, Some("[2001:db8::2]:51000".parse().unwrap()));
        }
    }

    #[test]
    fn unknown_family_decodes_to_no_address() {
        let layout = ResetLayout::from_format(&fixture("6.18", "tcp__tcp_send_reset")).unwrap();
        let fields = layout.decode(&[0; RAW_LEN]);
        assert_eq!((fields.local, fields.remote), (None, None));
    }

    #[test]
    fn refuses_fields_beyond_the_copied_bytes() {
        let text = "name: big\nID: 1\nformat:\n\
            \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:__u8 saddr[28];\toffset:90;\tsize:28;\tsigned:0;\n\
            \tfield:__u8 daddr[28];\toffset:118;\tsize:28;\tsigned:0;\n";
        let error = ResetLayout::from_format(&EventFormat::parse(text).unwrap()).unwrap_err();
        assert!(
            format!("{error:#}").contains("beyond the 96 bytes"),
            "{error:#}"
        );
    }
}
