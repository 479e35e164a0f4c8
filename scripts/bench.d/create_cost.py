#!/usr/bin/env python3
"""What a PROXY header to the target costs a session create (issue 10, SPEC §6).

The same uvproxyd binary started fresh for each round with and without `--proxy-protocol v1|v2`,
alternating which goes first (drift in the machine's load hits both alike). With the header, its
target is the C upstream in `--accept-proxy` mode: it reads the header before it greets and never
echoes it, as a game behind HAProxy's `accept-proxy` does (an upstream that echoed the header would
charge the proxy for reading the echo: the first measure of this did, +16-21 %). Without it, the
same upstream in plain mode. Each round creates N sessions over 64 keep-alive connections
(`loadclient create`); the proxy's CPU for the round (user + system, schedstat) over N is its CPU
per create. Reports every round, the medians and the ratio, the summed CPU ratio over all rounds,
and callgrind's user-space instructions per create for both (exact, unlike CPU time on a VM;
after 100 creates, so that what the first creates pay once per process is not counted).

Usage: create_cost.py --proxy-bin BIN --upstream-bin UP --loadclient-bin LC [--version v2]
                      [--rounds 8] [--sessions 5000] [--callgrind-creates 1000]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from metrics_cost import CLK_TCK, cpu_ns, cpu_ticks, start_proxy  # noqa: E402

VARIANTS = ("header", "plain")


def start_upstream(upstream_bin, accept_proxy):
    up = subprocess.Popen([upstream_bin, "--port", "0", "--greeting", "64"] + (["--accept-proxy"] if accept_proxy else []),
                          stdout=subprocess.PIPE, text=True)
    return up, int(up.stdout.readline().split()[1])


def create(loadclient_bin, port, n, conns, ids_file):
    out = subprocess.run([loadclient_bin, "create", "-p", str(port), "-n", str(n), "-c", str(conns), "-P", "1",
                          "-o", ids_file], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"loadclient failed: {out.stdout}{out.stderr}")


def instructions_per_create(proxy_bin, upstream_port, extra, loadclient_bin, creates, tmp, warm=100):
    """User-space instructions per create: a run with `warm + creates` creates minus a run with `warm` (so
    what the first creates pay once per process, such as lazily made tables, is not counted)."""
    # valgrind 3.19 cannot read the DWARF 5 that swiftc writes: measure a copy without it.
    stripped = os.path.join(tmp, "uvproxyd-stripped")
    if not os.path.exists(stripped):
        subprocess.run(["strip", "--strip-debug", "-o", stripped, proxy_bin], check=True)
    totals = []
    for n in (warm, warm + creates):
        out = os.path.join(tmp, "callgrind.out")
        proc, port = start_proxy(stripped, upstream_port, extra=extra,
                                 wrapper=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"))
        create(loadclient_bin, port, n, 1, os.path.join(tmp, "ids-callgrind"))
        proc.terminate()
        proc.wait(timeout=120)
        with open(out) as f:
            totals.append(int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1)))
        os.unlink(out)
    return (totals[1] - totals[0]) / creates


def measure(proxy_bin, upstream_bin, loadclient_bin, version="v1", rounds=8, sessions=5000, callgrind_creates=1000,
            say=print):
    """Returns {"cpu": {variant: [µs per create per round]}, "split": {variant: (user µs, system µs) per create},
    "instructions": {variant: per create} (absent without valgrind or with callgrind_creates 0)}."""
    tmp = tempfile.mkdtemp()
    ups = {}
    try:
        ups["header"] = start_upstream(upstream_bin, True)
        ups["plain"] = start_upstream(upstream_bin, False)
        extra = {"header": ["--proxy-protocol", version, "--max-sessions", "100000"], "plain": ["--max-sessions", "100000"]}
        cpu = {name: [] for name in VARIANTS}
        ticks = {name: [0, 0] for name in VARIANTS}  # user and system, summed over rounds
        for r in range(rounds):
            for name in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                proc, port = start_proxy(proxy_bin, ups[name][1], extra=extra[name])
                before, t0 = cpu_ns(proc.pid), cpu_ticks(proc.pid)
                try:
                    create(loadclient_bin, port, sessions, 64, os.path.join(tmp, "ids"))
                    cpu[name].append((cpu_ns(proc.pid) - before) / 1e3 / sessions)
                    for i, (a, b) in enumerate(zip(cpu_ticks(proc.pid), t0)):
                        ticks[name][i] += a - b
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                say(f"round {r + 1} {name:6s} {cpu[name][-1]:7.2f} µs CPU per create")
        n = sessions * rounds
        res = {"cpu": cpu, "version": version,
               "split": {k: tuple(t * 1e6 / CLK_TCK / n for t in v) for k, v in ticks.items()}}
        if callgrind_creates and shutil.which("valgrind"):
            res["instructions"] = {name: instructions_per_create(proxy_bin, ups[name][1], extra[name], loadclient_bin,
                                                                 callgrind_creates, tmp) for name in VARIANTS}
        return res
    finally:
        for up, _ in ups.values():
            up.terminate()
            up.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def summary(res):
    """Lines for a report: medians, summed ratio, user/system split, instructions."""
    cpu, v = res["cpu"], res["version"]
    med = {k: statistics.median(x) for k, x in cpu.items()}
    lines = [f"median CPU per create: with a {v} header {med['header']:.2f} µs, without {med['plain']:.2f} µs"
             f" -> {100 * (med['header'] / med['plain'] - 1):+.1f}%",
             f"summed over rounds: {100 * (sum(cpu['header']) / sum(cpu['plain']) - 1):+.1f}%"]
    for name, (user, system) in res["split"].items():
        lines.append(f"{name:6s} user {user:.2f} µs + system {system:.2f} µs per create")
    if "instructions" in res:
        i = res["instructions"]
        lines.append(f"user-space instructions per create (callgrind): with {i['header']:,.0f}, without {i['plain']:,.0f}"
                     f" -> {100 * (i['header'] / i['plain'] - 1):+.1f}%")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--upstream-bin", required=True)
    ap.add_argument("--loadclient-bin", required=True)
    ap.add_argument("--version", default="v1", choices=("v1", "v2"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--callgrind-creates", type=int, default=1000, help="0: no callgrind")
    args = ap.parse_args()
    res = measure(args.proxy_bin, args.upstream_bin, args.loadclient_bin, args.version, args.rounds, args.sessions,
                  args.callgrind_creates, say=lambda s: print(s, flush=True))
    print()
    print("\n".join(summary(res)))


if __name__ == "__main__":
    main()
