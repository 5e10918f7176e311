#!/bin/bash
# parley-healthcheck [PATH]: exit 0 if GET PATH (default /readyz) on this
# container's own listener answers 200, else 1. For Docker HEALTHCHECKs.
#
# bash's /dev/tcp makes the request, so the image needs no curl or wget.
# The port is taken from PARLEY_LISTEN (each image target sets it), so a
# changed listen port does not break the probe.
set -eu
path="${1:-/readyz}"
port="${PARLEY_LISTEN:-0.0.0.0:8080}"
port="${port##*:}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
status=""
IFS= read -r -t 5 status <&3 || true
exec 3<&-
case "$status" in
  "HTTP/1.1 200"*) exit 0 ;;
  *) exit 1 ;;
esac
