#!/usr/bin/env python3
"""What Parley costs Redis per unit of work, measured (docs/operations.md,
"Capacity model").

Starts a Redis of its own (a three-master Redis Cluster through
.ci/redis-cluster on ports 7200-7205, or one redis-server), a database of
its own, the api and three gateways (release binaries), then runs
`parley-loadtest` phases one after the other and reads every Redis node's
`INFO commandstats` and `INFO stats` between them:

  baseline     nothing but the deployment's own background (presence
               leases, and on a cluster the gateways' slot-map probes),
               as a rate subtracted from every other phase
  connect      N connections opened, authenticated, held 1 s, closed
               (and their presence gone after the grace)
  rooms        the same N connections, each also joined to a room of
               --room-size: the difference to `connect` is a join, its
               presence change in, its presence change out
  messages     the same connections and rooms, then --messages posted
               through the api: the difference to `rooms` is the messages
  check        (--check) a bigger mixed run: predicted from the per-unit
               figures vs measured

Every figure is a delta of Redis's own counters (commands run inside Lua
scripts included; this tool's own INFO excluded), minus the baseline rate
over the phase's length. Bytes are `total_net_input_bytes` and
`total_net_output_bytes` (client traffic; replication is reported apart).

Usage (after `cargo build --release -p parley-api -p parley-gateway -p parley-loadtest`):

  python3 loadtest/redis_costs.py [--redis cluster|single] [--bin target/release]
      [--connections 3000] [--room-size 10] [--messages 20000] [--rate 500]
      [--check --check-connections 6000 --check-room-size 50 --check-rate 200 --check-duration 60]
      [--json out.json]

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and psql,
redis-server and redis-cli. Everything listens on loopback and is stopped
at the end; every phase is bounded in count and time.
"""

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The deployment's presence grace, shortened from 10 s so that phases end
# sooner; the leave it delays costs the same.
PRESENCE_GRACE_S = 2
# A phase's second sample waits this long after the load tool exits: the
# grace, then a presence heartbeat (5 s) to flush the leaves, and a margin.
SETTLE_S = PRESENCE_GRACE_S + 5 + 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(addr, *args):
    """One command over a fresh connection; the bulk string answer."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        out = f"*{len(args)}\r\n".encode()
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        f = s.makefile("rb")
        head = f.readline().decode().strip()
        if head.startswith("$"):
            n = int(head[1:])
            return f.read(n + 2)[:n].decode()
        return head


def sample(addr):
    """Commands by name and the byte counters of one node."""
    info = "\n".join(resp(addr, "INFO", section) for section in ("commandstats", "stats", "cpu"))
    calls, stats = {}, {}
    for line in info.splitlines():
        line = line.strip()
        if line.startswith("cmdstat_"):
            name, fields = line[len("cmdstat_"):].split(":", 1)
            for f in fields.split(","):
                if f.startswith("calls="):
                    calls[name] = int(f[len("calls="):])
        elif line.startswith("total_net_"):
            k, v = line.split(":", 1)
            stats[k] = int(v)
        elif line.startswith(("used_cpu_sys:", "used_cpu_user:")):
            # The whole process's CPU time (main thread and background).
            stats["cpu_s"] = stats.get("cpu_s", 0.0) + float(line.split(":", 1)[1])
    return {"calls": calls, "stats": stats, "at": time.time()}


class Redis:
    """The Redis under test: its nodes and the URL Parley is given."""

    def __init__(self, kind, work):
        self.kind = kind
        self.work = work
        if kind == "cluster":
            self.first = 7200
            self.env = dict(os.environ, PARLEY_TEST_REDIS_CLUSTER_PORT=str(self.first))
            subprocess.run([os.path.join(REPO, ".ci/redis-cluster"), "start"], env=self.env, check=True)
            p = self.first
            self.url = f"redis-cluster://127.0.0.1:{p}?node=127.0.0.1:{p + 1}&node=127.0.0.1:{p + 2}"
        else:
            self.port = free_port()
            subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--daemonize", "yes",
                            "--dir", work, "--logfile", os.path.join(work, "redis.log")], check=True)
            for _ in range(100):
                try:
                    resp(f"127.0.0.1:{self.port}", "PING")
                    break
                except OSError:
                    time.sleep(0.05)
            self.url = f"redis://127.0.0.1:{self.port}"

    def nodes(self):
        """(address, role) of every node."""
        if self.kind != "cluster":
            return [(f"127.0.0.1:{self.port}", "master")]
        text = resp(f"127.0.0.1:{self.first}", "CLUSTER", "NODES")
        out = []
        for line in text.splitlines():
            f = line.split()
            out.append((f[1].split("@")[0], "master" if "master" in f[2] else "replica"))
        return sorted(out)

    def stop(self):
        if self.kind == "cluster":
            subprocess.run([os.path.join(REPO, ".ci/redis-cluster"), "stop"], env=self.env)
        else:
            try:
                resp(f"127.0.0.1:{self.port}", "SHUTDOWN", "NOSAVE")
            except OSError:
                pass


def sample_all(redis):
    return {addr: dict(sample(addr), role=role) for addr, role in redis.nodes()}


def delta(before, after):
    """Commands (without INFO), client bytes in/out, replication bytes out,
    and seconds between two samples, over the masters; commands per node."""
    total = {"commands": 0, "bytes_in": 0, "bytes_out": 0, "repl_out": 0, "cpu_s": 0.0, "by_command": {},
             "replica_commands": 0, "per_master": {}}
    seconds = 0.0
    for addr, a in after.items():
        b = before[addr]
        seconds = max(seconds, a["at"] - b["at"])
        calls = {k: v - b["calls"].get(k, 0) for k, v in a["calls"].items() if k != "info"}
        calls = {k: v for k, v in calls.items() if v > 0}
        n = sum(calls.values())
        if a["role"] != "master":
            total["replica_commands"] += n
            continue
        total["commands"] += n
        total["per_master"][addr] = n
        for k, v in calls.items():
            total["by_command"][k] = total["by_command"].get(k, 0) + v
        s, t = a["stats"], b["stats"]
        total["bytes_in"] += s["total_net_input_bytes"] - t["total_net_input_bytes"]
        total["bytes_out"] += s["total_net_output_bytes"] - t["total_net_output_bytes"]
        total["repl_out"] += s.get("total_net_repl_output_bytes", 0) - t.get("total_net_repl_output_bytes", 0)
        total["cpu_s"] += s["cpu_s"] - t["cpu_s"]
    total["seconds"] = seconds
    return total


# The counters a phase reports (over the masters, but replica_commands).
KEYS = ("commands", "bytes_in", "bytes_out", "repl_out", "cpu_s", "replica_commands")


def minus_rate(d, rate):
    """d with `rate` (per second, of each counter) times its length taken away."""
    out = dict(d)
    for k in KEYS:
        out[k] = d[k] - rate[k] * d["seconds"]
    return out


def minus(a, b):
    out = dict(a)
    for k in KEYS:
        out[k] = a[k] - b[k]
    out["by_command"] = {k: a["by_command"].get(k, 0) - b["by_command"].get(k, 0)
                         for k in set(a["by_command"]) | set(b["by_command"])}
    return out


def per(d, n):
    return {k: d[k] / n for k in ("commands", "bytes_in", "bytes_out", "repl_out", "cpu_s")}


def wait_ready(port, proc, name, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{name} exited (status {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{name} not ready on {port}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", choices=["cluster", "single"], default="cluster")
    ap.add_argument("--bin", default=os.path.join(REPO, "target/release"))
    ap.add_argument("--connections", type=int, default=3000)
    ap.add_argument("--room-size", type=int, default=10)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--baseline", type=float, default=20, help="seconds of the quiet window")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--check-connections", type=int, default=6000)
    ap.add_argument("--check-room-size", type=int, default=50)
    ap.add_argument("--check-rate", type=float, default=200)
    ap.add_argument("--check-duration", type=int, default=60)
    ap.add_argument("--json")
    args = ap.parse_args()
    for n, cap in ((args.connections, 60000), (args.check_connections, 60000), (args.messages, 10 ** 7)):
        if not 1 <= n <= cap:
            sys.exit(f"{n}: out of bounds (1 to {cap})")

    work = tempfile.mkdtemp(prefix="parley-redis-costs-")
    database = f"parley_costs_{os.getpid()}"
    token = secrets.token_hex(24)
    procs = []
    redis = None
    try:
        redis = Redis(args.redis, work)
        subprocess.run(["psql", "postgres://postgres@127.0.0.1:5432/postgres", "-qc",
                        f'CREATE DATABASE "{database}"'], check=True)
        api_port = free_port()
        gw_ports = [free_port() for _ in range(3)]
        common = dict(
            os.environ,
            PARLEY_DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}?sslmode=disable",
            PARLEY_DATABASE_MAX_CONNECTIONS="20",
            PARLEY_REDIS_URL=redis.url,
            PARLEY_REDIS_PREFIX="parley-costs:",
            PARLEY_DATA_DIR=os.path.join(work, "data"),
            PARLEY_ADMIN_TOKEN=token,
            PARLEY_RATE_MESSAGES_PER_SECOND="1000000",
            PARLEY_RATE_MESSAGES_BURST="1000000",
            PARLEY_PRESENCE_GRACE=f"{PRESENCE_GRACE_S}s",
            PARLEY_LOG="warn",
            NO_COLOR="1",
        )
        common.pop("CARGO_TARGET_DIR", None)
        os.makedirs(common["PARLEY_DATA_DIR"], mode=0o700)
        log = open(os.path.join(work, "services.log"), "w")
        api = subprocess.Popen([os.path.join(args.bin, "parley-api")], stdout=log, stderr=log,
                               env=dict(common, PARLEY_LISTEN=f"127.0.0.1:{api_port}"))
        procs.append(api)
        wait_ready(api_port, api, "the api")
        for i, port in enumerate(gw_ports):
            gw = subprocess.Popen([os.path.join(args.bin, "parley-gateway")], stdout=log, stderr=log,
                                  env=dict(common, PARLEY_LISTEN=f"127.0.0.1:{port}"))
            procs.append(gw)
            wait_ready(port, gw, f"gateway {i + 1}")
        lt = os.path.join(args.bin, "parley-loadtest")
        target = ["--api", f"http://127.0.0.1:{api_port}", "--quiet",
                  "--gateways", ",".join(f"ws://127.0.0.1:{p}/ws" for p in gw_ports)]
        lt_env = dict(os.environ, PARLEY_ADMIN_TOKEN=token)

        def run(name, argv):
            """One load tool run with the samples around it: its report and the delta."""
            out = os.path.join(work, f"{name}.json")
            before = sample_all(redis)
            subprocess.run([lt, *argv, *target, "--json", out], env=lt_env, check=True,
                           stdout=subprocess.DEVNULL, timeout=1800)
            time.sleep(SETTLE_S)
            d = delta(before, sample_all(redis))
            with open(out) as f:
                return json.load(f), d

        print(f"Redis: {args.redis} ({redis.url}); nodes {redis.nodes()}", file=sys.stderr)
        # Let start-up settle (first leases, first probes) before the baseline.
        time.sleep(6)
        before = sample_all(redis)
        time.sleep(args.baseline)
        base = delta(before, sample_all(redis))
        rate = {k: base[k] / base["seconds"] for k in
                KEYS}
        print(f"baseline: {rate['commands']:.2f} commands/s {base['by_command']}", file=sys.stderr)

        n = args.connections
        rooms = max(1, n // args.room_size)
        n = rooms * args.room_size
        hold = ["-n", str(n), "--connect-rate", "1000", "-d", "1s"]
        _, connect = run("connect", ["idle", *hold])
        connect = minus_rate(connect, rate)
        _, joined = run("rooms", ["idle", *hold, "--rooms", str(rooms)])
        joined = minus_rate(joined, rate)
        report, fan = run("messages", ["fanout", "-c", str(n), "-r", str(rooms), "-p", str(min(rooms, 100)),
                                       "--rate", str(args.rate), "-m", str(args.messages),
                                       "-d", "30m", "--drain", "10s", "--connect-rate", "1000"])
        fan = minus_rate(fan, rate)
        step = report["steps"][0]
        acked = step["tally"]["posts_acked"]
        messages = minus(fan, joined)

        units = {
            "connection": per(connect, n),
            "connection_with_room": per(joined, n),
            "presence_change": per(minus(joined, connect), 2 * n),
            "message": per(messages, acked),
        }
        result = {
            "redis": args.redis,
            "masters": sum(1 for _, r in redis.nodes() if r == "master"),
            "gateways": 3,
            "connections": n,
            "rooms": rooms,
            "room_size": args.room_size,
            "messages_acked": acked,
            "baseline_per_s": rate,
            "baseline_by_command": base["by_command"],
            "units": units,
            "commands": {
                "connect": connect["by_command"],
                "rooms": joined["by_command"],
                "messages": {k: v for k, v in messages["by_command"].items() if v},
            },
        }
        print(json.dumps(result, indent=2))

        if args.check:
            c = args.check_connections
            check_rooms = max(1, c // args.check_room_size)
            c = check_rooms * args.check_room_size
            report, got = run("check", [
                "fanout", "-c", str(c), "-r", str(check_rooms), "-p", str(min(check_rooms, 100)),
                "--rate", str(args.check_rate), "-d", f"{args.check_duration}s", "--drain", "10s",
                "--connect-rate", "1000"])
            step = report["steps"][0]
            acked = step["tally"]["posts_acked"]
            predicted = {k: rate[k] * got["seconds"] + c * units["connection_with_room"][k]
                         + acked * units["message"][k] for k in ("commands", "bytes_in", "bytes_out", "cpu_s")}
            result["check"] = {
                "connections": c, "rooms": check_rooms, "room_size": args.check_room_size,
                "messages_acked": acked, "seconds": got["seconds"],
                "publish_seconds": args.check_duration,
                "predicted": predicted,
                "measured": {k: got[k] for k in ("commands", "bytes_in", "bytes_out", "cpu_s")},
                "per_master_commands": got["per_master"],
                "lost": step["tally"]["lost"],
                "deliveries": step["tally"]["delivered"],
            }
            print(json.dumps(result["check"], indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if redis:
            redis.stop()
        subprocess.run(["psql", "postgres://postgres@127.0.0.1:5432/postgres", "-qc",
                        f'DROP DATABASE IF EXISTS "{database}"'])
        print(f"logs in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
