//! What this kernel lets rst-trace observe, decided once at start-up.
//!
//! Every difference between kernels is settled here: which tracepoints exist and how their records
//! are laid out (tracefs), how enum values are named and numbered, and where fields of kernel
//! structs sit (BTF). The result is a list of [`Source`]s (on, or off with the reason) and the
//! [`KernelOffsets`] handed to the programs. Which programs exist is the table in
//! [`crate::programs`]. The rest of the program asks this module and never compares kernel
//! versions.

use std::fmt;

use anyhow::{Context as _, anyhow, bail};
use rst_trace_common::{KernelOffsets, MAX_DROP_REASONS, NO_OFFSET, RAW_LEN, TcpStates};

use crate::{
    kernel_btf::KernelBtf,
    kernel_enums::{DropReason, TcpState},
    layout::{self, ResetLayout},
    names::{KernelNames, NameTable},
    programs::{BtfTwin, Kernels, PROGRAMS, Program, Record},
    tracefs::{self, EventFormat, Tracefs},
};

pub use crate::programs::Role;

/// One tracepoint rst-trace attaches to.
#[derive(Debug, Clone)]
pub struct Source {
    pub system: &'static str,
    pub event: &'static str,
    /// Name of the kernel program that serves it.
    pub program: &'static str,
    /// The BTF tracepoint program that can serve it instead.
    pub btf_twin: Option<BtfTwin>,
    pub role: Role,
    /// What the user loses when it is off, in their words.
    pub serves: &'static str,
    /// Off, and why, when the kernel does not allow it.
    pub status: Result<(), String>,
    /// What works differently on this kernel.
    pub notes: Vec<String>,
}

impl Source {
    fn new(program: &Program) -> Self {
        Self {
            system: program.system,
            event: program.event,
            program: program.program,
            btf_twin: program.btf_twin,
            role: program.role,
            serves: program.role.serves(),
            status: Ok(()),
            notes: Vec::new(),
        }
    }

    pub fn name(&self) -> String {
        format!("{}:{}", self.system, self.event)
    }

    pub fn is_kprobe(&self) -> bool {
        self.system == "kprobe"
    }

    pub fn is_usable(&self) -> bool {
        self.status.is_ok()
    }
}

/// Everything rst-trace learned about the running kernel.
pub struct KernelSupport {
    pub release: String,
    pub tracefs: Tracefs,
    pub sources: Vec<Source>,
    pub send_reset: Option<ResetLayout>,
    pub receive_reset: Option<ResetLayout>,
    /// Offset of `reason` in skb:kfree_skb's record.
    pub drop_reason: Option<usize>,
    /// Bitmap of the drop reasons that are queue overflows, in this kernel's numbering.
    pub queue_drop_reasons: [u64; MAX_DROP_REASONS / 64],
    pub names: KernelNames,
    pub offsets: KernelOffsets,
    /// Kernel struct members that could not be resolved, with what that turns off.
    pub missing: Vec<String>,
    /// Whether BTF tracepoint programs may call `bpf_get_socket_cookie` (5.12+).
    pub socket_cookie_helper: bool,
}

impl KernelSupport {
    /// Probes the running kernel. Fails only when nothing could be traced at all (no tracefs, no
    /// BTF, offsets that do not resolve); a missing tracepoint only turns its source off.
    pub fn probe() -> anyhow::Result<Self> {
        let tracefs = tracefs::ensure_mounted()?;
        let btf = KernelBtf::load()?;
        let root = tracefs.path();
        let read = |system, event| tracefs::read_format(root, system, event);
        let formats = Formats {
            send_reset: read("tcp", "tcp_send_reset")?,
            receive_reset: read("tcp", "tcp_receive_reset")?,
            set_state: read("sock", "inet_sock_set_state")?,
            destroy_sock: read("tcp", "tcp_destroy_sock")?,
            exit_accept4: read("syscalls", "sys_exit_accept4")?,
            exit_accept: read("syscalls", "sys_exit_accept")?,
            kfree_skb: read("skb", "kfree_skb")?,
        };
        let mut names = KernelNames::from_kernel(
            formats.send_reset.as_ref(),
            formats.set_state.as_ref(),
            Some(&btf),
        );
        names.add_drop_reasons(formats.kfree_skb.as_ref(), Some(&btf));
        Self::from_parts(kernel_release(), tracefs, &formats, names, &btf)
    }

