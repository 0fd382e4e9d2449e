//! The rare resets of the "storm + needles + capture" workload: four kinds of reset that are not
//! a storm, each made by its own process (`cargo xtask bench-needle KIND`, the xtask binary run
//! again) at a low rate beside the refused-connect storm. Each process writes down what it did
//! (its pid and both ports of every reset), so that the bench can look for exactly those resets
//! among rst-trace's events and tcpdump's packets.
//!
//! Every needle makes both ends of its connections itself, on 127.0.0.1 and its own listener
//! port, so both the sent and the received reset name the needle's process.

use std::{
    collections::VecDeque,
    fmt, fs,
    io::{self, Write as _},
    mem::MaybeUninit,
    os::fd::AsRawFd as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Socket, Type};

use crate::loopback;

/// Resets a needle makes per second.
pub const PER_SECOND: u32 = 10;

/// The longest a needle waits for the kernel to do its part of one reset (a connection to be
/// queued, a reset to arrive): far longer than it takes even on a machine busy with the storm.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stale keep-alive connection sits in the client's pool after the server closed
/// it: long enough for the client's ACK of the FIN (which may be delayed) to have turned the
/// server's orphaned connection into a time-wait socket, as in the S3 test.
const STALE_IDLE: Duration = Duration::from_millis(300);

/// Resets one needle makes at most, whatever its duration: a bound on the loop.
const MAX_RESETS: u32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum NeedleKind {
    /// S4: the client closes with SO_LINGER {on, 0}.
    Linger,
    /// S5: the server closes with the client's request unread.
    Unread,
    /// S3: the server closed an idle keep-alive connection; the client writes on it later.
    Stale,
    /// S8: a listener closed with a connection in its accept queue.
    ListenerClosed,
}

impl NeedleKind {
    pub const ALL: [Self; 4] = [
        Self::Linger,
        Self::Unread,
        Self::Stale,
        Self::ListenerClosed,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::Linger => "linger",
            Self::Unread => "unread",
            Self::Stale => "stale",
            Self::ListenerClosed => "listener-closed",
        }
    }

    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.id() == id)
    }

    /// What the needle does, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Self::Linger => "connect, accept, then the client closes with SO_LINGER 0",
            Self::Unread => {
                "connect, accept, the client sends a request, the server closes without reading it"
            }
            Self::Stale => {
                "connect, accept, the server closes; 300 ms later the client writes on the \
                 connection (S3)"
            }
            Self::ListenerClosed => {
                "a listener with one connection queued (never accepted) is closed"
            }
        }
    }

    /// Whether the client sends the reset (else the server end does).
    pub fn client_sends(self) -> bool {
        self == Self::Linger
    }

    /// The causes rst-trace must give the sent and the received end.
    pub fn causes(self) -> (&'static str, &'static str) {
        match self {
            Self::Linger => ("linger_abort", "linger_abort"),
            Self::Unread => ("unread_data_close", "unread_data_close"),
            Self::Stale => ("data_after_close", "stale_connection_reuse"),
            Self::ListenerClosed => ("listener_closed", "listener_closed"),
        }
    }
}

impl fmt::Display for NeedleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One reset a needle made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: NeedleKind,
    pub pid: u32,
    pub client_port: u16,
    pub server_port: u16,
}

impl Record {
    /// (sender's port, receiver's port) of the reset on the wire.
    pub fn ports(&self) -> (u16, u16) {
        if self.kind.client_sends() {
            (self.client_port, self.server_port)
        } else {
            (self.server_port, self.client_port)
        }
    }

    /// `linger 4242 40312 20003`
    fn line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.kind, self.pid, self.client_port, self.server_port
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let record = Self {
            kind: NeedleKind::from_id(fields.next()?)?,
            pid: fields.next()?.parse().ok()?,
            client_port: fields.next()?.parse().ok()?,
            server_port: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(record)
    }
}

