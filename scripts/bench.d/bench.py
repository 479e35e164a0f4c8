#!/usr/bin/env python3
"""Orchestrates scripts/bench: starts the upstream, uvproxyd instances and nginx, runs wrk and the
load client phase by phase, accounts CPU per process and prints (and writes) the results table.
Phases (--only): create (creation, memory per idle session, idle CPU), poll (against nginx), echo
(round trips and flood), streams (SSE streams against long-polls: memory, broadcast, issue 5),
websocket (WebSocket against SSE + POST: CPU per echo round trip, memory per idle connection, issue 12),
proxy-protocol (a session create with a PROXY header to the game against one without, issue 10).

Run through scripts/bench, which builds everything first. Each phase records the CPU time
(utime + stime) of the proxy, the upstream and nginx from /proc/PID/stat before and after, and
the CPU time of wrk / the load client from wait4()'s rusage, so a reader can see who was the limit.
"""

import argparse
import datetime
import os
import platform
import re
import resource
import select
import shutil
import statistics
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ws_cost  # noqa: E402  (beside this file)
import create_cost  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
GREETING = 64          # bytes each upstream connection sends on accept
MAX_SESSIONS = 20000
QUIET = 0.10         # before a measure, wait until the machine is below this share of one core busy
DISTURBED = 0.15     # a poll round is repeated when other load exceeded this share of one core
PROXY_FLAGS = ["--max-sessions", str(MAX_SESSIONS), "--log-level", "warning"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- /proc helpers

def cpu_seconds(pid):
    """utime + stime of a process (all its threads, live and dead), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_sample(pid):
    """(utime + stime in seconds, on-CPU ns summed over the threads' schedstat, thread ids)."""
    stat = cpu_seconds(pid)
    ns, tids = 0, []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task")):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
            tids.append(tid)
    except (OSError, ValueError, IndexError):
        ns, tids = None, None
    return stat, ns, tids


def sys_seconds(pid):
    """stime (CPU time in the kernel) of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    return int(data[data.rindex(")") + 2:].split()[12]) / CLK_TCK


def cpu_delta(a, b):
    """CPU seconds between two samples of one process. utime + stime count in clock ticks (10 ms);
    when the process kept the same threads in between, the schedstat run times give the same
    figure in nanoseconds, so short phases are measured precisely too."""
    if a is None or b is None or a[0] is None or b[0] is None:
        return 0.0
    if a[1] is not None and b[1] is not None and a[2] == b[2]:
        return (b[1] - a[1]) / 1e9
    return b[0] - a[0]


def machine_cpu():
    """Machine-wide CPU seconds from /proc/stat (all CPUs): (busy, steal). Busy = user + nice + system
    + irq + softirq: with tick-based accounting, interrupt time is also charged to the interrupted
    process, so busy minus the bench processes is what everything else used (an estimate)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def listening_ports(pid):
    """TCP ports a process listens on, from its socket fds and /proc/net/tcp (fallback when the
    ready line is not logged)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]", link)
            if m:
                inodes.add(m.group(1))
    except OSError:
        return []
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and parts[9] in inodes:
                        ports.append(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def parse_kv(text, prefix=""):
    for line in text.splitlines():
        if line.startswith(prefix) and "=" in line:
            return {k: v for k, v in (tok.split("=", 1) for tok in line[len(prefix):].split() if "=" in tok)}
    return None


# ---------------------------------------------------------------- processes

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="uvproxyd-bench-")
        self.procs = []            # long-running processes we started (Popen), to stop at the end
        self.phases = []           # per-phase CPU accounting rows
        self.watch = {}            # label -> Popen whose CPU each phase records ("proxy", "upstream", "nginx")
        self.n_log = 0
        self.quiet_budget = args.quiet_wait

    # -- long-running servers

    def start_upstream(self):
        p = subprocess.Popen([self.args.upstream_bin, "--port", "0", "--greeting", str(GREETING)],
                             stdout=subprocess.PIPE, stderr=open(os.path.join(self.tmp, "upstream.err"), "a"),
                             text=True)
        self.procs.append(p)
        p.name = "upstream"
        line = p.stdout.readline()
        m = re.match(r"ready (\d+)", line or "")
        if not m:
            raise BenchError(f"upstream did not start: {line!r}")
        p.port = int(m.group(1))
        log(f"upstream pid {p.pid} on 127.0.0.1:{p.port} ({GREETING}-byte greeting)")
        return p

    def start_proxy(self, upstream_port):
        self.n_log += 1
        logpath = os.path.join(self.tmp, f"proxy-{self.n_log}.log")
        cmd = [self.args.proxy_bin, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream_port}"] + PROXY_FLAGS
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(logpath, "w"))
        self.procs.append(p)
        p.name = "uvproxyd"
        end = time.time() + 15
        port = None
        while port is None:
            if p.poll() is not None:
                raise BenchError(f"uvproxyd exited with {p.returncode}: {open(logpath).read()[-2000:]}")
            if time.time() > end:
                raise BenchError("uvproxyd did not start listening within 15 s")
            with open(logpath, errors="replace") as f:
                m = re.search(r"uvproxyd ready: listening on \S*:(\d+)", f.read())
            if m:
                port = int(m.group(1))
                break
            # --log-level warning hides the (notice-level) ready line: find the listening socket instead.
            ports = listening_ports(p.pid)
            if ports:
                port = ports[0]
                break
            time.sleep(0.02)
        end = time.time() + 10
        while True:
            try:
                if http_get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > end:
                raise BenchError("uvproxyd /healthz did not answer")
            time.sleep(0.02)
        p.port = port
        log(f"uvproxyd pid {p.pid} on 127.0.0.1:{port} -> upstream 127.0.0.1:{upstream_port}")
        return p

    def start_nginx(self):
        prefix = os.path.join(self.tmp, "nginx")
        os.makedirs(prefix, exist_ok=True)
        port = free_port()
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            conf = f.read().replace("@PREFIX@", prefix).replace("@PORT@", str(port))
        confpath = os.path.join(prefix, "nginx.conf")
        with open(confpath, "w") as f:
            f.write(conf)
        p = subprocess.Popen([self.args.nginx_bin, "-p", prefix, "-c", confpath, "-e", os.path.join(prefix, "error.log")],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(prefix, "stderr.log"), "w"))
        self.procs.append(p)
        p.name = "nginx"
        p.port = port
        try:
            wait_port(port)
        except BenchError:
            raise BenchError("nginx did not start: " + open(os.path.join(prefix, "stderr.log")).read()[-1000:])
        log(f"nginx pid {p.pid} (workers {children(p.pid)}) on 127.0.0.1:{port}")
        return p

    def stop(self, p, timeout=30):
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{p.name} pid {p.pid} did not stop in {timeout} s: SIGKILL")
            p.kill()
            p.wait()
        for k in [k for k, v in self.watch.items() if v is p]:
            del self.watch[k]

    def cleanup(self):
        for p in reversed(self.procs):
            try:
                self.stop(p, timeout=10)
            except Exception:
                pass

    def wait_quiet(self, what, limit=None):
        """Waits (from a budget of args.quiet_wait seconds for the whole run, and at most `limit`
        seconds here) until the machine is quiet: under QUIET of one core busy over half a second,
        the bench's idle servers included."""
        waited = 0.0
        while True:
            b0 = machine_cpu()
            time.sleep(0.5)
            b1 = machine_cpu()
            load = (b1[0] - b0[0] + b1[1] - b0[1]) / 0.5
            if load < QUIET or self.quiet_budget <= 0 or (limit is not None and waited >= limit):
                if waited:
                    log(f"{what}: waited {waited:.1f} s for other load to pass (now {load * 100:.0f} % of a core)")
                return
            if not waited:
                log(f"{what}: machine busy ({load * 100:.0f} % of a core outside the bench): waiting")
            waited += 0.5
            self.quiet_budget -= 0.5

    # -- CPU accounting

    def server_cpu(self):
        out = {}
        for label, p in self.watch.items():
            if p.poll() is not None:
                continue
            pids = [p.pid] + (children(p.pid) if label == "nginx" else [])
            out[label] = {pid: cpu_sample(pid) for pid in pids}
        return out

    def run_client(self, kind, cmd, env=None, timeout=120, ok_codes=(0,)):
        """Runs wrk or the load client to completion; returns (stdout, cpu seconds of the child)."""
        outpath = os.path.join(self.tmp, f"{kind}.out")
        with open(outpath, "w") as out, open(os.path.join(self.tmp, f"{kind}.err"), "w") as err:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        end = time.time() + timeout
        try:
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.time() > end:
                    raise BenchError(f"{kind} did not finish within {timeout} s: {' '.join(cmd)}")
                time.sleep(0.005)
        except BaseException:
            p.kill()
            os.wait4(p.pid, 0)
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        stdout = open(outpath).read()
        if p.returncode not in ok_codes:
            stderr = open(os.path.join(self.tmp, f"{kind}.err")).read()
            raise BenchError(f"{kind} exited {p.returncode}: {' '.join(cmd)}\n{stdout}{stderr}")
        return stdout, ru.ru_utime + ru.ru_stime

    def phase(self, name, kind=None, cmd=None, env=None, timeout=120, sleep=None, record=True, ok_codes=(0,),
              action=None):
        """One measured phase: a client run (kind 'wrk' or 'loadclient'), a call of `action` (whose
        result is returned; a client it drives is measured by being in self.watch) or a plain sleep."""
        before = self.server_cpu()
        sys0 = sys_seconds(self.watch["proxy"].pid) if "proxy" in self.watch else None
        machine0 = machine_cpu()
        self0 = os.times()
        t0 = time.monotonic()
        stdout, client_cpu = "", 0.0
        if cmd is not None:
            stdout, client_cpu = self.run_client(kind, cmd, env=env, timeout=timeout, ok_codes=ok_codes)
        elif action is not None:
            stdout = action()
        else:
            time.sleep(sleep)
        wall = time.monotonic() - t0
        after = self.server_cpu()
        machine1 = machine_cpu()
        self1 = os.times()
        row = {"name": name, "wall": wall, "steal": machine1[1] - machine0[1]}
        # CPU of everything else on the machine (other processes, this script), to spot interference.
        row["other"] = (machine1[0] - machine0[0]) - (self1.user + self1.system - self0.user - self0.system)
        if sys0 is not None and "proxy" in self.watch:
            row["proxy_sys"] = sys_seconds(self.watch["proxy"].pid) - sys0
        for label in before:
            if label in after:
                row[label] = sum(cpu_delta(before[label][pid], after[label].get(pid)) for pid in before[label])
        if kind:
            row[kind] = client_cpu
        ours = sum(row.get(k, 0.0) for k in ("proxy", "upstream", "nginx", "wrk", "loadclient"))
        row["other"] = max(0.0, row["other"] - ours)
        if record:
            self.phases.append(row)
        return stdout, row

    # -- clients

    def loadclient(self, name, port, mode, *opts, timeout=120, record=True):
        cmd = [self.args.loadclient_bin, mode, "-p", str(port), "-T", str(timeout)] + [str(o) for o in opts]
        log(f"{name}: loadclient {mode} {' '.join(str(o) for o in opts)}")
        # flood exits 1 when the bytes do not verify: still report it (as FAIL) rather than abort.
        stdout, row = self.phase(name, "loadclient", cmd, timeout=timeout + 10, record=record,
                                 ok_codes=(0, 1) if mode == "flood" else (0,))
        kv = parse_kv(stdout)
        if kv is None:
            raise BenchError(f"no result from loadclient {mode}: {stdout!r}")
        return kv, row

    def wrk(self, name, port, ids_file, duration, record=True):
        env = dict(os.environ, BENCH_IDS=ids_file)
        cmd = [self.args.wrk_bin, "-t1", "-c64", f"-d{duration:g}s", "--latency", "-s", os.path.join(HERE, "poll.lua"),
               f"http://127.0.0.1:{port}/"]
        log(f"{name}: wrk -t1 -c64 -d{duration:g}s")
        stdout, row = self.phase(name, "wrk", cmd, env=env, timeout=duration + 30, record=record)
        kv = parse_kv(stdout, "BENCH ")
        if kv is None:
            raise BenchError(f"no BENCH line from wrk: {stdout!r}")
        r = {k: float(v) for k, v in kv.items()}
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["errors"] = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
        return r, row


class HoldClient:
    """`loadclient hold`, driven through its stdin: it holds an SSE stream or a long-poll on every
    session of an ids file (one connection each), broadcasts on command and reports one line per
    command. Its CPU is measured from /proc like a server's (put it in Bench.watch as "loadclient")."""

    def __init__(self, bench, port, ids_file, kind, timeout):
        self.bench, self.kind = bench, kind
        cmd = [bench.args.loadclient_bin, "hold", "-p", str(port), "-i", ids_file, "-k", kind, "-g", str(GREETING),
               "-T", str(timeout)]
        self.errpath = os.path.join(bench.tmp, f"hold-{kind}.err")
        log(f"loadclient hold -k {kind} ({port})")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(self.errpath, "w"), text=True)
        self.p.name = f"loadclient hold {kind}"
        self.pid = self.p.pid
        bench.procs.append(self.p)

    def poll(self):
        return self.p.poll()

    def line(self, timeout=60):
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        text = self.p.stdout.readline() if ready else ""
        kv = parse_kv(text)
        if kv is None or "error" in kv:
            why = "timed out" if not ready else f"exited {self.p.poll()}" if not text else text.strip()
            raise BenchError(f"loadclient hold -k {self.kind}: {why}: {open(self.errpath).read()[-1500:]}")
        return kv

    def command(self, cmd, timeout=60):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.line(timeout)

    def close(self):
        """Closes every held connection; returns the client's total CPU seconds."""
        kv = self.command("close")
        _, status, ru = os.wait4(self.p.pid, 0)
        self.p.returncode = os.waitstatus_to_exitcode(status)
        return kv, ru.ru_utime + ru.ru_stime


def open_sessions(port):
    _, text = http_get(port, "/metrics")
    m = re.search(r'^uvproxyd_sessions\{state="open"\}\s+([0-9.]+)', text, re.M)
    return int(float(m.group(1))) if m else None


def gauge(port, name):
    """A gauge from /metrics (uvproxyd_long_polls, uvproxyd_event_streams, ...)."""
    _, text = http_get(port, "/metrics")
    m = re.search(rf"^{name}\s+([0-9.e+]+)", text, re.M)
    return float(m.group(1)) if m else None


def noise(row):
    """Share of one core used by anything outside the bench (or stolen by the hypervisor) in a phase;
    0 when that is under 50 ms in all (/proc/stat counts 10 ms ticks: short phases would look noisy)."""
    other = row.get("other", 0.0) + row.get("steal", 0.0)
    return other / row["wall"] if row["wall"] > 0 and other >= 0.05 else 0.0


def merge_rows(name, rows):
    out = {"name": name}
    for r in rows:
        for k, v in r.items():
            if k != "name":
                out[k] = out.get(k, 0.0) + v
    return out


# ---------------------------------------------------------------- the scenarios

PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def widen_port_range():
    """connect() picks even local ports first; once the ~14,000 even ports of Linux's default
    range (32768-60999) toward one target are taken, every further connect() walks them all
    (docs/BENCHMARKS.md). A proxy holding 15,000 sessions on one target needs a wider range, as
    an operator would set it (docs in README): set it for the run, restore it after."""
    try:
        old = open(PORT_RANGE).read().split()
        with open(PORT_RANGE, "w") as f:
            f.write("1024 65535")
        log(f"ip_local_port_range {old[0]}-{old[1]} -> 1024-65535 for this run")
        return old
    except OSError as e:
        log(f"cannot widen ip_local_port_range ({e}); creation past ~14,000 sessions will slow down")
        return None


def restore_port_range(old):
    if old:
        try:
            with open(PORT_RANGE, "w") as f:
                f.write(" ".join(old))
        except OSError:
            pass


def run_streams(b, args, res):
    """Issue 5: SSE streams held open as cheaply as idle long-polls. Two fresh proxies side by side,
    each on its own upstream with N sessions (greeting read, tagged, acknowledged): one gets N idle
    long-polls, the other N idle SSE streams, one connection each; RSS growth per held request on
    each (fresh proxies: memory freed by one kind would be reused by the other on a shared one).
    Then broadcasts, in alternating rounds: the upstream sends a line to every session, and the
    client checks that every stream and long-poll got exactly its line."""
    n = args.streams
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if 2 * n + 100 > soft:
        raise BenchError(f"--streams {n} needs {2 * n + 100} descriptors in the proxy; the open-file limit is {soft}")
    out = {"n": n}
    up_l = b.start_upstream()
    px_l = b.start_proxy(up_l.port)
    up_s = b.start_upstream()
    px_s = b.start_proxy(up_s.port)
    sides = {"poll": (px_l, up_l, os.path.join(b.tmp, "ids-longpoll.txt")),
             "sse": (px_s, up_s, os.path.join(b.tmp, "ids-sse.txt"))}
    label = {"poll": "long-polls", "sse": "SSE streams"}
    gauges = {"poll": "uvproxyd_long_polls", "sse": "uvproxyd_event_streams"}
    for kind, (px, up, ids) in sides.items():
        b.watch = {"proxy": px, "upstream": up}
        b.loadclient(f"streams set-up: create {n:,} ({label[kind]} proxy)", px.port, "create", "-n", n, "-c", 64,
                     "-o", ids)
        b.loadclient(f"streams set-up: read greetings, tag ({label[kind]} proxy)", px.port, "drain", "-i", ids,
                     "-c", 64, "-g", GREETING, "-t", 1)
    time.sleep(0.5)
    clients = {}
    for kind, (px, up, ids) in sides.items():
        rss0 = rss_kib(px.pid)
        holder = HoldClient(b, px.port, ids, kind, timeout=300)
        clients[kind] = holder
        b.watch = {"proxy": px, "upstream": up, "loadclient": holder.p}

        def hold_all():
            kv = holder.line()
            end = time.time() + 10
            while gauge(px.port, gauges[kind]) != n:  # the proxy has every request held
                if time.time() > end:
                    raise BenchError(f"{gauges[kind]} is {gauge(px.port, gauges[kind])}, not {n}, 10 s after opening")
                time.sleep(0.02)
            return kv
        kv, row = b.phase(f"hold {n:,} {label[kind]} (open)", action=hold_all)
        time.sleep(0.5)
        rss1 = rss_kib(px.pid)
        out[kind] = {"rss0": rss0, "rss1": rss1, "per_bytes": (rss1 - rss0) * 1024 / n,
                     "open_seconds": float(kv["open_seconds"]), "open_row": row, "rounds": [], "discarded": []}
        log(f"{label[kind]}: RSS {rss0} KiB -> {rss1} KiB with {n} held: {out[kind]['per_bytes']:.0f} bytes each")
    # Broadcast rounds, alternating which side goes first. wait_quiet is capped so that the
    # long-polls (wait=60) are answered by a broadcast long before they would time out.
    attempt = 0
    while (min(len(out[k]["rounds"]) for k in sides) < args.stream_rounds
           and attempt < args.stream_rounds + args.retries):
        order = ["sse", "poll"] if attempt % 2 == 0 else ["poll", "sse"]
        attempt += 1
        for kind in order:
            if len(out[kind]["rounds"]) >= args.stream_rounds:
                continue
            px, up, _ = sides[kind]
            holder = clients[kind]
            b.watch = {"proxy": px, "upstream": up, "loadclient": holder.p}
            b.wait_quiet(f"broadcast to {label[kind]}", limit=10)
            kv, row = b.phase(f"broadcast to {n:,} {label[kind]}", action=lambda: holder.command("broadcast"),
                              record=False)
            log(f"broadcast {attempt} to {n:,} {label[kind]}: {float(kv['seconds']) * 1e3:.1f} ms, proxy "
                f"{row.get('proxy', 0) * 1e3:.0f} ms CPU, verified={kv['verified']}")
            if noise(row) > DISTURBED and kv["verified"] == "yes":
                log(f"broadcast to {label[kind]}: other load {noise(row) * 100:.0f} % of a core: repeated")
                out[kind]["discarded"].append((kv, row))
                continue
            out[kind]["rounds"].append((kv, row))
    for kind in ("sse", "poll"):
        if not out[kind]["rounds"]:
            out[kind]["rounds"], out[kind]["discarded"] = out[kind]["discarded"], []
            out[kind]["all_disturbed"] = True
        rounds = out[kind]["rounds"]
        merged = merge_rows(f"broadcast to {n:,} {label[kind]} ({len(rounds)} rounds)", [r for _, r in rounds])
        b.phases.append(merged)
        out[kind]["row"] = merged
    for kind, holder in clients.items():
        out[kind]["close"], out[kind]["client_cpu"] = holder.close()
    b.watch = {}
    for px, up, _ in sides.values():
        b.stop(px)
        b.stop(up)
    res["streams"] = out


PHASES = ("create", "poll", "echo", "streams", "websocket", "proxy-protocol")


def run(args, phases):
    b = Bench(args)
    res = {}
    started = time.monotonic()
    n = args.sessions
    old_range = widen_port_range()
    res["port_range"] = "1024-65535" if old_range else "unchanged"
    try:
        if "create" in phases:
            # ---- 1. creation, memory per idle session, idle CPU: a fresh proxy
            ids_create = os.path.join(b.tmp, "ids-create.txt")
            for attempt in range(3):
                up = b.start_upstream()
                px = b.start_proxy(up.port)
                b.watch = {"proxy": px, "upstream": up}
                time.sleep(0.3)
                rss0 = rss_kib(px.pid)
                b.wait_quiet("creation")
                res["create"], row = b.loadclient(f"create {n:,} (64 conns)", px.port, "create", "-n", n, "-c", 64,
                                                  "-o", ids_create, record=False)
                if noise(row) <= DISTURBED or attempt == 2:
                    break
                # Disturbed by other load: start over with a fresh proxy (memory is measured on it too).
                log(f"creation: other load {noise(row) * 100:.0f} % of a core: repeated with a fresh proxy")
                b.stop(px)
                b.stop(up)
            if attempt:
                row["name"] += f" (try {attempt + 1})"
            b.phases.append(row)
            res["create_row"] = row
            b.loadclient(f"read greetings {n:,}", px.port, "drain", "-i", ids_create, "-c", 64, "-g", GREETING)
            time.sleep(0.5)
            rss1 = rss_kib(px.pid)
            res["open_after_create"] = open_sessions(px.port)
            res["mem"] = {"rss0": rss0, "rss1": rss1, "per": (rss1 - rss0) / n}
            log(f"RSS {rss0} KiB -> {rss1} KiB with {res['open_after_create']} open sessions")
            log(f"idle: {n} sessions, {args.idle:g} s")
            _, res["idle"] = b.phase(f"idle, {n:,} sessions", sleep=args.idle)
            b.stop(px)
            b.stop(up)

        if "poll" in phases:
            # ---- 2. poll: nginx, a proxy with 1,000 sessions and one with 15,000, in alternating rounds
            # Each polled proxy gets its own upstream: Linux's connect() gets slow once ~14k ports toward one
            # address are taken (see the creation note), which would only slow this set-up down.
            up = b.start_upstream()
            pa = b.start_proxy(up.port)
            b.watch = {"proxy": pa, "upstream": up}
            ids1 = os.path.join(b.tmp, "ids-1k.txt")
            b.loadclient("poll set-up: create 1,000", pa.port, "create", "-n", 1000, "-c", 64, "-o", ids1)
            b.loadclient("poll set-up: read greetings", pa.port, "drain", "-i", ids1, "-c", 64, "-g", GREETING)
            upb = b.start_upstream()
            pb = b.start_proxy(upb.port)
            b.watch = {"proxy": pb, "upstream": upb}
            ids15 = os.path.join(b.tmp, "ids-15k.txt")
            ids14 = os.path.join(b.tmp, "ids-14k.txt")
            b.loadclient("poll set-up: create 1,000", pb.port, "create", "-n", 1000, "-c", 64, "-o", ids15)
            b.loadclient(f"poll set-up: create {n - 1000:,} more", pb.port, "create", "-n", n - 1000, "-c", 64, "-o", ids14)
            with open(ids15, "a") as out:
                out.write(open(ids14).read())
            b.loadclient("poll set-up: read greetings", pb.port, "drain", "-i", ids15, "-c", 64, "-g", GREETING)
            res["open_poll_1k"] = open_sessions(pa.port)
            res["open_poll_15k"] = open_sessions(pb.port)
            ng = b.start_nginx()
            targets = [("nginx", ng, ids1, {"nginx": ng}),
                       ("proxy 1k", pa, ids1, {"proxy": pa, "upstream": up}),
                       ("proxy 15k", pb, ids15, {"proxy": pb, "upstream": upb})]
            for name, p, ids, watch in targets:
                b.watch = watch
                b.wrk(f"warm-up {name}", p.port, ids, args.warmup, record=False)
            # A round whose runs saw other load on the machine (other processes, hypervisor steal) over
            # DISTURBED of one core is repeated, up to args.retries extra rounds.
            rounds, discarded, attempt = [], [], 0
            while len(rounds) < args.rounds and attempt < args.rounds + args.retries:
                this = {}
                b.wait_quiet(f"poll round {attempt + 1}")
                for name, p, ids, watch in targets[attempt % 3:] + targets[:attempt % 3]:
                    b.watch = watch
                    kv, row = b.wrk(f"poll {name} (round {attempt + 1})", p.port, ids, args.duration, record=False)
                    this[name] = (kv, row)
                attempt += 1
                worst = max(noise(row) for _, row in this.values())
                if worst > DISTURBED:
                    log(f"round {attempt}: other load {worst * 100:.0f} % of a core: discarded")
                    discarded.append(this)
                else:
                    rounds.append(this)
            res["poll_rounds"] = {"used": len(rounds), "discarded": len(discarded)}
            if not rounds:
                rounds = discarded
                res["poll_rounds"]["note"] = "every round was disturbed; all are used"
            labels = {"nginx": "poll nginx, 1k ids", "proxy 1k": "poll proxy, 1k sessions", "proxy 15k": f"poll proxy, {n // 1000}k sessions"}
            for name, _, _, _ in targets:
                merged = merge_rows(f"{labels[name]} ({len(rounds)} × {args.duration:g} s)", [r[name][1] for r in rounds])
                b.phases.append(merged)
                res[f"poll:{name}"] = {"runs": [r[name][0] for r in rounds], "row": merged}
            b.watch = {}
            b.stop(ng)
            b.stop(pa)
            b.stop(pb)
            b.stop(up)
            b.stop(upb)

        if "echo" in phases:
            # ---- 3. echo round trips and flood throughput
            up = b.start_upstream()
            px = b.start_proxy(up.port)
            b.watch = {"proxy": px, "upstream": up}
            def quiet(name, *opts):
                # Short phases: repeated (twice at most) when other load on the machine disturbed them.
                for attempt in range(3):
                    b.wait_quiet(name)
                    kv, row = b.loadclient(name, px.port, *opts, record=False)
                    if noise(row) <= DISTURBED or attempt == 2:
                        break
                    log(f"{name}: other load {noise(row) * 100:.0f} % of a core: repeated")
                if attempt:
                    row["name"] += f" (try {attempt + 1})"
                b.phases.append(row)
                return kv, row
            res["echo1"], _ = quiet("echo, 1 client", "echo", "-c", 1, "-m", args.echo1, "-W", 200, "-g", GREETING)
            res["echo50"], _ = quiet("echo, 50 clients", "echo", "-c", 50, "-m", args.echo50, "-W", 20, "-g", GREETING)
            res["flood"], res["flood_row"] = quiet(f"flood, 50 × {args.flood_bytes / 1e6:g} MB", "flood",
                                                   "-s", 50, "-b", args.flood_bytes, "-g", GREETING)
            b.stop(px)
            b.stop(up)
        if "streams" in phases:
            run_streams(b, args, res)
        if "websocket" in phases:
            # ---- 5. WebSocket against SSE + POST (issue 12): its own proxies (ws_cost.py)
            b.wait_quiet("websocket")
            res["ws"] = ws_cost.measure(args.proxy_bin, args.upstream_bin, rounds=args.ws_rounds,
                                        idle=args.ws_idle, say=log)
        if "proxy-protocol" in phases:
            # ---- 6. A create with a PROXY header to the game against one without (issue 10): create_cost.py
            b.wait_quiet("proxy-protocol")
            res["pp"] = create_cost.measure(args.proxy_bin, args.upstream_bin, args.loadclient_bin, version="v1",
                                            rounds=args.pp_rounds, sessions=5000, callgrind_creates=500, say=log)
    except BaseException:
        b.cleanup()
        restore_port_range(old_range)
        log(f"failed; logs kept in {b.tmp}")
        raise
    b.cleanup()
    restore_port_range(old_range)
    res["elapsed"] = time.monotonic() - started
    shutil.rmtree(b.tmp, ignore_errors=True)
    return res, b.phases


# ---------------------------------------------------------------- report

def fmt(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def verdict(ok):
    return "PASS" if ok else "FAIL"


def poll_summary(entry, server):
    runs, row = entry["runs"], entry["row"]
    requests = sum(r["requests"] for r in runs)
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "rps_runs": [r["rps"] for r in runs],
        "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1e3,
        "p99_runs": [r["p99_us"] / 1e3 for r in runs],
        "requests": requests,
        "errors": sum(r["errors"] for r in runs),
        "us_per_req": row.get(server, 0.0) / requests * 1e6 if requests else None,
        "server_pct": row.get(server, 0.0) / row["wall"] * 100,
        "wrk_pct": row.get("wrk", 0.0) / row["wall"] * 100,
    }


def stream_cpu_per_event(st, kind):
    """Proxy CPU per line delivered (µs), over every broadcast round used."""
    rounds = st[kind]["rounds"]
    return sum(row.get("proxy", 0.0) for _, row in rounds) / (len(rounds) * st["n"]) * 1e6


def stream_notes(st, args):
    sn, sse, lp = st["n"], st["sse"], st["poll"]

    def line_len(tag):  # BROADCAST_FMT in upstream.c and loadclient.c, with k = 1
        return len(f"{tag}: broadcast 1, one line of about the length a MUD sends to every player\r\n")

    def ms(kind, key):
        return " / ".join(f"{float(kv[key]) * (1e3 if key == 'seconds' else 1):.1f}" for kv, _ in st[kind]["rounds"])

    def cpu(kind):
        rounds = st[kind]["rounds"]
        return (sum(row.get("upstream", 0.0) for _, row in rounds) / (len(rounds) * sn) * 1e6,
                sum(row.get("loadclient", 0.0) for _, row in rounds) / (len(rounds) * sn) * 1e6)

    def kernel_pct(kind):  # stime counts 10 ms ticks: a rough share
        total = sum(row.get("proxy", 0.0) for _, row in st[kind]["rounds"])
        return sum(row.get("proxy_sys", 0.0) for _, row in st[kind]["rounds"]) / total * 100 if total else 0.0
    discarded = len(sse["discarded"]) + len(lp["discarded"])
    disturbed = [label for label, side in (("streams", sse), ("long-polls", lp)) if side.get("all_disturbed")]
    n_rounds = (f"{len(sse['rounds'])} rounds each" if len(sse["rounds"]) == len(lp["rounds"]) else
                f"{len(sse['rounds'])} rounds to the streams and {len(lp['rounds'])} to the long-polls")
    dist_note = f" (every round of the {' and the '.join(disturbed)} was disturbed: all are used)" if disturbed else ""
    return [
        f"SSE streams and long-polls (issue 5): two fresh proxies side by side, each on its own upstream with "
        f"{sn:,} sessions whose {GREETING}-byte greeting and a tag line were read and acknowledged (`loadclient drain "
        f"-t 1`). `loadclient hold` (one thread, epoll) then opens one connection per session: on one proxy "
        f"`GET /sessions/{{id}}?wait=60`, held at once (counted held when `uvproxyd_long_polls` = {sn:,}); on the "
        f"other `GET /sessions/{{id}}/events`, held once its response head is read (and `uvproxyd_event_streams` = "
        f"{sn:,}). RSS per request = (VmRSS with all held − VmRSS before) / {sn:,}: long-polls {lp['rss0']:,} → "
        f"{lp['rss1']:,} KiB, streams {sse['rss0']:,} → {sse['rss1']:,} KiB. Two proxies, not one after the other "
        f"on the same proxy: memory freed when the first kind closes is reused by the second and hides its cost "
        f"(the allocator keeps it). Opening took {lp['open_seconds']:.2f} s (long-polls) and "
        f"{sse['open_seconds']:.2f} s (streams, at most 512 waiting for their head).",
        f"Broadcast: the client posts `broadcast k` to one session's input; the upstream then writes one line "
        f"of {line_len(0)}–{line_len(sn - 1)} bytes naming the session to every session's connection; timed from that POST until the last stream has its "
        f"event (or the last long-poll its answer). A long-poll client sends its next long-poll as soon as it has "
        f"its answer (a real one must), so the long-poll CPU figures include that request. Every line is checked "
        f"byte for byte (for SSE: the `data:` JSON string and the `id:`, which must be the session's new end "
        f"offset; for long-polls: body, `X-Offset`, `X-Next-Offset`), and for 0.1 s after the last one nothing "
        f"else may arrive. {n_rounds}, alternating which proxy goes first"
        f"{f'; {discarded} disturbed by other load and repeated' if discarded else ''}"
        f"{dist_note}"
        f". All received, ms: "
        f"streams {ms('sse', 'seconds')}; long-polls {ms('poll', 'seconds')}. Median arrival, ms: streams "
        f"{ms('sse', 'p50_ms')}; long-polls {ms('poll', 'p50_ms')}. Proxy CPU per line, µs: {stream_cpu_per_event(st, 'sse'):.1f} (streams, about "
        f"{kernel_pct('sse'):.0f} % of it in the kernel) and {stream_cpu_per_event(st, 'poll'):.1f} (long-polls, "
        f"{kernel_pct('poll'):.0f} %); upstream {cpu('sse')[0]:.1f} "
        f"(streams) and {cpu('poll')[0]:.1f} (long-polls), load client {cpu('sse')[1]:.1f} and {cpu('poll')[1]:.1f} "
        f"(its CPU from /proc, as for the servers).",
    ]


def report(res, phases, args, build_info):
    n = args.sessions
    k = f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"

    rows = []  # figure, value, target, nginx, ratio, result

    def add(figure, value, target, result, nginx=None, ratio=None, digits=1):
        rows.append((figure, fmt(value, digits), target, fmt(nginx, digits) if nginx is not None else "—",
                     f"{ratio:.2f}×" if ratio is not None else "—", result))

    has_poll, has_create, has_echo = "poll:nginx" in res, "create" in res, "echo1" in res
    if has_poll:
        ng = poll_summary(res["poll:nginx"], "nginx")
        p1 = poll_summary(res["poll:proxy 1k"], "proxy")
        p15 = poll_summary(res["poll:proxy 15k"], "proxy")
        # Ratios of req/s are taken within each round (servers measured seconds apart), then the median:
        # this machine's speed drifts by tens of percent over a minute, which would skew a ratio of medians.
        r1 = statistics.median(a / b for a, b in zip(p1["rps_runs"], ng["rps_runs"]))
        r15 = statistics.median(a / b for a, b in zip(p15["rps_runs"], ng["rps_runs"]))
        r15_1 = statistics.median(a / b for a, b in zip(p15["rps_runs"], p1["rps_runs"]))
        add("Poll, 1k sessions: req/s", p1["rps"], "≥ 0.9 × nginx", verdict(r1 >= 0.9), ng["rps"], r1, digits=0)
        add("Poll, 1k sessions: p99 latency (ms)", p1["p99_ms"], "≤ 2 ms", verdict(p1["p99_ms"] <= 2),
            ng["p99_ms"], p1["p99_ms"] / ng["p99_ms"], digits=2)
        add("Poll, 1k sessions: server CPU per request (µs)", p1["us_per_req"], "≤ nginx",
            verdict(p1["us_per_req"] <= ng["us_per_req"]), ng["us_per_req"], p1["us_per_req"] / ng["us_per_req"], digits=2)
        add(f"Poll, {k} sessions: req/s", p15["rps"], f"≥ 0.9 × poll 1k (measured: {r15_1:.2f} ×)",
            verdict(r15_1 >= 0.9), ng["rps"], r15, digits=0)
        add(f"Poll, {k} sessions: p99 latency (ms)", p15["p99_ms"], "≤ 3 ms", verdict(p15["p99_ms"] <= 3),
            ng["p99_ms"], p15["p99_ms"] / ng["p99_ms"], digits=2)
        add(f"Poll, {k} sessions: server CPU per request (µs)", p15["us_per_req"], "(info)", "info",
            ng["us_per_req"], p15["us_per_req"] / ng["us_per_req"], digits=2)
    if has_create:
        mem = res["mem"]["per"]
        create_rate = float(res["create"]["rate"])
        idle = res["idle"]
        idle_pct = idle["proxy"] / idle["wall"] * 100
        add(f"Memory per idle session, {k} sessions (KiB)", mem, "≤ 2 KiB", verdict(mem <= 2), digits=2)
        add("Session creation, 64 creators (sessions/s)", create_rate, "≥ 15,000", verdict(create_rate >= 15000), digits=0)
        marks = [float(x) for x in res["create"].get("per1000", "").split(",") if x]
        cut = 10000
        if len(marks) >= cut // 1000 and n > cut:
            t_cut = marks[cut // 1000 - 1]
            secs = float(res["create"]["seconds"])
            add(f"Session creation: sessions 1–{cut:,} (sessions/s)", cut / t_cut, "(info)", "info", digits=0)
            add(f"Session creation: sessions {cut + 1:,}–{n:,} (sessions/s)", (n - cut) / (secs - t_cut), "(info)", "info", digits=0)
    if has_echo:
        e1, e50, fl = res["echo1"], res["echo50"], res["flood"]
        fl_cpu = res["flood_row"]["proxy"]
        mb = float(fl["bytes"]) / 1e6
        add("Echo, 1 client: p50 round trip (ms)", float(e1["p50_ms"]), "≤ 0.12 ms", verdict(float(e1["p50_ms"]) <= 0.12), digits=3)
        add("Echo, 1 client: p99 round trip (ms)", float(e1["p99_ms"]), "(info)", "info", digits=3)
        add("Echo, 50 clients: p99 round trip (ms)", float(e50["p99_ms"]), "≤ 3 ms", verdict(float(e50["p99_ms"]) <= 3), digits=3)
        add("Echo, 50 clients: p50 round trip (ms)", float(e50["p50_ms"]), "(info)", "info", digits=3)
        add(f"Flood, 50 × {args.flood_bytes / 1e6:g} MB: throughput (MB/s)", float(fl["mbps"]),
            "every byte arrives, verified", verdict(fl["verified"] == "yes"), digits=0)
        add("Flood: proxy CPU (s)", fl_cpu, "(info)", "info", digits=3)
        add("Flood: proxy CPU per MB (ms)", fl_cpu / mb * 1e3, "(info)", "info", digits=2)
    if has_create:
        add(f"Idle, {n:,} sessions, {args.idle:g} s: proxy CPU (%)", idle_pct, "< 1 %", verdict(idle_pct < 1), digits=2)

    st = res.get("streams")
    if st:
        sn, sse, lp = st["n"], st["sse"], st["poll"]
        mem_ratio = sse["per_bytes"] / lp["per_bytes"]
        sse_cpu, lp_cpu = stream_cpu_per_event(st, "sse"), stream_cpu_per_event(st, "poll")
        sse_ms = statistics.median(float(kv["seconds"]) * 1e3 for kv, _ in sse["rounds"])
        lp_ms = statistics.median(float(kv["seconds"]) * 1e3 for kv, _ in lp["rounds"])
        rounds = [kv for kv, _ in sse["rounds"] + lp["rounds"]]
        ok = all(kv["verified"] == "yes" for kv in rounds)
        add(f"SSE, {sn:,} idle streams: RSS per open stream (bytes)", sse["per_bytes"],
            f"≤ 1.1 × a held long-poll (measured: {mem_ratio:.2f} ×)", verdict(mem_ratio <= 1.1), digits=0)
        add(f"Long-poll, {sn:,} held: RSS per held long-poll (bytes)", lp["per_bytes"], "(info)", "info", digits=0)
        add(f"SSE, broadcast to {sn:,} streams: until all received (ms)", sse_ms,
            f"(info; long-polls {lp_ms:.1f} ms, {sse_ms / lp_ms:.2f} ×)", "info", digits=1)
        add("SSE: proxy CPU per event delivered (µs)", sse_cpu,
            f"(info; long-poll {lp_cpu:.2f} µs, {sse_cpu / lp_cpu:.2f} ×)", "info", digits=2)
        add(f"SSE and long-poll broadcasts: each got exactly its line", f"{len(rounds)} × {sn:,}",
            "every line arrives once, verified", verdict(ok))

    ws = res.get("ws")
    if ws:
        cpu_ratio = ws["cpu_ns"]["ws"] / ws["cpu_ns"]["sse"]
        add("WebSocket: proxy CPU per echo round trip (µs)", ws["cpu_ns"]["ws"] / 1e3,
            f"≤ 0.5 × SSE + POST ({ws['cpu_ns']['sse'] / 1e3:.1f} µs; measured: {cpu_ratio:.2f} ×)",
            verdict(cpu_ratio <= 0.5), digits=1)
        if "instructions" in ws:
            i = ws["instructions"]
            add("WebSocket: proxy user-space instructions per round trip (callgrind)", i["ws"],
                f"(info; SSE + POST {i['sse']:,.0f}: {i['ws'] / i['sse']:.2f} ×)", "info", digits=0)
        add(f"WebSocket, {ws['idle']:,} idle: RSS per connection (bytes)", ws["rss"]["ws"],
            f"≤ an idle SSE stream ({ws['rss']['sse']:,.0f} B)", verdict(ws["rss"]["ws"] <= ws["rss"]["sse"]), digits=0)

    pp = res.get("pp")
    if pp:
        med = {k: statistics.median(v) for k, v in pp["cpu"].items()}
        if "instructions" in pp:
            i = pp["instructions"]
            extra = 100 * (i["header"] / i["plain"] - 1)
            add("PROXY header out: proxy user-space instructions per create (callgrind)", i["header"],
                f"≤ +2 % over a create without ({i['plain']:,.0f}; measured: {extra:+.1f} %)", verdict(extra <= 2), digits=0)
        extra = 100 * (med["header"] / med["plain"] - 1)
        add("PROXY header out: proxy CPU per create, kernel included (µs)", med["header"],
            f"≤ +2 % over a create without ({med['plain']:.1f} µs; measured: {extra:+.1f} %; see the note)",
            verdict(extra <= 2), digits=1)

    out = []
    out.append("# uvproxyd benchmark results")
    out.append("")
    out.append(f"Produced by `scripts/bench` on {build_info['date']}: {build_info['host']}; "
               f"uvproxyd {build_info['commit']} (release build, one loop, `{' '.join(PROXY_FLAGS)}`); "
               f"{build_info['wrk']}; {build_info['nginx']}. Whole run {res['elapsed']:.0f} s.")
    out.append("")
    out.append("| Figure | Value | Target | nginx | Ratio to nginx | Result |")
    out.append("|---|---:|---|---:|---:|---|")
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    out.append("")
    out.append("CPU seconds per phase: utime + stime of the proxy, the upstream and nginx (master + worker) "
               "from /proc, of wrk and the load client from wait4. *Busiest* is the bench process with the "
               "highest CPU / wall time (100 % = one core saturated). From /proc/stat: *other* is the machine's "
               "busy time minus the bench processes (anything else running: a sign of interference), *steal* "
               "is time the hypervisor took from this VM; ⚠ marks a phase where other + steal exceeded "
               f"{DISTURBED * 100:.0f} % of a core. The machine has "
               f"{os.cpu_count()} CPUs, so a phase has {os.cpu_count()} × wall CPU seconds to share.")
    out.append("")
    out.append("| Phase | Wall (s) | Proxy | wrk | Upstream | Load client | nginx | Busiest | Other | Steal |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    label = {"proxy": "proxy", "wrk": "wrk", "upstream": "upstream", "loadclient": "load client", "nginx": "nginx"}
    for ph in phases:
        cells = [ph["name"], f"{ph['wall']:.2f}"]
        for key in ("proxy", "wrk", "upstream", "loadclient", "nginx"):
            cells.append(f"{ph[key]:.2f}" if key in ph else "—")
        busiest = max(((key, ph[key]) for key in label if key in ph), key=lambda kv: kv[1], default=None)
        if busiest and ph["wall"] > 0 and busiest[1] / ph["wall"] >= 0.01:
            cells.append(f"{label[busiest[0]]} {busiest[1] / ph['wall'] * 100:.0f} %")
        else:
            cells.append("none above 1 %")
        cells.append(f"{ph.get('other', 0.0):.2f}" + (" ⚠" if noise(ph) > DISTURBED else ""))
        cells.append(f"{ph.get('steal', 0.0):.2f}")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")

    def runs(values, digits=0):
        return " / ".join(f"{v:,.{digits}f}" for v in values)

    notes = []
    if has_poll:
        notes += [
            f"Poll: `wrk -t1 -c64 -d{args.duration:g}s --latency -s scripts/bench.d/poll.lua`: `GET /mud?id=…`, a "
            f"random session per request, after each session's {GREETING}-byte greeting was read (the polls return "
            f"empty bodies). nginx (`return 200 \"\"`, one worker, access log off) gets the same script and ignores "
            f"the path. The three servers run side by side (two proxies, one with 1,000 sessions and one with "
            f"{n:,}, each on its own upstream) and are measured in alternating rounds, after a {args.warmup:g} s warm-up "
            f"each (the order rotates every round); req/s and p99 are the medians of the rounds; a req/s ratio is "
            f"the median of the ratios within each round; CPU per request is the server's CPU over all rounds / "
            f"all requests.",
            f"Poll rounds used: {res['poll_rounds']['used']} of {args.rounds} wanted; discarded because other load on the machine "
            f"exceeded {DISTURBED * 100:.0f} % of a core during one of their runs: {res['poll_rounds']['discarded']}"
            f"{' (' + res['poll_rounds']['note'] + ')' if 'note' in res['poll_rounds'] else ''}. "
            f"Rounds, req/s: nginx {runs(ng['rps_runs'])}; proxy 1k {runs(p1['rps_runs'])}; proxy {k} "
            f"{runs(p15['rps_runs'])}. p99 ms: nginx {runs(ng['p99_runs'], 2)}; proxy 1k {runs(p1['p99_runs'], 2)}; "
            f"proxy {k} {runs(p15['p99_runs'], 2)}.",
            f"Poll CPU load (CPU / wall): nginx {ng['server_pct']:.0f} % with wrk {ng['wrk_pct']:.0f} %; "
            f"proxy 1k {p1['server_pct']:.0f} % with wrk {p1['wrk_pct']:.0f} %; proxy {k} {p15['server_pct']:.0f} % "
            f"with wrk {p15['wrk_pct']:.0f} %. wrk requests / errors: nginx {ng['requests']:,.0f} / {ng['errors']:.0f}, "
            f"proxy 1k {p1['requests']:,.0f} / {p1['errors']:.0f}, proxy {k} {p15['requests']:,.0f} / {p15['errors']:.0f}.",
            f"Open sessions (from /metrics): {res['open_after_create']} after the creation phase; "
            f"{res['open_poll_1k']} and {res['open_poll_15k']} in the two polled proxies."
            if has_create else f"Open sessions (from /metrics): {res['open_poll_1k']} and {res['open_poll_15k']} in the two "
            f"polled proxies.",
        ]
    if has_create:
        notes += [
            f"Memory: VmRSS {res['mem']['rss0']:,} KiB on a fresh proxy, {res['mem']['rss1']:,} KiB once it held "
            f"{n:,} sessions whose {GREETING}-byte greeting was read and acknowledged; (after − before) / {n:,}.",
            f"Creation: {int(res['create']['created']):,} × `GET /mud` over 64 keep-alive connections, one request "
            f"in flight on each, {float(res['create']['seconds']):.3f} s, {res['create']['errors']} failed "
            f"(`--max-sessions {MAX_SESSIONS}`, `ip_local_port_range` {res['port_range']} for the run). The same fresh proxy then gives the memory and idle figures. "
            f"Proxy CPU in this phase {res['create_row']['proxy']:.2f} s, of which {res['create_row'].get('proxy_sys', 0):.2f} s "
            f"in the kernel. Sessions/s per successive 1,000: "
            + " / ".join(f"{1000 / (t - p):,.0f}" for p, t in zip([0.0] + marks[:-1], marks)) + ".",
        ]
    if has_echo:
        notes += [
            f"Echo: each client has its own session and two keep-alive connections: a long-poll "
            f"`GET /sessions/{{id}}?since=N&wait=5` and `POST /sessions/{{id}}/input?cmd=…`; a round trip runs from "
            f"sending the input to receiving the echoed line on the long-poll. 1 client: {e1['roundtrips']} timed "
            f"round trips (mean {float(e1['mean_ms']):.3f} ms, p90 {float(e1['p90_ms']):.3f} ms, max "
            f"{float(e1['max_ms']):.2f} ms); 50 clients: {e50['roundtrips']} (mean {float(e50['mean_ms']):.3f} ms, "
            f"max {float(e50['max_ms']):.2f} ms, {float(e50['rate']):,.0f} round trips/s).",
            f"Flood: 50 sessions each send `flood {args.flood_bytes}` and drain with `GET /sessions/{{id}}?since=N&wait=5`: "
            f"{int(fl['bytes']):,} of {int(fl['expected']):,} bytes arrived, {fl['mismatches']} bytes differ from "
            f"the pattern, {fl['polls']} long-polls, {float(fl['seconds']):.3f} s.",
        ]
    if st:
        notes += stream_notes(st, args)
    if ws:
        runs_ws = " / ".join(f"{v / 1e3:.1f}" for v in ws["cpu_runs"]["ws"])
        runs_sse = " / ".join(f"{v / 1e3:.1f}" for v in ws["cpu_runs"]["sse"])
        notes += [
            f"WebSocket (scripts/bench.d/ws_cost.py): one proxy and the C upstream (which echoes each line); "
            f"{ws['sessions']} sessions at once, each making {ws['trips']} echo round trips one after the other, per "
            f"transport, alternating which goes first over {ws['rounds']} rounds: a masked text frame out on a "
            f"`terminal.mudstandards.org` WebSocket and the echo back as a text frame, against `POST …/input` on a "
            f"keep-alive connection and the echo back as an SSE event. Proxy on-CPU time (schedstat) per round trip, "
            f"medians; rounds (µs): WebSocket {runs_ws}, SSE + POST {runs_sse}. The client is Python (its cost not "
            f"counted). Most of the proxy's CPU here is the kernel's: a WebSocket round trip is 2 reads and 2 writes, "
            f"SSE + POST 2 reads and 3 writes (strace), and each write on loopback runs the receiver's TCP path. "
            + (f"Callgrind, the proxy's own instructions per round trip ({ws['callgrind'][0]} sessions × "
               f"{ws['callgrind'][1]}, after one connection of each kind): WebSocket {ws['instructions']['ws']:,.0f}, "
               f"SSE + POST {ws['instructions']['sse']:,.0f}. " if "instructions" in ws else "")
            + f"Memory: two fresh proxies, {ws['idle']:,} sessions each, one idle WebSocket or SSE stream per "
            f"session (after one connection of the kind, closed: first-use costs are once per process); RSS growth "
            f"per connection.",
        ]
    if pp:
        runs = {k: " / ".join(f"{v:.1f}" for v in pp["cpu"][k]) for k in ("header", "plain")}
        split = {k: f"{u:.1f} + {sy:.1f}" for k, (u, sy) in pp["split"].items()}
        notes += [
            f"PROXY header out (scripts/bench.d/create_cost.py): one proxy binary started fresh per round with and "
            f"without `--proxy-protocol {pp['version']}`, alternating which goes first; each round 5,000 creates over 64 "
            f"keep-alive connections; the target is the C upstream, with the header in `--accept-proxy` mode (it reads "
            f"the header before it greets and never echoes it, as a game behind HAProxy's `accept-proxy`). Proxy "
            f"on-CPU time per create, medians; rounds (µs): with {runs['header']}, without {runs['plain']}; user + "
            f"system µs per create, summed over rounds: with {split['header']}, without {split['plain']}. The header is "
            f"one more `send` per create, made inside the create (the connection to a game on the same host is already "
            f"up then). On loopback that send also runs the game's side: its TCP receive and its wake-up, in our "
            f"process's time (perf: about 60 % of the send's kernel time is that receive path); over a network it "
            f"falls on the game's host. The user-space instructions are the proxy's own work (callgrind, 600 creates "
            f"minus 100, one connection).",
        ]
    out.append("Notes:")
    out.append("")
    for note in notes:
        out.append(f"- {note}")
    out.append("")
    return "\n".join(out), rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--upstream-bin", required=True)
    ap.add_argument("--loadclient-bin", required=True)
    ap.add_argument("--wrk-bin", default=shutil.which("wrk") or "/usr/bin/wrk")
    ap.add_argument("--nginx-bin", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--output", required=True, help="Markdown file to (over)write")
    ap.add_argument("--duration", type=float, default=3, help="seconds of each measured wrk run")
    ap.add_argument("--quiet-wait", type=float, default=60,
                    help="seconds the whole run may wait, before measures, for other load on the machine to pass")
    ap.add_argument("--retries", type=int, default=4, help="extra poll rounds allowed to replace disturbed ones")
    ap.add_argument("--rounds", type=int, default=6, help="alternating poll rounds (nginx, proxy 1k, proxy 15k)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of each wrk warm-up run")
    ap.add_argument("--idle", type=float, default=10, help="seconds of the idle measure")
    ap.add_argument("--sessions", type=int, default=15000)
    ap.add_argument("--echo1", type=int, default=5000, help="timed round trips, one client")
    ap.add_argument("--echo50", type=int, default=1000, help="timed round trips per client, 50 clients")
    ap.add_argument("--flood-bytes", type=int, default=2000000)
    ap.add_argument("--streams", type=int, default=5000,
                    help="SSE streams and long-polls held open (each on its own session) for the streams phase")
    ap.add_argument("--stream-rounds", type=int, default=5, help="broadcast rounds to the streams and the long-polls")
    ap.add_argument("--ws-rounds", type=int, default=6, help="alternating WebSocket / SSE + POST echo rounds")
    ap.add_argument("--ws-idle", type=int, default=2000, help="idle WebSockets and SSE streams held for the memory figure")
    ap.add_argument("--pp-rounds", type=int, default=6, help="alternating create rounds with and without a PROXY header")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"comma-separated phases to run, of {', '.join(PHASES)} (default: all). A partial run "
                    "writes its table next to the load client binary, not to --output")
    args = ap.parse_args()
    phases = [x.strip() for x in args.only.split(",") if x.strip()]
    if not phases or any(x not in PHASES for x in phases):
        ap.error(f"--only takes a comma-separated list of {', '.join(PHASES)}")
    if set(phases) != set(PHASES):
        args.output = os.path.join(os.path.dirname(os.path.abspath(args.loadclient_bin)),
                                   f"bench-results-{'-'.join(p for p in PHASES if p in phases)}.md")

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_sigterm)

    def cmd_out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else ""
    except OSError:
        pass
    commit = cmd_out(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    if cmd_out(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " + uncommitted changes"
    nginx_v = subprocess.run([args.nginx_bin, "-v"], capture_output=True, text=True).stderr.strip()
    build_info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}",
        "commit": commit,
        "wrk": (cmd_out([args.wrk_bin, "--version"]).splitlines() or ["wrk"])[0].split(" Copyright")[0].strip(),
        "nginx": nginx_v.replace("nginx version: ", ""),
    }
    try:
        res, phase_rows = run(args, phases)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    text, rows = report(res, phase_rows, args, build_info)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    print(text)
    print(f"(written to {args.output}; whole bench {res['elapsed']:.0f} s)")
    if "flood" in res and res["flood"].get("verified") != "yes":
        print("bench: flood data did not verify", file=sys.stderr)
        return 1
    if "streams" in res and not all(kv["verified"] == "yes" for k in ("sse", "poll")
                                    for kv, _ in res["streams"][k]["rounds"]):
        print("bench: a broadcast line did not arrive exactly once", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