    fn from_parts(
        release: String,
        tracefs: Tracefs,
        formats: &Formats,
        names: KernelNames,
        btf: &KernelBtf,
    ) -> anyhow::Result<Self> {
        let mut sources = formats.sources();
        let layout = |format: &Option<EventFormat>| {
            format
                .as_ref()
                .and_then(|f| ResetLayout::from_format(f).ok())
        };
        let send_reset = layout(&formats.send_reset);
        let receive_reset = layout(&formats.receive_reset);
        let drop_reason = formats
            .kfree_skb
            .as_ref()
            .and_then(layout::drop_reason_offset);
        let queue_drop_reasons = queue_drop_bitmap(&names.drop_reasons);
        let mut offsets = KernelOffsets {
            states: tcp_states(&names)?,
            ..KernelOffsets::NONE
        };
        formats.record_offsets(&mut offsets);
        resolve_socket_offsets(btf, &mut offsets).context(
            "rst-trace could not find the fields it reads in this kernel's struct sock (BTF); \
             it refuses to run on offsets it cannot check",
        )?;
        let missing = resolve_optional_offsets(btf, &mut offsets);
        // BTF programs take the running task from bpf_get_current_task_btf (5.11+) to load its
        // name and cgroup; with these offsets unset they ask the older helpers instead.
        if !btf.has_function("bpf_get_current_task_btf") {
            offsets.task_comm = NO_OFFSET;
            offsets.kernfs_node_id = NO_OFFSET;
        }
        // Tracing programs may ask for a socket's cookie from 5.12 on (the helper's tracing
        // variant); before, BTF programs read the cookie as the socket holds it.
        let socket_cookie_helper = btf.has_function("bpf_get_socket_ptr_cookie");
        if !socket_cookie_helper {
            for source in sources.iter_mut().filter(|s| s.role == Role::ResetSent) {
                source.notes.push(
                    "this kernel does not let tracing programs make a socket's cookie (5.12+): \
                     a reset sent has a sock_cookie only when the kernel had made one for that \
                     socket before"
                        .to_string(),
                );
            }
        }
        if offsets.skb_head == NO_OFFSET || offsets.skb_transport_header == NO_OFFSET {
            for source in sources.iter_mut().filter(|s| s.role == Role::ResetSent) {
                source.notes.push(
                    "the segment behind a reset with no socket cannot be read, so a closed port \
                     and a half-open connection are not told apart"
                        .to_string(),
                );
            }
        }
        Ok(Self {
            release,
            tracefs,
            sources,
            send_reset,
            receive_reset,
            drop_reason,
            queue_drop_reasons,
            names,
            offsets,
            missing,
            socket_cookie_helper,
        })
    }

    /// Whether this kernel charges BPF maps to RLIMIT_MEMLOCK (before 5.11; newer kernels charge
    /// the cgroup), so that failing to raise the limit matters.
    pub fn charges_bpf_to_memlock(&self) -> bool {
        release_before(&self.release, (5, 11))
    }

    pub fn source(&self, role: Role) -> impl Iterator<Item = &Source> {
        self.sources
            .iter()
            .filter(move |source| source.role == role)
    }
}

/// The format files of every tracepoint rst-trace uses (None: not on this kernel).
struct Formats {
    send_reset: Option<EventFormat>,
    receive_reset: Option<EventFormat>,
    set_state: Option<EventFormat>,
    destroy_sock: Option<EventFormat>,
    exit_accept4: Option<EventFormat>,
    exit_accept: Option<EventFormat>,
    kfree_skb: Option<EventFormat>,
}

impl Formats {
    /// The format of a hook's tracepoint (None for kprobes and tracepoints this kernel lacks).
    fn format(&self, system: &str, event: &str) -> Option<&EventFormat> {
        match (system, event) {
            ("tcp", "tcp_send_reset") => self.send_reset.as_ref(),
            ("tcp", "tcp_receive_reset") => self.receive_reset.as_ref(),
            ("sock", "inet_sock_set_state") => self.set_state.as_ref(),
            ("tcp", "tcp_destroy_sock") => self.destroy_sock.as_ref(),
            ("syscalls", "sys_exit_accept4") => self.exit_accept4.as_ref(),
            ("syscalls", "sys_exit_accept") => self.exit_accept.as_ref(),
            ("skb", "kfree_skb") => self.kfree_skb.as_ref(),
            _ => None,
        }
    }

