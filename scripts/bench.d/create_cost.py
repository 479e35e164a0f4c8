#!/usr/bin/env python3
"""What a PROXY header to the target costs a session create (issue 10, SPEC §6).

The same uvproxyd binary in front of the same C upstream, started fresh for each round with and
without `--proxy-protocol v1|v2`, alternating which goes first (drift in the machine's load hits
both alike). Each round creates N sessions over 64 keep-alive connections (`loadclient create`);
the proxy's CPU for the round (user + system, schedstat) over N is its CPU per create. Reports
every round, the medians and the ratio, and the summed CPU ratio over all rounds.

Usage: create_cost.py --proxy-bin BIN --upstream-bin UP --loadclient-bin LC [--version v2]
                      [--rounds 8] [--sessions 5000]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from metrics_cost import CLK_TCK, cpu_ns, cpu_ticks  # noqa: E402


def start(binary, upstream_port, extra):
    proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream_port}",
                             "--log-level", "notice", "--max-sessions", "100000"] + extra,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    raise SystemExit(f"{binary} did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--upstream-bin", required=True)
    ap.add_argument("--loadclient-bin", required=True)
    ap.add_argument("--version", default="v1", choices=("v1", "v2"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=5000)
    args = ap.parse_args()

    up = subprocess.Popen([args.upstream_bin, "--port", "0", "--greeting", "64"], stdout=subprocess.PIPE, text=True)
    upstream_port = int(up.stdout.readline().split()[1])
    variants = {"header": ["--proxy-protocol", args.version], "plain": []}
    results = {name: [] for name in variants}
    split = {name: [0, 0] for name in variants}  # user and system ticks, summed over rounds
    tmp = tempfile.mkdtemp()
    try:
        for r in range(args.rounds):
            for name in (("header", "plain") if r % 2 == 0 else ("plain", "header")):
                proc, port = start(args.proxy_bin, upstream_port, variants[name])
                before = cpu_ns(proc.pid)
                ticks = cpu_ticks(proc.pid)
                out = subprocess.run([args.loadclient_bin, "create", "-p", str(port), "-n", str(args.sessions),
                                      "-c", "64", "-P", "1", "-o", os.path.join(tmp, "ids")],
                                     capture_output=True, text=True, timeout=300)
                cpu = (cpu_ns(proc.pid) - before) / 1e3 / args.sessions
                user, system = (a - b for a, b in zip(cpu_ticks(proc.pid), ticks))
                split[name][0] += user
                split[name][1] += system
                proc.terminate()
                proc.wait(timeout=30)
                if out.returncode != 0:
                    raise SystemExit(f"loadclient failed: {out.stdout}{out.stderr}")
                results[name].append(cpu)
                print(f"round {r + 1} {name:6s} {cpu:7.2f} µs CPU per create", flush=True)
    finally:
        up.terminate()
    med = {k: statistics.median(v) for k, v in results.items()}
    total = {k: sum(v) for k, v in results.items()}
    print(f"\nmedian CPU per create: with a {args.version} header {med['header']:.2f} µs, without {med['plain']:.2f} µs"
          f" -> {100 * (med['header'] / med['plain'] - 1):+.1f}%")
    print(f"summed over rounds: {100 * (total['header'] / total['plain'] - 1):+.1f}%")
    n = args.sessions * args.rounds
    for name, (user, system) in split.items():
        print(f"{name:6s} user {user * 1e6 / CLK_TCK / n:.2f} µs + system {system * 1e6 / CLK_TCK / n:.2f} µs per create")


if __name__ == "__main__":
    main()