/// The records a needle wrote.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    text.lines()
        .map(|line| {
            Record::parse(line)
                .with_context(|| format!("{}: not a needle record: {line:?}", path.display()))
        })
        .collect()
}

/// The body of `cargo xtask bench-needle`: makes `kind` resets on 127.0.0.1:`port`,
/// `PER_SECOND` a second for `duration`, and writes one record per reset to `out`.
pub fn run(kind: NeedleKind, port: u16, duration: Duration, out: &Path) -> anyhow::Result<()> {
    let mut needle = Needle::new(kind, port)?;
    let start = Instant::now();
    let period = Duration::from_secs(1) / PER_SECOND;
    let mut records = Vec::new();
    for step in 0..MAX_RESETS {
        // A fixed schedule: a step that ran late is not made up for by a burst.
        let due = start + period * step;
        if due >= start + duration {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        needle
            .step(&mut records)
            .with_context(|| format!("the {kind} needle's reset {}", step + 1))?;
    }
    needle.finish(&mut records)?;
    let mut text = String::new();
    for record in &records {
        text.push_str(&record.line());
        text.push('\n');
    }
    let mut file =
        fs::File::create(out).with_context(|| format!("could not create {}", out.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("could not write {}", out.display()))
}

struct Needle {
    kind: NeedleKind,
    port: u16,
    pid: u32,
    /// Every kind but listener-closed keeps one listener for the whole run.
    listener: Option<Socket>,
    /// Stale: clients holding a connection the server closed, with when they saw its FIN.
    pool: VecDeque<(Socket, Instant)>,
}

impl Needle {
    fn new(kind: NeedleKind, port: u16) -> anyhow::Result<Self> {
        let listener = match kind {
            NeedleKind::ListenerClosed => None,
            _ => Some(loopback::listen(port, 64)?),
        };
        Ok(Self {
            kind,
            port,
            pid: std::process::id(),
            listener,
            pool: VecDeque::new(),
        })
    }

    fn record(&self, client: &Socket) -> anyhow::Result<Record> {
        Ok(Record {
            kind: self.kind,
            pid: self.pid,
            client_port: local_port(client)?,
            server_port: self.port,
        })
    }

    /// One reset (stale: one connection into the pool, and the writes of those idle long
    /// enough).
    fn step(&mut self, records: &mut Vec<Record>) -> anyhow::Result<()> {
        match self.kind {
            NeedleKind::Linger => {
                let (client, server) = self.connection()?;
                let record = self.record(&client)?;
                client.set_linger(Some(Duration::ZERO))?;
                drop(client);
                // Closing the server end only once the reset has arrived sends nothing more.
                wait_closed(&server, "the server end to receive the linger-0 reset")?;
                records.push(record);
            }
            NeedleKind::Unread => {
                let (client, server) = self.connection()?;
                let record = self.record(&client)?;
                (&client).write_all(b"GET /unread HTTP/1.1\r\n\r\n")?;
                wait_readable(&server, "the request to reach the server")?;
                drop(server);
                wait_closed(&client, "the client to receive the unread-data reset")?;
                records.push(record);
            }
            NeedleKind::Stale => {
                let (client, server) = self.connection()?;
                drop(server);
                client.set_read_timeout(Some(STEP_TIMEOUT))?;
                let mut byte = [MaybeUninit::<u8>::uninit(); 1];
                if client
                    .recv(&mut byte)
                    .context("waiting for the server's FIN")?
                    != 0
                {
                    bail!("the server sent data instead of its FIN");
                }
                self.pool.push_back((client, Instant::now()));
                self.reuse_stale(records, false)?;
            }
            NeedleKind::ListenerClosed => {
                let listener = loopback::listen(self.port, 8)?;
                let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                client
                    .connect_timeout(&loopback::addr(self.port).into(), STEP_TIMEOUT)
                    .context("connecting to the listener about to close")?;
                // The connection is queued once the listener reads as ready to accept.
                wait_readable(&listener, "the connection to be queued")?;
                let record = self.record(&client)?;
                drop(listener);
                wait_closed(&client, "the queued client to receive the reset")?;
                records.push(record);
            }
        }
        Ok(())
    }

    /// Stale: the client writes on each pooled connection that has been idle long enough (all
    /// of them when `all`, waiting where needed), and sees the server's time-wait socket reset
    /// it.
    fn reuse_stale(&mut self, records: &mut Vec<Record>, all: bool) -> anyhow::Result<()> {
        while let Some((_, since)) = self.pool.front() {
            let idle = since.elapsed();
            if idle < STALE_IDLE {
                if !all {
                    return Ok(());
                }
                thread::sleep(STALE_IDLE - idle);
            }
            let Some((client, _)) = self.pool.pop_front() else {
                break;
            };
            let record = self.record(&client)?;
            (&client).write_all(b"GET /stale HTTP/1.1\r\n\r\n")?;
            wait_closed(
                &client,
                "the client to receive the stale connection's reset",
            )?;
            records.push(record);
        }
        Ok(())
    }

    /// Stale: the connections still pooled when time is up are reused too, so that every
    /// connection the needle made ends in its reset.
    fn finish(&mut self, records: &mut Vec<Record>) -> anyhow::Result<()> {
        self.reuse_stale(records, true)
    }

    /// A connection to the needle's listener: (client, accepted server end).
    fn connection(&self) -> anyhow::Result<(Socket, Socket)> {
        let Some(listener) = &self.listener else {
            bail!("the {} needle has no listener", self.kind);
        };
        let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        client
            .connect_timeout(&loopback::addr(self.port).into(), STEP_TIMEOUT)
            .with_context(|| format!("connecting to the {} needle's listener", self.kind))?;
        wait_readable(listener, "the connection to be accepted")?;
        let (server, _) = listener.accept().context("accepting")?;
        Ok((client, server))
    }
}

fn local_port(socket: &Socket) -> anyhow::Result<u16> {
    socket
        .local_addr()?
        .as_socket()
        .map(|addr| addr.port())
        .context("a TCP socket without an IP address")
}

/// Waits until `socket` is readable (data, a queued connection, EOF or an error).
fn wait_readable(socket: &Socket, what: &str) -> anyhow::Result<()> {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::c_int::try_from(STEP_TIMEOUT.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one valid pollfd, for the length given.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        match ready {
            1.. => return Ok(()),
            0 => bail!("timed out waiting for {what}"),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error).with_context(|| format!("waiting for {what}"));
                }
            }
        }
    }
}