    /// The programs of [`PROGRAMS`] this kernel takes, each on or off with the reason.
    fn sources(&self) -> Vec<Source> {
        // Before 6.10 tcp_send_reset had no reason and was not called for resets sent without a
        // socket (tcp_v4_send_reset with sk == NULL).
        let without_reset_reason = self
            .send_reset
            .as_ref()
            .is_some_and(|f| f.field("reason").is_none());
        let mut sources = Vec::new();
        for program in PROGRAMS {
            let taken = match program.kernels {
                Kernels::All => true,
                // Only kernels whose tracepoint misses resets without a socket need the probes.
                Kernels::WithoutResetReason => without_reset_reason,
            };
            if !taken {
                continue;
            }
            let mut source = Source::new(program);
            let format = self.format(program.system, program.event);
            source.status = match program.record {
                Record::Reset => reset_status(format),
                Record::Fields(fields) => fields_status(format, fields),
                Record::None => Ok(()),
            };
            // Drop reasons arrived in 5.17: before, kfree_skb cannot tell a queue overflow from
            // any other freed packet, and reporting every one would flood the ring buffer.
            if program.role == Role::QueueDrop
                && format.is_some_and(|f| f.field("reason").is_none())
            {
                source.status = Err("this kernel's kfree_skb has no drop reason (5.17+), so a \
                                     full queue cannot be told from any other freed packet"
                    .to_string());
                source.notes.push(
                    "listen overflows are still reported, once a second, from each listener's \
                     queues and drop count and its namespace's TcpExt counters (the listener \
                     iterator, or sampling where the kernel refuses iterators); packets dropped \
                     from a full socket backlog or receive buffer are not"
                        .to_string(),
                );
            }
            match program.role {
                Role::ResetSent if without_reset_reason => source.notes.push(
                    "this kernel's tcp_send_reset has no reason field and does not fire for \
                     resets sent with no socket (a SYN to a closed port, a segment for a \
                     forgotten connection): kprobes on tcp_v4_send_reset and tcp_v6_send_reset \
                     report those where the kernel allows kprobes, and causes come from the TCP \
                     state and the segment"
                        .to_string(),
                ),
                // rx_sk arrived in 6.11; before it, only a socket still attached to the skb is
                // seen.
                Role::QueueDrop
                    if source.is_usable() && format.is_some_and(|f| f.field("rx_sk").is_none()) =>
                {
                    source.notes.push(
                        "this kernel's kfree_skb does not name the receiving socket: drops are \
                         attributed only when the packet was already attached to its socket"
                            .to_string(),
                    )
                }
                _ => {}
            }
            sources.push(source);
        }
        sources
    }

    fn record_offsets(&self, offsets: &mut KernelOffsets) {
        let at = |format: &Option<EventFormat>, name: &str| {
            format
                .as_ref()
                .and_then(|f| f.field(name))
                .filter(|field| field.end() <= RAW_LEN)
                .map_or(NO_OFFSET, |field| field.offset as u32)
        };
        offsets.send_reset_skaddr = at(&self.send_reset, "skaddr");
        offsets.send_reset_skbaddr = at(&self.send_reset, "skbaddr");
        offsets.receive_reset_skaddr = at(&self.receive_reset, "skaddr");
        offsets.set_state_skaddr = at(&self.set_state, "skaddr");
        offsets.set_state_oldstate = at(&self.set_state, "oldstate");
        offsets.set_state_newstate = at(&self.set_state, "newstate");
        offsets.set_state_protocol = at(&self.set_state, "protocol");
        offsets.destroy_sock_skaddr = at(&self.destroy_sock, "skaddr");
        // Both accept exits share one program, so they must agree on where `ret` is.
        let accept4 = at(&self.exit_accept4, "ret");
        let accept = at(&self.exit_accept, "ret");
        offsets.kfree_skb_reason = at(&self.kfree_skb, "reason");
        offsets.kfree_skb_rx_sk = at(&self.kfree_skb, "rx_sk");
        offsets.kfree_skb_skbaddr = at(&self.kfree_skb, "skbaddr");
        offsets.sys_exit_ret = if accept4 == NO_OFFSET {
            accept
        } else {
            accept4
        };
    }
}

