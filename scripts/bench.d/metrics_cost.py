#!/usr/bin/env python3
"""What the per-request latency histogram costs a poll (scripts/bench-metrics).

Two builds of the same proxy, `--with` the histogram and `--without` it, each in front of the same
C upstream with the same sessions, polled by the same wrk script in alternating rounds (so drift in
the machine's load hits both alike). Reports, per build, the median throughput and proxy CPU per
request over the rounds, the ratios, and callgrind's instructions per poll for both.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ns(pid):
    """On-CPU nanoseconds of a process, summed over its threads (schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def cpu_ticks(pid):
    """User and system clock ticks of a process (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def start_proxy(binary, upstream_port, wrapper=(), extra=()):
    """The proxy in front of the upstream on a free port (`extra` options after the defaults win)."""
    proc = subprocess.Popen(list(wrapper) + [binary, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream_port}",
                             "--log-level", "notice", "--max-sessions", "5000"] + list(extra),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
        if time.time() > deadline:
            break
    proc.kill()
    raise SystemExit(f"{binary} did not become ready")


def create_sessions(port, n):
    ids = []
    for _ in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/mud", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            ids.append(r.read().decode())
    return ids


def wrk(args, port, ids_file, duration):
    env = dict(os.environ, BENCH_IDS=ids_file)
    out = subprocess.run([args.wrk_bin, "-t1", "-c64", f"-d{duration:g}s", "--latency", "-s",
                          os.path.join(HERE, "poll.lua"), f"http://127.0.0.1:{port}/"],
                         env=env, capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"BENCH requests=(\d+) duration_us=(\d+)", out)
    if not m:
        raise SystemExit(f"wrk output not understood:\n{out}")
    return int(m.group(1)), int(m.group(2)) / 1e6


def callgrind_per_poll(args, binary, upstream_port, polls):
    """User-space instructions per poll: a run with `polls` polls minus a run with none."""
    totals = []
    # valgrind 3.19 cannot read the DWARF 5 that swiftc writes: measure a copy without it.
    stripped = os.path.join(tempfile.mkdtemp(), "uvproxyd")
    subprocess.run(["strip", "--strip-debug", "-o", stripped, binary], check=True)
    binary = stripped
    for n in (0, polls):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "cg.out")
            proc, port = start_proxy(binary, upstream_port,
                                     wrapper=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"))
            ids = create_sessions(port, 20)
            if n:
                poll_python(port, ids, n)
            proc.terminate()
            proc.wait(timeout=60)
            with open(out) as f:
                m = re.search(r"^summary: (\d+)", f.read(), re.M)
            totals.append(int(m.group(1)))
    return (totals[1] - totals[0]) / polls


def poll_python(port, ids, n):
    """n polls over one keep-alive connection (callgrind measures the proxy, not this client)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(n):
        conn.request("GET", f"/mud?id={ids[i % len(ids)]}")
        conn.getresponse().read()
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--with", dest="with_bin", required=True)
    ap.add_argument("--without", dest="without_bin", required=True)
    ap.add_argument("--upstream-bin", required=True)
    ap.add_argument("--wrk-bin", default=shutil.which("wrk") or "/usr/bin/wrk")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--callgrind-polls", type=int, default=5000)
    args = ap.parse_args()

    up = subprocess.Popen([args.upstream_bin, "--port", "0", "--greeting", "64"], stdout=subprocess.PIPE, text=True)
    upstream_port = int(up.stdout.readline().split()[1])
    procs = {}
    try:
        tmp = tempfile.mkdtemp()
        for name, binary in (("with", args.with_bin), ("without", args.without_bin)):
            proc, port = start_proxy(binary, upstream_port)
            ids_file = os.path.join(tmp, f"ids-{name}")
            procs[name] = (proc, port, ids_file)  # killed by `finally` if what follows fails (no wrk)
            with open(ids_file, "w") as f:
                f.write("\n".join(create_sessions(port, args.sessions)) + "\n")
            wrk(args, port, ids_file, 1)  # warm-up
        results = {"with": [], "without": []}
        if args.rounds == 0:  # callgrind only
            for proc, _, _ in procs.values():
                proc.terminate()
        else:
            run_rounds(args, procs, results)
        if shutil.which("valgrind") and args.callgrind_polls:
            iw = callgrind_per_poll(args, args.with_bin, upstream_port, args.callgrind_polls)
            io = callgrind_per_poll(args, args.without_bin, upstream_port, args.callgrind_polls)
            print(f"callgrind instructions per poll: with {iw:.0f}, without {io:.0f} -> {100 * (iw / io - 1):+.1f}%")
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
        up.terminate()


def run_rounds(args, procs, results):
    """Alternating wrk rounds against both proxies; prints per-round and median figures."""
    for r in range(args.rounds):
        order = ("with", "without") if r % 2 == 0 else ("without", "with")
        for name in order:
            proc, port, ids_file = procs[name]
            before = cpu_ns(proc.pid)
            ticks_before = cpu_ticks(proc.pid)
            requests, seconds = wrk(args, port, ids_file, args.duration)
            cpu = (cpu_ns(proc.pid) - before) / 1e3 / requests
            user, system = (after - b for after, b in zip(cpu_ticks(proc.pid), ticks_before))
            results[name].append((requests / seconds, cpu, requests, user, system))
            print(f"round {r + 1} {name:8s} {requests / seconds:10.0f} req/s  {cpu:6.2f} µs CPU/request",
                  flush=True)
    for proc, _, _ in procs.values():
        proc.terminate()
        proc.wait(timeout=10)
    rps = {k: statistics.median(x[0] for x in v) for k, v in results.items()}
    cpu = {k: statistics.median(x[1] for x in v) for k, v in results.items()}
    print(f"\nmedian over {args.rounds} rounds: with {rps['with']:.0f} req/s, without {rps['without']:.0f} req/s"
          f" -> throughput ratio {rps['with'] / rps['without']:.3f}")
    print(f"proxy CPU per request: with {cpu['with']:.2f} µs, without {cpu['without']:.2f} µs"
          f" -> {100 * (cpu['with'] / cpu['without'] - 1):+.1f}%")
    # Summed over all rounds (ticks are 10 ms: only the sums are precise enough), user space
    # and kernel apart: the kernel's share is the same code in both builds.
    split = {}
    for name, rounds in results.items():
        requests = sum(x[2] for x in rounds)
        user, system = (sum(x[i] for x in rounds) * 1e6 / CLK_TCK / requests for i in (3, 4))
        split[name] = (user, system)
        print(f"{name:8s} user {user:.3f} µs + system {system:.3f} µs = {user + system:.3f} µs per request"
              f" (user share {user / (user + system):.2f})")
    (uw, sw), (uo, so) = split["with"], split["without"]
    print(f"summed over rounds: user {100 * (uw / uo - 1):+.1f}%, total {100 * ((uw + sw) / (uo + so) - 1):+.1f}%")


if __name__ == "__main__":
    main()
