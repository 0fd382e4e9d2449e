//! Loopback endpoints shared by the bench's and the soak's workloads (they send traffic to 127.0.0.1 only).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::Context as _;
use socket2::{Domain, Socket, Type};

/// 127.0.0.1:`port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// A listener on 127.0.0.1:`port` with `backlog`; SO_REUSEADDR so that the previous run's TIME_WAIT sockets do
/// not block the bind.
pub fn listen(port: u16, backlog: i32) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr(port).into())
        .with_context(|| format!("could not bind 127.0.0.1:{port}"))?;
    socket.listen(backlog)?;
    Ok(socket)
}