/// The drop reasons that mean a queue was full ([`DropReason::QUEUE_FULL`]), in this kernel's
/// numbering, as the kfree_skb program's filter.
fn queue_drop_bitmap(names: &NameTable) -> [u64; MAX_DROP_REASONS / 64] {
    let mut bitmap = [0u64; MAX_DROP_REASONS / 64];
    for value in DropReason::QUEUE_FULL
        .iter()
        .filter_map(|reason| names.value_of(reason.name()))
    {
        let value = value as usize;
        if value < MAX_DROP_REASONS {
            bitmap[value / 64] |= 1 << (value % 64);
        }
    }
    bitmap
}

fn reset_status(format: Option<&EventFormat>) -> Result<(), String> {
    let format = format.ok_or_else(|| "this kernel has no such tracepoint".to_string())?;
    ResetLayout::from_format(format)
        .map(|_| ())
        .map_err(|error| format!("{error:#}"))
}

fn fields_status(format: Option<&EventFormat>, fields: &[&str]) -> Result<(), String> {
    let format = format.ok_or_else(|| "this kernel has no such tracepoint".to_string())?;
    for name in fields {
        match format.field(name) {
            Some(field) if field.end() <= RAW_LEN => {}
            Some(_) => {
                return Err(format!(
                    "field `{name}` lies beyond the bytes rst-trace reads"
                ));
            }
            None => return Err(format!("the tracepoint has no field `{name}`")),
        }
    }
    Ok(())
}

fn tcp_states(names: &KernelNames) -> anyhow::Result<TcpStates> {
    let state = |state: TcpState| {
        names
            .tcp_states
            .value_of(state.name())
            .map(|value| value as u32)
            .ok_or_else(|| anyhow!("the kernel names no TCP state {state}"))
    };
    Ok(TcpStates {
        established: state(TcpState::Established)?,
        syn_sent: state(TcpState::SynSent)?,
        syn_recv: state(TcpState::SynRecv)?,
        fin_wait1: state(TcpState::FinWait1)?,
        time_wait: state(TcpState::TimeWait)?,
        close: state(TcpState::Close)?,
        close_wait: state(TcpState::CloseWait)?,
        last_ack: state(TcpState::LastAck)?,
        listen: state(TcpState::Listen)?,
        new_syn_recv: state(TcpState::NewSynRecv)?,
    })
}

/// Members every socket event needs: without them rst-trace refuses to run.
fn resolve_socket_offsets(btf: &KernelBtf, o: &mut KernelOffsets) -> anyhow::Result<()> {
    if btf.member_offset("sock", "__sk_common")? != 0 {
        bail!("struct sock does not start with __sk_common");
    }
    let common = |path| btf.checked_offset("sock_common", path);
    o.skc_daddr = common("skc_daddr")?;
    o.skc_rcv_saddr = common("skc_rcv_saddr")?;
    o.skc_dport = common("skc_dport")?;
    o.skc_num = common("skc_num")?;
    o.skc_family = common("skc_family")?;
    o.skc_state = common("skc_state")?;
    o.skc_net = common("skc_net.net")?;
    o.skc_v6_daddr = common("skc_v6_daddr")?;
    o.skc_v6_rcv_saddr = common("skc_v6_rcv_saddr")?;
    o.skc_cookie = common("skc_cookie")?;
    o.inet_sport = btf.checked_offset("inet_sock", "inet_sport")?;
    o.net_inum = btf.checked_offset("net", "ns.inum")?;
    Ok(())
}

