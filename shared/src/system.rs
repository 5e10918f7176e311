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
