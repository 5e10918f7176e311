#!/bin/bash
# parley-entrypoint COMMAND [ARGS...]: raise the open-files limit, then
# become COMMAND (exec: it is PID 1 and receives SIGTERM itself).
#
# Every WebSocket holds a file descriptor, and the soft limit a container
# starts with may be as low as 1024 (containerd 2 no longer raises it), far
# under a gateway's PARLEY_MAX_CONNECTIONS. Raising the soft limit up to the
# hard one needs no privilege; the hard limit is the runtime's to set
# (compose `ulimits`, docker --ulimit, the runtime's defaults on Kubernetes).
set -eu
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$@"
