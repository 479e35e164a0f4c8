#!/usr/bin/env python3
"""What a WebSocket costs against SSE + POST (issue 12, SPEC §8), side by side in one run.

1. CPU per echo round trip. One proxy in front of the C upstream (which echoes each line). For
   each transport, S sessions each make T round trips one after the other, all sessions at once
   (a thread each): WebSocket, `terminal.mudstandards.org`: a masked text frame out, the echo
   back as a text frame; SSE + POST: `POST …/input` on a keep-alive connection, the echo back as
   an SSE event on the session's stream. The proxy's on-CPU time for the phase (schedstat) over
   S×T is its CPU per round trip. The two alternate which goes first over the rounds (drift in
   the machine's load hits both alike). Goal: WebSocket ≤ 0.5× SSE + POST.
2. Memory of an idle connection. Two fresh proxies; each opens N sessions (greeting read) and
   one connection of its kind (closed again: first-use costs are once per process), then holds
   one idle connection per session: N WebSockets on one, N SSE streams on the other. RSS growth
   per held connection. Goal: a WebSocket no more than an SSE stream.

The client is Python (raw sockets, no library: its own cost is not measured, only the proxy's).

Usage: ws_cost.py --proxy-bin BIN --upstream-bin UP [--rounds 6] [--sessions 32] [--trips 300] [--idle 2000]
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_per_session import rss_kib  # noqa: E402
from metrics_cost import cpu_ns, cpu_ticks  # noqa: E402

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x11\x22\x33\x44"


def start(binary, upstream_port, wrapper=()):
    proc = subprocess.Popen([*wrapper, binary, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream_port}",
                             "--log-level", "notice", "--max-sessions", "100000"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit(f"{binary} did not start")


def request(sock, data):
    sock.sendall(data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    return head, rest[:length], rest[length:]


def create(port):
    s = socket.create_connection(("127.0.0.1", port))
    head, body, _ = request(s, b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
    s.close()
    return body.split(b'"id": "')[1].split(b'"')[0].decode()


def ws_open(port, sid):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(f"GET /sessions/{sid}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
              f"Sec-WebSocket-Protocol: terminal.mudstandards.org\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    assert b" 101 " in buf.split(b"\r\n")[0], buf[:100]
    return s, buf.split(b"\r\n\r\n", 1)[1]


def ws_frame(text):
    payload = text.encode()
    return bytes([0x81, 0x80 | len(payload)]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def sse_open(port, sid):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /sessions/{sid}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    return s, buf.split(b"\r\n\r\n", 1)[1]


def ws_trips(port, sid, trips, errors):
    try:
        s, buf = ws_open(port, sid)
        for i in range(trips):
            word = f"w{i}"
            s.sendall(ws_frame(word))
            while (word + "\r\n").encode() not in buf:
                buf += s.recv(65536)
            buf = buf[buf.index((word + "\r\n").encode()) + len(word) + 2:]
        s.close()
    except Exception as e:  # noqa: BLE001
        errors.append(f"ws {sid}: {e}")


def sse_trips(port, sid, trips, errors):
    try:
        stream, buf = sse_open(port, sid)
        post = socket.create_connection(("127.0.0.1", port))
        post.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(trips):
            word = f"s{i}"
            request(post, f"POST /sessions/{sid}/input HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(word)}\r\n\r\n{word}".encode())
            needle = (word + "\\r\\n").encode()  # the event's JSON string
            while needle not in buf:
                buf += stream.recv(65536)
            buf = buf[buf.index(needle) + len(needle):]
        stream.close()
        post.close()
    except Exception as e:  # noqa: BLE001
        errors.append(f"sse {sid}: {e}")


def round_trips(proc, port, kind, sessions, trips, begin=None, end=None):
    """`begin` and `end` (optional) run just before the first round trip and just after the last."""
    ids = [create(port) for _ in range(sessions)]
    errors = []
    target = ws_trips if kind == "ws" else sse_trips
    if begin:
        begin()
    before = cpu_ns(proc.pid)
    ticks_before = cpu_ticks(proc.pid)
    t0 = time.time()
    threads = [threading.Thread(target=target, args=(port, sid, trips, errors)) for sid in ids]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.time() - t0
    if end:
        end()
    used = cpu_ns(proc.pid) - before
    ticks = [a - b for a, b in zip(cpu_ticks(proc.pid), ticks_before)]
    user_share = ticks[0] / max(1, sum(ticks))
    for sid in ids:
        s = socket.create_connection(("127.0.0.1", port))
        request(s, f"DELETE /sessions/{sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        s.close()
    if errors:
        raise SystemExit(f"{kind}: {errors[:3]}")
    return used / (sessions * trips), sessions * trips / wall, user_share


def idle_memory(binary, upstream_port, kind, n):
    proc, port = start(binary, upstream_port)
    try:
        ids = [create(port) for _ in range(n)]
        # One connection of the kind first, closed again: what the first one costs once per
        # process (libcrypto loads its tables and error strings at the first WebSocket
        # handshake, ~100 KB of heap and its code's pages) is not a cost per connection.
        opened = (ws_open if kind == "ws" else sse_open)(port, ids[0])[0]
        opened.close()
        time.sleep(1)
        before = rss_kib(proc.pid)
        held = [(ws_open if kind == "ws" else sse_open)(port, sid)[0] for sid in ids]
        time.sleep(2)
        after = rss_kib(proc.pid)
        for s in held:
            s.close()
        return (after - before) * 1024 / n
    finally:
        proc.terminate()
        proc.wait(30)


def instructions(binary, upstream_port, sessions, trips):
    """User-space instructions per round trip of each transport, counted by callgrind (exact and
    repeatable, whatever else the machine is doing; the kernel's part is not counted). One proxy
    under valgrind; the counters are zeroed after the sessions are made and dumped after the
    last round trip."""
    work = tempfile.mkdtemp()
    # valgrind 3.19 cannot read the DWARF 5 that swiftc writes: measure a copy without it.
    stripped = os.path.join(work, "uvproxyd")
    subprocess.run(["strip", "--strip-debug", "-o", stripped, binary], check=True)
    out = os.path.join(work, "callgrind.out")
    proc, port = start(stripped, upstream_port, wrapper=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                                         f"--log-file={work}/valgrind.log"))
    counts = {}
    try:
        # One connection of each kind first: libcrypto's one-time set-up at the first handshake
        # (~5 million instructions) is not a cost per round trip.
        sid = create(port)
        ws_open(port, sid)[0].close()
        sse_open(port, sid)[0].close()
        for kind in ("ws", "sse"):
            dumps = []

            def control(flag):
                subprocess.run(["callgrind_control", flag, str(proc.pid)], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

            def dumped():
                control("-d")
                dumps.extend(sorted(f for f in os.listdir(work) if f.startswith("callgrind.out.")))
            round_trips(proc, port, kind, sessions, trips, begin=lambda: control("-z"), end=dumped)
            with open(os.path.join(work, dumps[-1])) as f:
                total = int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M).group(1))
            os.remove(os.path.join(work, dumps[-1]))
            counts[kind] = total / (sessions * trips)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    return counts


def measure(proxy_bin, upstream_bin, rounds=6, sessions=32, trips=300, idle=2000, callgrind=(8, 200), say=print):
    """Every figure, as a dict: `cpu_ns`/`user_ns` (median per round trip, each transport), `cpu_runs`,
    `rate`, `instructions` (callgrind; absent without valgrind or with callgrind None), `rss` (bytes
    per idle connection)."""
    up = subprocess.Popen([upstream_bin, "--port", "0", "--greeting", "32"], stdout=subprocess.PIPE, text=True)
    upstream_port = int(up.stdout.readline().split()[1])
    proc = None
    res = {}
    try:
        proc, port = start(proxy_bin, upstream_port)
        cpu = {"ws": [], "sse": []}
        user = {"ws": [], "sse": []}
        rate = {"ws": [], "sse": []}
        for r in range(rounds):
            for kind in (("ws", "sse") if r % 2 == 0 else ("sse", "ws")):
                ns, per_s, user_share = round_trips(proc, port, kind, sessions, trips)
                cpu[kind].append(ns)
                user[kind].append(ns * user_share)
                rate[kind].append(per_s)
                say(f"round {r + 1} {kind:3}: {ns / 1000:7.2f} µs proxy CPU per round trip, {per_s:8.0f} round trips/s, "
                    f"{user_share:.0%} of it in user space")
        proc.terminate()
        proc.wait(30)
        res["cpu_runs"] = cpu
        res["cpu_ns"] = {k: statistics.median(v) for k, v in cpu.items()}
        res["user_ns"] = {k: statistics.median(v) for k, v in user.items()}
        res["rate"] = {k: statistics.median(v) for k, v in rate.items()}
        if callgrind and shutil.which("valgrind"):
            res["instructions"] = instructions(proxy_bin, upstream_port, *callgrind)
        res["rss"] = {kind: idle_memory(proxy_bin, upstream_port, kind, idle) for kind in ("ws", "sse")}
        res["idle"] = idle
        res["sessions"], res["trips"], res["rounds"] = sessions, trips, rounds
        res["callgrind"] = callgrind
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        up.terminate()
        up.wait(10)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--upstream-bin", required=True)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--trips", type=int, default=300)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--callgrind-trips", type=int, default=200, help="round trips per session under callgrind (0: none)")
    args = ap.parse_args()
    res = measure(args.proxy_bin, args.upstream_bin, args.rounds, args.sessions, args.trips, args.idle,
                  (8, args.callgrind_trips) if args.callgrind_trips else None)
    cpu, ws, sse = res["cpu_runs"], res["cpu_ns"]["ws"], res["cpu_ns"]["sse"]
    print(f"median proxy CPU per round trip: WebSocket {ws / 1000:.2f} µs, SSE + POST {sse / 1000:.2f} µs, "
          f"ratio {ws / sse:.3f} (goal ≤ 0.5); summed over rounds {sum(cpu['ws']) / sum(cpu['sse']):.3f}")
    if "instructions" in res:
        i = res["instructions"]
        print(f"user-space instructions per round trip (callgrind): WebSocket {i['ws']:,.0f}, SSE + POST {i['sse']:,.0f}, "
              f"ratio {i['ws'] / i['sse']:.3f}")
    print(f"RSS per idle connection ({args.idle:,} each): WebSocket {res['rss']['ws']:.0f} B, SSE stream "
          f"{res['rss']['sse']:.0f} B (goal: no more)")


if __name__ == "__main__":
    main()
