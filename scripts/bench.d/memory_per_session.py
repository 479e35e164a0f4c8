#!/usr/bin/env python3
"""RSS per idle session of two builds side by side (docs/BENCHMARKS.md).

Each build, started fresh in front of the same C upstream (64-byte greeting), gets 200 sessions
as a warm-up, then 15,000 more over 64 connections whose greetings are read and acknowledged
(`loadclient create`, `loadclient drain`); RSS per session = (VmRSS after − VmRSS before) / 15,000.

Usage: memory_per_session.py OLD_BIN NEW_BIN [--upstream-bin B] [--loadclient-bin L] [--sessions N]
(the process's open-file limit must allow N sessions: one descriptor each)
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from metrics_cost import start_proxy  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    root = os.path.dirname(os.path.dirname(HERE))
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--upstream-bin", default=os.path.join(root, ".build/bench/upstream"))
    ap.add_argument("--loadclient-bin", default=os.path.join(root, ".build/bench/loadclient"))
    ap.add_argument("--sessions", type=int, default=15000)
    args = ap.parse_args()
    up = subprocess.Popen([args.upstream_bin, "--port", "0", "--greeting", "64"], stdout=subprocess.PIPE, text=True)
    upstream_port = int(up.stdout.readline().split()[1])
    tmp = tempfile.mkdtemp()
    try:
        for name, binary in (("old", args.old), ("new", args.new)):
            proc, port = start_proxy(binary, upstream_port, extra=["--max-sessions", str(args.sessions + 1000)])
            lc = [args.loadclient_bin]
            subprocess.run(lc + ["create", "-p", str(port), "-n", "200", "-c", "16", "-P", "1", "-o", f"{tmp}/warm"],
                           check=True, capture_output=True)
            before = rss_kib(proc.pid)
            subprocess.run(lc + ["create", "-p", str(port), "-n", str(args.sessions), "-c", "64", "-P", "1",
                                 "-o", f"{tmp}/ids"], check=True, capture_output=True)
            subprocess.run(lc + ["drain", "-p", str(port), "-i", f"{tmp}/ids", "-c", "64", "-g", "64"],
                           check=True, capture_output=True)
            time.sleep(1)
            after = rss_kib(proc.pid)
            print(f"{name}: VmRSS {before} -> {after} KiB: {(after - before) * 1024 / args.sessions:.0f} bytes per session")
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        up.terminate()


if __name__ == "__main__":
    main()