/// Members that sharpen attribution and causes; each one missing turns one thing off.
fn resolve_optional_offsets(btf: &KernelBtf, o: &mut KernelOffsets) -> Vec<String> {
    let mut missing = Vec::new();
    let mut resolve = |target: &mut u32, name: &str, path: &str, loses: &str| match btf
        .checked_offset(name, path)
    {
        Ok(offset) => *target = offset,
        Err(error) => missing.push(format!("{name}.{path} ({error:#}): {loses}")),
    };
    let linger = "SO_LINGER aborts are not told apart from other closes";
    resolve(
        &mut o.sk_socket,
        "sock",
        "sk_socket",
        "never-accepted connections are not recognised",
    );
    // sk_flags moved into sock_common (skc_flags) in recent kernels.
    match btf.checked_offset("sock_common", "skc_flags") {
        Ok(offset) => o.sk_flags = offset,
        Err(_) => resolve(&mut o.sk_flags, "sock", "sk_flags", linger),
    }
    resolve(&mut o.sk_lingertime, "sock", "sk_lingertime", linger);
    // Only the BTF program on sock:inet_sock_set_state needs it (the classic record has the
    // protocol); without it the classic program serves that tracepoint.
    if let Ok(offset) = btf.checked_offset("sock", "sk_protocol") {
        o.sk_protocol = offset;
    }
    // BTF programs read the task's name with it; without it they call bpf_get_current_comm.
    if let Ok(offset) = btf.checked_offset("task_struct", "comm") {
        o.task_comm = offset;
    }
    // And its cgroup id with these (all four, or the helper).
    if let (Ok(cgroups), Ok(dfl_cgrp), Ok(kn), Ok(id)) = (
        btf.checked_offset("task_struct", "cgroups"),
        btf.checked_offset("css_set", "dfl_cgrp"),
        btf.checked_offset("cgroup", "kn"),
        btf.checked_offset("kernfs_node", "id"),
    ) {
        o.task_cgroups = cgroups;
        o.css_set_dfl_cgrp = dfl_cgrp;
        o.cgroup_kn = kn;
        o.kernfs_node_id = id;
    }
    resolve(
        &mut o.tw_substate,
        "inet_timewait_sock",
        "tw_substate",
        "data after close is reported as timewait",
    );
    let acked = "received resets do not say whether the exchange had completed";
    resolve(&mut o.tcp_snd_una, "tcp_sock", "snd_una", acked);
    resolve(&mut o.tcp_snd_nxt, "tcp_sock", "snd_nxt", acked);
    resolve(&mut o.tcp_bytes_acked, "tcp_sock", "bytes_acked", acked);
    resolve(
        &mut o.tcp_bytes_received,
        "tcp_sock",
        "bytes_received",
        acked,
    );
    resolve(&mut o.tcp_data_segs_out, "tcp_sock", "data_segs_out", acked);
    let segment = "resets with no socket are not told apart (closed port or half-open)";
    resolve(&mut o.skb_head, "sk_buff", "head", segment);
    let queue = "queue drops do not say how full the queue was";
    resolve(&mut o.sk_ack_backlog, "sock", "sk_ack_backlog", queue);
    resolve(
        &mut o.sk_max_ack_backlog,
        "sock",
        "sk_max_ack_backlog",
        queue,
    );
    resolve(&mut o.sk_rmem_alloc, "sock", "sk_backlog.rmem_alloc", queue);
    resolve(&mut o.sk_rcvbuf, "sock", "sk_rcvbuf", queue);
    let drop_socket = "queue drops before 6.11 are not attributed to a socket";
    resolve(&mut o.skb_sk, "sk_buff", "sk", drop_socket);
    resolve(
        &mut o.skb_network_header,
        "sk_buff",
        "network_header",
        "queue drops have no remote address",
    );
    resolve(
        &mut o.skb_transport_header,
        "sk_buff",
        "transport_header",
        segment,
    );
    resolve(
        &mut o.skb_tail,
        "sk_buff",
        "tail",
        "--pcap writes no packets",
    );
    let listeners = "listener drops come from sampling each network namespace";
    resolve(&mut o.file_f_inode, "file", "f_inode", listeners);
    resolve(&mut o.inode_i_mode, "inode", "i_mode", listeners);
    resolve(&mut o.sk_drops, "sock", "sk_drops", listeners);
    resolve(
        &mut o.icsk_accept_queue_qlen,
        "inet_connection_sock",
        "icsk_accept_queue.qlen",
        listeners,
    );
    resolve(&mut o.task_tgid, "task_struct", "tgid", listeners);
    let netns = "resets with no socket have no network namespace";
    resolve(&mut o.skb_dev, "sk_buff", "dev", netns);
    resolve(&mut o.dev_nd_net, "net_device", "nd_net.net", netns);
    let accept = "accepted connections have no owner until they close";
    resolve(&mut o.task_files, "task_struct", "files", accept);
    resolve(&mut o.files_fdt, "files_struct", "fdt", accept);
    resolve(&mut o.fdt_fd, "fdtable", "fd", accept);
    resolve(&mut o.file_private_data, "file", "private_data", accept);
    resolve(&mut o.socket_sk, "socket", "sk", accept);
    // A struct socket is the first member of struct socket_alloc, followed by its inode.
    let socket_ino = btf
        .member_offset("socket_alloc", "socket")
        .and_then(|socket| {
            if socket != 0 {
                anyhow::bail!("struct socket_alloc does not start with its socket");
            }
            Ok(btf.checked_offset("socket_alloc", "vfs_inode")?
                + btf.checked_offset("inode", "i_ino")?)
        });
    match socket_ino {
        Ok(offset) => o.socket_ino = offset,
        Err(error) => missing.push(format!(
            "socket_alloc.vfs_inode.i_ino ({error:#}): sockets created before rst-trace started \
             have no owner"
        )),
    }
    // A process's id in its own PID namespace (all six, or /proc's NSpid, read later).
    if let (Ok(leader), Ok(thread_pid), Ok(level), Ok(numbers), Ok(nr), Ok(upid_size)) = (
        btf.checked_offset("task_struct", "group_leader"),
        btf.checked_offset("task_struct", "thread_pid"),
        btf.checked_offset("pid", "level"),
        btf.member_offset("pid", "numbers"),
        btf.checked_offset("upid", "nr"),
        btf.struct_size("upid"),
    ) {
        o.task_group_leader = leader;
        o.task_thread_pid = thread_pid;
        o.pid_level = level;
        // A flexible array member: it starts at the struct's end, which the check refuses.
        o.pid_numbers = numbers;
        o.upid_nr = nr;
        o.upid_size = upid_size as u32;
    } else {
        missing.push(
            "task_struct.thread_pid -> pid.numbers[level].nr: a short-lived process in a PID \
             namespace has no ns_pid"
                .to_string(),
        );
    }
    match btf.member_bit_offset("sock_common", "skc_ipv6only") {
        Ok(bit) => o.skc_ipv6only_bit = bit,
        Err(error) => missing.push(format!(
            "sock_common.skc_ipv6only ({error:#}): an IPv6-only listener may be named for a \
             refused IPv4 connection"
        )),
    }
    match btf.enum_value("sock_flags", "SOCK_LINGER") {
        Some(bit) if bit < 64 => o.sock_linger_bit = bit as u32,
        _ => missing.push(format!("enum sock_flags has no SOCK_LINGER: {linger}")),
    }
    missing
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Is kernel `release` (`6.1.0-28-cloud-amd64`) older than `(major, minor)`? Unparsable releases
/// count as new.
fn release_before(release: &str, (major, minor): (u32, u32)) -> bool {
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
        match &self.status {
            Ok(()) => write!(f, "{}: on ({})", self.name(), self.serves)?,
            Err(why) => write!(
                f,
                "{}: off, {} not available: {why}",
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

    fn formats(kernel: &str) -> Formats {
        Formats {
            send_reset: Some(fixture(kernel, "tcp__tcp_send_reset")),
            receive_reset: Some(fixture(kernel, "tcp__tcp_receive_reset")),
            set_state: Some(fixture(kernel, "sock__inet_sock_set_state")),
            destroy_sock: None,
            exit_accept4: None,
            exit_accept: None,
            kfree_skb: Some(fixture(kernel, "skb__kfree_skb")),
        }
    }

    #[test]
    fn sources_on_6_18() {
        let sources = formats("6.18").sources();
        let send = &sources[0];
        assert!(send.is_usable() && send.notes.is_empty());
        assert_eq!(
            sources[1].to_string(),
            "tcp:tcp_receive_reset: on (resets received by this host)"
        );
        assert!(sources[2].is_usable(), "{}", sources[2]);
        assert_eq!(
            sources[3].to_string(),
            "tcp:tcp_destroy_sock: off, forgetting the owners of destroyed sockets not \
             available: this kernel has no such tracepoint"
        );
    }

    #[test]
    fn send_reset_on_6_1_says_what_is_missing() {
        let sources = formats("6.1").sources();
        assert!(sources[0].is_usable());
        assert_eq!(sources[0].notes.len(), 1);
        assert!(
            sources[0]
                .to_string()
                .contains("does not fire for resets sent with no socket")
        );
    }

    #[test]
    fn sources_on_5_10_read_resets_without_family_and_say_queue_drops_are_off() {
        let sources = formats("5.10").sources();
        assert_eq!(
            sources[1].to_string(),
            "tcp:tcp_receive_reset: on (resets received by this host)"
        );
        assert!(sources[0].is_usable(), "{}", sources[0]);
        assert!(
            sources[0]
                .to_string()
                .contains("does not fire for resets sent with no socket")
        );
        assert!(sources[2].is_usable(), "{}", sources[2]);
        let drops = sources
            .iter()
            .find(|s| s.role == Role::QueueDrop)
            .expect("kfree_skb is listed");
        assert_eq!(
            drops.to_string(),
            "skb:kfree_skb: off, packets dropped from full queues (accept queue, backlog, \
             receive buffer) not available: this kernel's kfree_skb has no drop reason (5.17+), \
             so a full queue cannot be told from any other freed packet; listen overflows are \
             still reported, once a second, from each listener's queues and drop count and its \
             namespace's TcpExt counters (the listener iterator, or sampling where the kernel \
             refuses iterators); packets dropped from a full socket backlog or receive buffer \
             are not"
        );
        // The kprobes for resets with no socket are taken, as on 6.1.
        assert_eq!(
            sources
                .iter()
                .filter(|s| s.role == Role::ResetSentNoSocket)
                .count(),
            2
        );
    }

    #[test]
    fn record_offsets_on_5_10() {
        let mut offsets = KernelOffsets::NONE;
        formats("5.10").record_offsets(&mut offsets);
        assert_eq!(
            (offsets.send_reset_skbaddr, offsets.send_reset_skaddr),
            (8, 16)
        );
        assert_eq!(offsets.receive_reset_skaddr, 8);
        assert_eq!(
            (
                offsets.set_state_skaddr,
                offsets.set_state_oldstate,
                offsets.set_state_newstate,
                offsets.set_state_protocol
            ),
            (8, 16, 20, 30)
        );
        assert_eq!(offsets.kfree_skb_reason, NO_OFFSET);
        assert_eq!(offsets.kfree_skb_rx_sk, NO_OFFSET);
        assert_eq!(offsets.kfree_skb_skbaddr, 8);
    }

    #[test]
    fn record_offsets_come_from_the_format_files() {
        let mut offsets = KernelOffsets::NONE;
        formats("6.18").record_offsets(&mut offsets);
        assert_eq!(offsets.send_reset_skaddr, 16);
        assert_eq!(offsets.send_reset_skbaddr, 8);
        assert_eq!(offsets.receive_reset_skaddr, 8);
        assert_eq!(
            (
                offsets.set_state_skaddr,
                offsets.set_state_oldstate,
                offsets.set_state_newstate
            ),
            (8, 16, 20)
        );
        assert_eq!(offsets.set_state_protocol, 30);
        assert_eq!(offsets.destroy_sock_skaddr, NO_OFFSET);
    }

    #[test]
    fn queue_drop_reasons_are_numbered_by_the_running_kernel() {
        for (kernel, listen_overflow, socket_backlog) in
            [("6.18", Some(40u64), 29u64), ("6.1", None, 20)]
        {
            let mut names = KernelNames::default();
            names.add_drop_reasons(Some(&fixture(kernel, "skb__kfree_skb")), None);
            let bitmap = queue_drop_bitmap(&names.drop_reasons);
            let set = |value: u64| bitmap[value as usize / 64] & (1 << (value % 64)) != 0;
            assert!(set(socket_backlog), "{kernel}");
            if let Some(value) = listen_overflow {
                assert!(set(value), "{kernel}");
            }
            let count: u32 = bitmap.iter().map(|word| word.count_ones()).sum();
            let expected = if kernel == "6.18" { 5 } else { 4 };
            assert_eq!(count, expected, "{kernel}: TCP_LISTEN_OVERFLOW is 6.15+");
        }
    }

    #[test]
    fn tcp_state_numbers_come_from_the_kernel() {
        let set_state = fixture("6.1", "sock__inet_sock_set_state");
        let names = KernelNames::from_kernel(None, Some(&set_state), None);
        let states = tcp_states(&names).unwrap();
        assert_eq!(
            (states.established, states.time_wait, states.new_syn_recv),
            (1, 6, 12)
        );
        assert!(tcp_states(&KernelNames::default()).is_err());
    }

    #[test]
    fn compares_kernel_releases() {
        assert!(release_before("5.10.0-30-amd64", (5, 11)));
        assert!(!release_before("5.11.0", (5, 11)));
        assert!(!release_before("6.18.44-fc-v657", (5, 11)));
        assert!(!release_before("weird", (5, 11)));
    }
}
