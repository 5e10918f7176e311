//! Process limits.

/// File descriptors a process needs besides its sockets to clients: pools,
/// Redis, listeners, logs, the runtime's own.
pub const RESERVED_FILES: u64 = 256;

/// Raises the soft open-files limit to the hard limit (each WebSocket is a
/// file descriptor; containers often start at a soft 1024) and returns the
/// resulting soft limit. Warns when `wanted` sockets will not fit.
pub fn raise_open_files_limit(wanted: u64) -> u64 {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(0)
        }
    };
    if wanted + RESERVED_FILES > limit {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = wanted,
            "the open-files limit is below PARLEY_MAX_CONNECTIONS plus {RESERVED_FILES}: \
             connections beyond it will fail with EMFILE; raise `ulimit -n` (or the container's nofile)"
        );
    }
    limit
}

/// Pending connections the kernel may queue for a listener. Tokio's default
/// (1024) overflows when thousands of clients reconnect at once (a gateway
/// restart), and overflowing costs each of them a SYN retry: one second.
/// The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with [`LISTEN_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
