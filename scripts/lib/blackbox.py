"""Shared helpers of the black-box test scripts (Python 3 standard library only).

    import sys, os; sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
    from blackbox import Checks, Daemon, Target, binary, http, spawn, wait_for_port

- `Checks`: `check(ok, what)` prints `ok    …` / `FAIL  …`; `finish()` prints the closing
  `N passed, N failed` line, stops everything `spawn` started and exits (1 if anything failed).
  `skip_or_fail(why)`: a suite that cannot run skips, except under CI (`CI` set), where a
  required suite that skips is a failure.
- `spawn(args, ...)`: a child process that dies with this script (PR_SET_PDEATHSIG) and is
  stopped by `stop_all()` (called by `Checks.finish`, on exit and on SIGINT/SIGTERM).
- `Daemon(args)`: uvproxyd on `--listen 127.0.0.1:0`; waits for its ready line, keeps its log
  (`daemon.log`, `wait_for_log(pattern)`, `expect_log(pattern)`), `request(...)`, `metric(name)`,
  `cpu_seconds()`, `open_fds()`; `nofile=N` starts it under an open-file limit of N.
- `Target(greeting)`: a target server that holds the connections it accepts (`next_connection()`).
- `wait_until(predicate)`, `cpu_seconds(pid)`; `TestError` for a step that cannot go on.
- `http(port, method, path, ...)`: one request on a new connection → `Response`.
- `wait_for_port(port)`: until something accepts on 127.0.0.1:port; `free_port()`: one nothing uses.
- `haproxy_server_status(stats_socket, backend, server)`: UP/DOWN/… from HAProxy's stats socket.
- `rss_bytes(pid)`, `fd_count(pid)`: a process's resident memory and open descriptors (/proc).
- `raise_file_limit()`: this process's soft open-file limit up to the hard one.
- `Daemon.upgrade()`: SIGUSR2 (SPEC §9), waits until the new process serves and the old one has
  exited, and follows the new one (`proc` becomes an `Adopted`: the script is made the
  subreaper of its descendants, so the new process becomes its child once the old one exits).
"""

import atexit
import ctypes
import http.client as httpclient
import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_children = []


def binary():
    """The uvproxyd to test: $UVPROXYD, else the release build (what ships)."""
    return os.environ.get("UVPROXYD", os.path.join(ROOT, ".build/release/uvproxyd"))


def _pdeathsig():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args, nofile=None, **kw):
    """Starts a child that is killed if this script dies, and stopped by `stop_all`.
    `nofile`: its open-file limit, soft and hard (uvproxyd raises its soft limit to the hard one)."""
    def preexec():
        _pdeathsig()
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    kw.setdefault("preexec_fn", preexec)
    p = subprocess.Popen(args, **kw)
    _children.append(p)
    return p


def stop_all(kill=False):
    """Stops every child `spawn` started: SIGTERM (SIGKILL with `kill`), then waits."""
    for p in _children:
        if p.poll() is None:
            p.kill() if kill else p.terminate()
    for p in _children:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    _children.clear()


atexit.register(stop_all)


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


def become_subreaper():
    """This process reaps its orphaned descendants (PR_SET_CHILD_SUBREAPER): a uvproxyd started
    by an upgrade becomes its child once the old one exits, so it can be waited for."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)


class Adopted:
    """A process this script did not start but will reap (`become_subreaper`), with the part of
    Popen's interface the helpers use: `pid`, `poll`, `wait`, `send_signal`, `terminate`, `kill`."""

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not ours yet (its parent still runs) or gone
                if not os.path.exists(f"/proc/{self.pid}"):
                    self.returncode = -1
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class TestError(Exception):
    """A step of a test could not go on (a missing log line, a server that never connected)."""


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(("ok    " if ok else "FAIL  ") + what + (f" ({detail})" if detail and not ok else ""), flush=True)
        return bool(ok)

    def skip_or_fail(self, why):
        """A suite that cannot run here: a failure under CI, else one skip. Ends the script."""
        if os.environ.get("CI"):
            self.check(False, f"required suite cannot run under CI: {why}")
        else:
            print(f"SKIP: {why}", flush=True)
            self.skipped += 1
        self.finish()

    def finish(self):
        stop_all()
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        print(line, flush=True)
        sys.exit(1 if self.failed else 0)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def __repr__(self):
        return f"<{self.status} {self.body[:80]!r}>"


def http(port, method, path, body=None, headers=None, timeout=10, host="127.0.0.1"):
    """One request on a new connection."""
    c = httpclient.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        c.close()


def free_port(host="127.0.0.1", family=socket.AF_INET):
    """A TCP port nothing listens on right now (for a server the test starts)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def haproxy_server_status(stats_socket, backend, server):
    """A server's status in HAProxy's `show stat` (UP, DOWN, …) over its stats socket, or None."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(stats_socket)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    for row in data.decode().splitlines():
        fields = row.split(",")
        if len(fields) > 17 and fields[0] == backend and fields[1] == server:
            return fields[17]
    return None


