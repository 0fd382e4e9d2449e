//! What this kernel lets rst-trace observe, decided once at start-up.
//!
//! Every difference between kernels is settled here: which tracepoints exist and how their records
//! are laid out (tracefs), how enum values are named, and where fields of `struct sock` sit (BTF).
//! The rest of the program asks this module and never compares kernel versions.

use std::fmt;

use anyhow::{Context as _, bail};

use crate::{
    kernel_btf::KernelBtf,
    layout::ResetLayout,
    names::KernelNames,
    tracefs::{self, EventFormat, Tracefs},
};

/// One tracepoint rst-trace can attach to.
pub struct Source {
    /// `tcp:tcp_send_reset`
    pub system: &'static str,
    pub event: &'static str,
    /// Name of the kernel program that serves it.
    pub program: &'static str,
    /// What the user loses when it is off, in their words.
    pub serves: &'static str,
    /// The record layout, or why the source cannot be used.
    pub layout: Result<ResetLayout, String>,
    /// What works differently on this kernel.
    pub notes: Vec<String>,
}

impl Source {
    pub fn name(&self) -> String {
        format!("{}:{}", self.system, self.event)
    }

    pub fn is_usable(&self) -> bool {
        self.layout.is_ok()
    }
}

/// Offsets into `struct sock` that the kernel programs read, from BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_state`
    pub state: u32,
    /// `__sk_common.skc_cookie`
    pub cookie: u32,
}

impl SockOffsets {
    /// Resolves the offsets and checks that they are plausible, refusing to run on anything else.
    pub fn resolve(btf: &KernelBtf) -> anyhow::Result<Self> {
        let common = btf.member_offset("sock", "__sk_common")?;
        if common != 0 {
            bail!("struct sock does not start with __sk_common (offset {common})");
        }
        let state = btf.member_offset("sock_common", "skc_state")?;
        let cookie = btf.member_offset("sock_common", "skc_cookie")?;
        // struct sock_common is about 136 bytes on 64-bit kernels; skc_state sits in its first
        // cache line, after the addresses and ports.
        if !(8..64).contains(&state) || !cookie.is_multiple_of(8) || !(8..256).contains(&cookie) {
            bail!(
                "implausible offsets in struct sock_common: skc_state {state}, skc_cookie {cookie}"
            );
        }
        Ok(Self { state, cookie })
    }
}

/// Everything rst-trace learned about the running kernel.
pub struct KernelSupport {
    pub release: String,
    pub tracefs: Tracefs,
    pub send_reset: Source,
    pub receive_reset: Source,
    pub names: KernelNames,
    pub sock_offsets: SockOffsets,
}

impl KernelSupport {
    /// Probes the running kernel. Fails only when nothing could be traced at all (no tracefs, no
    /// BTF, offsets that do not resolve); a missing tracepoint only turns its source off.
    pub fn probe() -> anyhow::Result<Self> {
        let tracefs = tracefs::ensure_mounted()?;
        let btf = KernelBtf::load()?;
        let sock_offsets = SockOffsets::resolve(&btf).context(
            "rst-trace could not find the fields it reads in this kernel's struct sock (BTF)",
        )?;
        let root = tracefs.path();
        let send_format = tracefs::read_format(root, "tcp", "tcp_send_reset")?;
        let receive_format = tracefs::read_format(root, "tcp", "tcp_receive_reset")?;
        let set_state_format = tracefs::read_format(root, "sock", "inet_sock_set_state")?;
        let names =
            KernelNames::from_kernel(send_format.as_ref(), set_state_format.as_ref(), Some(&btf));
        Ok(Self {
            release: kernel_release(),
            tracefs,
            send_reset: send_reset_source(send_format.as_ref()),
            receive_reset: receive_reset_source(receive_format.as_ref()),
            names,
            sock_offsets,
        })
    }

    pub fn sources(&self) -> [&Source; 2] {
        [&self.send_reset, &self.receive_reset]
    }
}

pub fn send_reset_source(format: Option<&EventFormat>) -> Source {
    let mut source = Source {
        system: "tcp",
        event: "tcp_send_reset",
        program: "tcp_send_reset",
        serves: "resets sent by this host",
        layout: layout(format),
        notes: Vec::new(),
    };
    if let Ok(layout) = &source.layout
        && layout.reason.is_none()
    {
        // Before 6.10 the tracepoint had no reason and was not called for resets sent without a
        // socket (tcp_v4_send_reset with sk == NULL).
        source.notes.push(
            "this kernel's tcp_send_reset has no reason field and does not fire for resets sent \
             with no socket (a SYN to a closed port, a segment for a forgotten connection): those \
             are not reported, and causes come from the TCP state alone"
                .to_string(),
        );
    }
    source
}

pub fn receive_reset_source(format: Option<&EventFormat>) -> Source {
    Source {
        system: "tcp",
        event: "tcp_receive_reset",
        program: "tcp_receive_reset",
        serves: "resets received by this host",
        layout: layout(format),
        notes: Vec::new(),
    }
}

fn layout(format: Option<&EventFormat>) -> Result<ResetLayout, String> {
    let format = format.ok_or_else(|| "this kernel has no such tracepoint".to_string())?;
    ResetLayout::from_format(format).map_err(|error| format!("{error:#}"))
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Is kernel `release` (`6.1.0-28-cloud-amd64`) older than `(major, minor)`? Unparsable releases
/// count as new.
pub fn release_before(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.layout {
            Ok(_) => write!(f, "{}: on ({})", self.name(), self.serves)?,
            Err(why) => write!(
                f,
                "{}: off, {} are not reported: {why}",
                self.name(),
                self.serves
            )?,
        }
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracefs::tests::fixture;

    #[test]
    fn sources_on_6_18_are_on_without_notes() {
        let send = send_reset_source(Some(&fixture("6.18", "tcp__tcp_send_reset")));
        assert!(send.is_usable() && send.notes.is_empty());
        let receive = receive_reset_source(Some(&fixture("6.18", "tcp__tcp_receive_reset")));
        assert_eq!(
            receive.to_string(),
            "tcp:tcp_receive_reset: on (resets received by this host)"
        );
    }

    #[test]
    fn send_reset_on_6_1_says_what_is_missing() {
        let send = send_reset_source(Some(&fixture("6.1", "tcp__tcp_send_reset")));
        assert!(send.is_usable());
        assert_eq!(send.notes.len(), 1);
        assert!(
            send.to_string()
                .contains("does not fire for resets sent with no socket")
        );
    }

    #[test]
    fn compares_kernel_releases() {
        assert!(release_before("5.10.0-30-amd64", (5, 11)));
        assert!(!release_before("5.11.0", (5, 11)));
        assert!(!release_before("6.18.44-fc-v657", (5, 11)));
        assert!(!release_before("weird", (5, 11)));
    }

    #[test]
    fn a_missing_tracepoint_turns_its_source_off() {
        let receive = receive_reset_source(None);
        assert!(!receive.is_usable());
        assert_eq!(
            receive.to_string(),
            "tcp:tcp_receive_reset: off, resets received by this host are not reported: this \
             kernel has no such tracepoint"
        );
    }
}