/// TCP_CLOSE in `tcp_info.tcpi_state`.
const TCP_CLOSE: u8 = 7;

/// Waits until the kernel has closed `socket`'s connection: the reset it waits for arrived.
/// (A reset in CLOSE_WAIT leaves no error that recv() reports after the FIN's EOF, so the
/// connection's state is what tells.)
fn wait_closed(socket: &Socket, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        // SAFETY: an all-zero tcp_info is a valid value for getsockopt to overwrite.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(size_of::<libc::tcp_info>())
            .context("tcp_info's size does not fit socklen_t")?;
        // SAFETY: getsockopt into a local tcp_info of the length given.
        let ret = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error()).context("getsockopt TCP_INFO");
        }
        if info.tcpi_state == TCP_CLOSE {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let record = Record {
            kind: NeedleKind::ListenerClosed,
            pid: 4242,
            client_port: 40312,
            server_port: 20006,
        };
        assert_eq!(record.line(), "listener-closed 4242 40312 20006");
        assert_eq!(Record::parse(&record.line()), Some(record));
        assert_eq!(record.ports(), (20006, 40312));
        let linger = Record {
            kind: NeedleKind::Linger,
            ..record
        };
        assert_eq!(linger.ports(), (40312, 20006), "the linger-0 client sends");
        assert_eq!(Record::parse("linger 1 2"), None);
        assert_eq!(Record::parse("linger 1 2 3 4"), None);
        assert_eq!(Record::parse("flood 1 2 3"), None);
    }
}
