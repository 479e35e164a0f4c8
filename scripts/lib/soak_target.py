#!/usr/bin/env python3
"""The scripted target of scripts/soak: one thread, non-blocking sockets, thousands of
connections, every byte it sends verifiable by the client that reads it.

    python3 soak_target.py --port PORT --gen GEN [--record FILE]

Prints ``ready <port>`` once it listens. Connection number n (1, 2, ... per process) is tagged
``<gen>.<n>``. Everything it sends is lines of the form

    <tag> <lineno> <kind> <text> <crc32 of what precedes, 8 hex digits>\\n

with lineno 0, 1, 2, ... per connection, so a reader checks the bytes (crc), their order and that
none is missing or repeated (lineno) without asking the target. Line 0 is ``hello``. Commands
(one per line; a trailing CR is stripped):

    trickle <ms>   from now on a ``tick`` line every ms milliseconds (0 stops)
    flood <n>      at least n bytes of ``flood`` lines at once
    run <token>    ``ran <token> <k>``: k = how many times this connection got ``run <token>``
                   (a command the proxy sent twice shows up as k = 2)
    total          ``total <offset>``: the offset of this line in the connection's stream
                   (= every byte sent before it), so a reader checks it lost nothing
    bye            ``bye <offset>``, then the target closes the connection (after sending)
    anything else  ``ok <line>``

With --record, ``<n> <bytes handed to the kernel>`` is appended to FILE after every send, so a
test knows what reached the kernel when this process is killed with SIGKILL.
"""

import argparse
import errno
import heapq
import os
import selectors
import socket
import sys
import time
import zlib

FILLER = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" * 4)


def make_line(tag, lineno, kind, text):
    head = "%s %d %s %s" % (tag, lineno, kind, text)
    return ("%s %08x\n" % (head, zlib.crc32(head.encode()))).encode()


def parse_line(line):
    """(tag, lineno, kind, text) of a line made by make_line (without its newline), or None."""
    head, _, crc = line.rpartition(b" ")
    if len(crc) != 8 or "%08x" % zlib.crc32(head) != crc.decode("ascii", "replace"):
        return None
    parts = head.decode().split(" ", 3)
    if len(parts) < 3:
        return None
    return parts[0], int(parts[1]), parts[2], parts[3] if len(parts) > 3 else ""


class Conn:
    __slots__ = ("sock", "num", "tag", "out", "queued", "sent", "lineno", "inbuf", "counts",
                 "trickle", "closing", "want_write")

    def __init__(self, sock, num, gen):
        self.sock = sock
        self.num = num
        self.tag = "%s.%d" % (gen, num)
        self.out = bytearray()
        self.queued = 0  # offset of the next byte
        self.sent = 0
        self.lineno = 0
        self.inbuf = b""
        self.counts = {}
        self.trickle = 0
        self.closing = False
        self.want_write = False


class Target:
    def __init__(self, host, port, gen, record):
        self.gen = gen
        self.sel = selectors.DefaultSelector()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(4096)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.n = 0
        self.timers = []  # (due, seq, conn)
        self.seq = 0
        self.record = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if record else None

    def emit(self, c, kind, text):
        line = make_line(c.tag, c.lineno, kind, text)
        c.lineno += 1
        c.out += line
        c.queued += len(line)

    def flush(self, c):
        while c.out:
            try:
                k = c.sock.send(c.out)
            except BlockingIOError:
                break
            except OSError:
                return self.drop(c)
            del c.out[:k]
            c.sent += k
            if self.record is not None:
                os.write(self.record, b"%d %d\n" % (c.num, c.sent))
        if not c.out and c.closing:
            return self.drop(c)
        want = bool(c.out)
        if want != c.want_write:
            c.want_write = want
            self.sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), c)

    def drop(self, c):
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        c.trickle = 0
        c.closing = True
        c.out.clear()

    def command(self, c, line):
        cmd, _, arg = line.partition(" ")
        if cmd == "trickle":
            ms = int(arg or 0)
            c.trickle = ms
            if ms > 0:
                self.seq += 1
                heapq.heappush(self.timers, (time.monotonic() + ms / 1000, self.seq, c))
        elif cmd == "flood":
            want = c.queued + int(arg or 0)
            while c.queued < want:
                self.emit(c, "flood", FILLER[: 40 + (c.lineno * 7) % 160])
        elif cmd == "run":
            k = c.counts.get(arg, 0) + 1
            c.counts[arg] = k
            self.emit(c, "ran", "%s %d" % (arg, k))
        elif cmd == "total":
            self.emit(c, "total", str(c.queued))
        elif cmd == "bye":
            self.emit(c, "bye", str(c.queued))
            c.closing = True
        else:
            self.emit(c, "ok", line[:200])

    def readable(self, c):
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            return self.drop(c)
        if not data:
            return self.drop(c)
        if c.closing:
            return
        c.inbuf += data
        while b"\n" in c.inbuf:
            line, c.inbuf = c.inbuf.split(b"\n", 1)
            self.command(c, line.rstrip(b"\r").decode("utf-8", "replace"))
            if c.closing:
                break
        self.flush(c)

    def accept(self):
        while True:
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    return
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.n += 1
            c = Conn(sock, self.n, self.gen)
            self.sel.register(sock, selectors.EVENT_READ, c)
            self.emit(c, "hello", "")
            self.flush(c)

    def serve(self):
        while True:
            timeout = None
            if self.timers:
                timeout = max(0, self.timers[0][0] - time.monotonic())
            for key, events in self.sel.select(timeout):
                c = key.data
                if c is None:
                    self.accept()
                    continue
                if events & selectors.EVENT_READ:
                    self.readable(c)
                if events & selectors.EVENT_WRITE and c.sock.fileno() != -1:
                    self.flush(c)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                due, _, c = heapq.heappop(self.timers)
                if c.closing or c.trickle <= 0:
                    continue
                self.emit(c, "tick", "")
                self.flush(c)
                self.seq += 1
                heapq.heappush(self.timers, (max(now, due + c.trickle / 1000), self.seq, c))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--gen", default="1")
    ap.add_argument("--record")
    a = ap.parse_args()
    t = Target(a.host, a.port, a.gen, a.record)
    sys.stdout.write("ready %d\n" % t.port)
    sys.stdout.flush()
    try:
        t.serve()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