def wait_for_port(port, host="127.0.0.1", timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate, timeout=10, interval=0.02):
    """Polls `predicate` until it is true (returns its value) or `timeout` passes (returns it once more)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class Target:
    """A target server on a free loopback port: each connection it accepts gets `greeting` and
    waits in a queue for the test (`next_connection`)."""

    def __init__(self, greeting=b"", timeout=20):
        self.greeting = greeting
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.conns = queue.Queue()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(self.timeout)
            if self.greeting:
                conn.sendall(self.greeting)
            self.conns.put(conn)

    def next_connection(self):
        try:
            return self.conns.get(timeout=self.timeout)
        except queue.Empty:
            raise TestError("the proxy never connected to the target on port %d" % self.port)


def rss_bytes(pid):
    """Resident set size of a process (VmRSS), in bytes; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fd_count(pid):
    """Open descriptors of a process (entries of /proc/PID/fd); None once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def raise_file_limit():
    """Raises this process's soft open-file limit to the hard one (children inherit it); returns it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class Daemon:
    """uvproxyd listening on a free loopback port; its log lines are kept in `log`.
    `listen=None` leaves `--listen` out (a config file gives it); `stdout` as for Popen."""

    def __init__(self, args, bin_path=None, env=None, ready_timeout=60, nofile=None,
                 listen="127.0.0.1:0", stdout=subprocess.DEVNULL, log_path=None):
        """With `log_path`, the daemon's stderr goes to that file (read back from it) instead of
        a pipe: a busy test process can then never block the daemon on a full pipe."""
        self.log = []
        self._cond = threading.Condition()
        cmd = [bin_path or binary()] + (["--listen", listen] if listen else []) + list(args)
        if log_path:
            with open(log_path, "w") as sink:
                self.proc = spawn(cmd, nofile=nofile, stdin=subprocess.DEVNULL, stdout=stdout, stderr=sink,
                                  env=env or os.environ.copy())
            threading.Thread(target=self._tail, args=(log_path,), daemon=True).start()
        else:
            self.proc = spawn(cmd, nofile=nofile, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                              text=True, env=env or os.environ.copy())
            threading.Thread(target=self._drain, daemon=True).start()
        m = self.wait_for_log(r"uvproxyd ready: listening on [0-9.\[\]:a-f]*:(\d+)", timeout=ready_timeout)
        if not m:
            raise RuntimeError("uvproxyd did not start: " + "".join(self.log[-10:]))
        self.port = int(m.group(1))

    def _drain(self):
        for line in self.proc.stderr:
            with self._cond:
                self.log.append(line)
                self._cond.notify_all()

    def _tail(self, path):
        with open(path, errors="replace") as f:
            pending = ""
            exited = False
            while True:
                chunk = f.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        with self._cond:
                            self.log.append(pending)
                            self._cond.notify_all()
                        pending = ""
                    continue
                if exited:
                    return  # one more pass after the exit read everything
                exited = self.proc.poll() is not None
                time.sleep(0.05)

    def mark(self):
        with self._cond:
            return len(self.log)

    def wait_for_log(self, pattern, start=0, timeout=10):
        """The first log line from `start` on that matches `pattern` (a regex match), or None."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.log):
                    m = rx.search(self.log[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.time()
                if left <= 0 or self.proc.poll() is not None and i >= len(self.log):
                    return None
                self._cond.wait(min(left, 0.2))

    def expect_log(self, pattern, start=0, timeout=20):
        """Like `wait_for_log`, but returns the whole line and raises `TestError` (with the
        last lines of the log) if none comes."""
        m = self.wait_for_log(pattern, start, timeout)
        if not m:
            raise TestError("no log line /%s/ within %.0f s (status %s); last lines: %s" % (
                pattern, timeout, self.proc.poll(), " | ".join(l.strip() for l in self.log[-6:])))
        return m.string.rstrip("\n")

    def request(self, method, path, body=None, headers=None, timeout=10):
        return http(self.port, method, path, body=body, headers=headers, timeout=timeout)

    def create(self, target=None):
        r = self.request("POST", "/sessions" + (f"?target={target}" if target else ""))
        m = re.search(rb'"id": "([^"]+)"', r.body)
        return m.group(1).decode() if r.status == 201 and m else None

    def metric(self, name, labels=""):
        """A sample's value from /metrics (`labels` as written: `{state="open"}`), or None."""
        text = self.request("GET", "/metrics").body.decode()
        m = re.search(r"^" + re.escape(name + labels) + r" ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else None

    def cpu_seconds(self):
        """User + system CPU time the daemon has used so far (/proc/PID/stat)."""
        return cpu_seconds(self.proc.pid)

    def open_fds(self):
        """How many descriptors the daemon has open (/proc/PID/fd)."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def upgrade(self, timeout=20):
        """SIGUSR2: waits for the new process to serve and the old one to exit, then follows the
        new one. Returns (seconds until the new one served, seconds until the old one exited,
        the old one's exit status). Raises `TestError` if the upgrade does not happen."""
        become_subreaper()
        start = self.mark()
        old = self.proc
        t0 = time.time()
        old.send_signal(signal.SIGUSR2)
        line = self.expect_log(r"upgrade: sessions handed over to the new process", start, timeout)
        self.expect_log(r"upgrade: took over from the old process; serving", start, timeout)
        served = time.time() - t0
        try:
            rc = old.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TestError("the old process did not exit after the upgrade")
        exited = time.time() - t0
        self.proc = Adopted(int(re.search(r"pid\W+(\d+)", line).group(1)))
        _children.append(self.proc)
        return served, exited, rc

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
