#!/usr/bin/env python3
"""A controllable, line-based TCP upstream server for the uvproxyd black-box tests.

Run it as a separate process (so that a test can SIGKILL it and start it again
on the same port):

    python3 upstream.py --port PORT --dir RECORD_DIR [--gen G] [--host 127.0.0.1]

It prints one line ``ready <port>`` on stdout once it listens.

Every accepted connection gets a number (1, 2, ... per process) and a greeting
line ``hello g<gen> c<conn>\\n``. It then reads lines (``\\n``-terminated, a
trailing ``\\r`` is stripped) and understands these commands:

    flood <n>       send n bytes of deterministic filler, as lines
                    ``c<conn> f<k> o<offset> <letters>\\n`` (offset inside flood k)
    count <token>   reply ``ran <token> <n>\\n``, n = times token was seen on this
                    connection
    trickle <ms>    from now on send ``tick c<conn> n<k>\\n`` every <ms> ms
                    (0 stops it)
    echo <text>     reply ``echo <text>\\n``
    anything else   reply ``ok <line>\\n``

Everything the connection sends goes through one writer thread per connection,
in chunks of at most 4096 bytes, and is recorded in RECORD_DIR so that a test
knows exactly what was sent even when this process is killed with SIGKILL:

    conn-<n>.data   every chunk, appended (unbuffered write) *before* it is sent
    conn-<n>.sent   one line ``<total>`` appended *after* sendall() returned
    conn-<n>.recv   one line per received line, appended as soon as it is read

So after a SIGKILL, the bytes the peer got are a prefix of conn-<n>.data that is
at least as long as the last number in conn-<n>.sent (the kernel still delivers
what was handed to it before the FIN). A reader thread drains the socket all the
time, so the receive queue is empty when the process dies (no RST), as long as
the peer sends nothing in the last moment.

The module also offers helpers to read these records (``read_record``).
"""

import argparse
import os
import queue
import random
import socket
import string
import sys
import threading
import time

CHUNK = 4096

_ALPHABET = string.ascii_letters + string.digits
_rng = random.Random(1234567)
PATTERN = "".join(_rng.choice(_ALPHABET) for _ in range(8192))


def flood_bytes(conn, k, n):
    """The deterministic filler of flood number k on connection conn, n bytes."""
    out = []
    total = 0
    off = 0
    while total < n:
        head = "c%d f%d o%08d " % (conn, k, off)
        width = 40 + (off * 7 + conn * 13 + k) % 80
        start = (off * 31 + conn * 101 + k * 17) % (len(PATTERN) - 200)
        line = head + PATTERN[start:start + width] + "\n"
        b = line.encode("ascii")
        if total + len(b) > n:
            b = b[: n - total]
        out.append(b)
        total += len(b)
        off += len(b)
    return b"".join(out)


class Conn:
    def __init__(self, server, sock, num):
        self.server = server
        self.sock = sock
        self.num = num
        self.q = queue.Queue()
        self.counts = {}
        self.floods = 0
        self.trickle_ms = 0
        self.trickle_next = 0.0
        self.ticks = 0
        self.alive = True
        d = server.dir
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.fd_data = os.open(os.path.join(d, "conn-%d.data" % num), flags, 0o644)
        self.fd_sent = os.open(os.path.join(d, "conn-%d.sent" % num), flags, 0o644)
        self.fd_recv = os.open(os.path.join(d, "conn-%d.recv" % num), flags, 0o644)
        self.lock = threading.Lock()

    def send(self, data):
        for i in range(0, len(data), CHUNK):
            self.q.put(data[i:i + CHUNK])

    def writer(self):
        total = 0
        try:
            while True:
                chunk = self.q.get()
                if chunk is None:
                    break
                os.write(self.fd_data, chunk)  # intent, before sending
                self.sock.sendall(chunk)
                total += len(chunk)
                os.write(self.fd_sent, b"%d\n" % total)  # done
        except OSError:
            pass
        finally:
            self.alive = False

    def reader(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    os.write(self.fd_recv, line + b"\n")
                    self.handle(line.decode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            self.alive = False
            self.q.put(None)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle(self, line):
        parts = line.split(" ", 1)
        cmd = parts[0]
        arg = parts[1] if len(parts) > 1 else ""
        if cmd == "flood":
            try:
                n = int(arg)
            except ValueError:
                self.send(b"error bad flood\n")
                return
            self.floods += 1
            self.send(flood_bytes(self.num, self.floods, n))
        elif cmd == "count":
            n = self.counts.get(arg, 0) + 1
            self.counts[arg] = n
            self.send(("ran %s %d\n" % (arg, n)).encode())
        elif cmd == "trickle":
            try:
                ms = int(arg)
            except ValueError:
                ms = 0
            with self.lock:
                self.trickle_ms = ms
                self.trickle_next = time.monotonic() + ms / 1000.0
            self.send(("ok trickle %d\n" % ms).encode())
        elif cmd == "echo":
            self.send(("echo %s\n" % arg).encode())
        else:
            self.send(("ok %s\n" % line).encode())

    def tick(self, now):
        with self.lock:
            if self.trickle_ms <= 0 or now < self.trickle_next:
                return
            self.trickle_next = now + self.trickle_ms / 1000.0
            self.ticks += 1
            k = self.ticks
        self.send(("tick c%d n%d\n" % (self.num, k)).encode())


class Server:
    def __init__(self, host, port, directory, gen):
        self.dir = directory
        self.gen = gen
        self.conns = []
        self.lock = threading.Lock()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(512)
        self.port = self.lsock.getsockname()[1]

    def serve(self):
        threading.Thread(target=self.ticker, daemon=True).start()
        n = 0
        while True:
            sock, _ = self.lsock.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            n += 1
            c = Conn(self, sock, n)
            with self.lock:
                self.conns.append(c)
            c.send(("hello g%s c%d\n" % (self.gen, n)).encode())
            threading.Thread(target=c.writer, daemon=True).start()
            threading.Thread(target=c.reader, daemon=True).start()

    def ticker(self):
        while True:
            time.sleep(0.02)
            now = time.monotonic()
            with self.lock:
                conns = [c for c in self.conns if c.alive]
            for c in conns:
                c.tick(now)


def read_record(directory, conn):
    """(data, done_total, received_lines) recorded for connection conn."""
    def rd(name):
        try:
            with open(os.path.join(directory, "conn-%d.%s" % (conn, name)), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""
    data = rd("data")
    done = 0
    for line in rd("sent").split(b"\n"):
        if line.strip().isdigit():
            done = int(line)
    recv = [l.decode("utf-8", "replace") for l in rd("recv").split(b"\n")[:-1]]
    return data, done, recv


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--gen", default="1")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    srv = Server(a.host, a.port, a.dir, a.gen)
    sys.stdout.write("ready %d\n" % srv.port)
    sys.stdout.flush()
    try:
        srv.serve()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
