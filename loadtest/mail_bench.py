#!/usr/bin/env python3
"""Password reset answers and the mail queue, measured (docs/benchmarks.md).

Starts aiosmtpd (pip install aiosmtpd) and a single `parley` node on
loopback ports, signs up one account, then sends N reset requests for its
address alternating with N for addresses of no account, over one
keep-alive connection, and reports the answer times of each (they must
not tell the two apart), then how long the node takes to deliver the N
reset mails to the SMTP server.

Usage: python3 loadtest/mail_bench.py [target/release/parley] [N]
"""

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/parley"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 500


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


work = tempfile.mkdtemp(prefix="parley-mail-bench-")
maildir = os.path.join(work, "maildir")
for sub in ("tmp", "new", "cur"):
    os.makedirs(os.path.join(maildir, sub))
smtp_port, api_port = free_port(), free_port()
procs = []
try:
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{smtp_port}",
         "-c", "aiosmtpd.handlers.Mailbox", maildir]))
    wait_port(smtp_port)
    env = dict(os.environ,
               PARLEY_DATA_DIR=os.path.join(work, "data"),
               PARLEY_LISTEN=f"127.0.0.1:{api_port}",
               PARLEY_MAIL=f"smtp://127.0.0.1:{smtp_port}",
               PARLEY_MAIL_TLS="none",
               PARLEY_RATE_AUTH_PER_MINUTE="100000000",
               PARLEY_ACCOUNT_MAILS_PER_HOUR="100000000",
               PARLEY_LOG="warn")
    procs.append(subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL))
    wait_port(api_port)

    conn = http.client.HTTPConnection("127.0.0.1", api_port)

    def post(path, body):
        started = time.perf_counter()
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        answer = (response.status, response.read())
        return time.perf_counter() - started, answer

    _, (status, _) = post("/v1/auth/signup", {"username": "alice", "email": "alice@example.com",
                                              "password": "correct horse battery"})
    assert status == 201, status
    wait = time.time() + 30
    while len(os.listdir(os.path.join(maildir, "new"))) < 1 and time.time() < wait:
        time.sleep(0.01)
    baseline = len(os.listdir(os.path.join(maildir, "new")))

    known, unknown, answers = [], [], set()
    started = time.perf_counter()
    for i in range(n):
        took, answer = post("/v1/auth/password-reset", {"email": "alice@example.com"})
        known.append(took)
        answers.add(answer)
        took, answer = post("/v1/auth/password-reset", {"email": f"nobody{i}@example.com"})
        unknown.append(took)
        answers.add(answer)
    assert len(answers) == 1, answers

    def line(name, xs):
        xs = sorted(xs)
        ms = lambda x: f"{x * 1000:.2f}"
        return (f"{name:8} n={len(xs)} median {ms(statistics.median(xs))} ms, "
                f"p90 {ms(xs[int(len(xs) * 0.9)])} ms, p99 {ms(xs[int(len(xs) * 0.99)])} ms")

    print("one answer for both:", answers.pop())
    print(line("known", known))
    print(line("unknown", unknown))
    while len(os.listdir(os.path.join(maildir, "new"))) - baseline < n:
        if time.perf_counter() - started > 600:
            sys.exit("the mails did not all arrive within 10 minutes")
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    print(f"{n} reset mails delivered (and {n} requests for no account settled) "
          f"{elapsed:.2f} s after the first request: {n / elapsed:.0f} mails/s")
finally:
    for p in reversed(procs):
        p.terminate()
        p.wait()
    shutil.rmtree(work, ignore_errors=True)
