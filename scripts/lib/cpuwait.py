"""How long a process's main thread waited for a CPU, finely enough to tell a loop stall the
process caused from one the machine caused (Python 3 standard library only).

A loop stall is wall-clock: a turn of the event loop during which the kernel ran something
else (another process, or the hypervisor another VM) lasts longer than its own work. The
soak's stall check is about the daemon's own work, so it subtracts the longest wait for a CPU
that fits in the stall. The wait comes from `/proc/PID/schedstat` (its second field is the
time the thread spent runnable on a run queue, not running), sampled every 2 ms by a process
of its own (`python3 cpuwait.py PID FILE`: a thread of the busy harness would sample only when
it gets the GIL).

    from cpuwait import Sampler, longest_wait
    s = Sampler(pid, path)           # starts sampling
    ...
    samples = s.stop()               # [(monotonic s, ms waited so far)]
    waited = longest_wait(samples, start, end, length)

Time the thread was stopped or asleep in a system call is not a wait for a CPU: it counts as
the process's own. So does time the hypervisor took the CPU from it while it ran (steal),
which the guest cannot see per thread: a machine that steals a lot can still fail the check.
"""

import bisect
import os
import signal
import subprocess
import sys
import time

INTERVAL = 0.002


def run_delay_ms(pid):
    """Milliseconds the process's main thread has spent runnable but waiting for a CPU."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e6


class Sampler:
    """`python3 cpuwait.py PID FILE` as a child (killed with the harness, stopped by `stop`)."""

    def __init__(self, pid, path, spawn=subprocess.Popen):
        self.path = path
        self.proc = spawn([sys.executable, os.path.abspath(__file__), str(pid), path])

    def stop(self):
        """Stops sampling; the samples, (time.monotonic() seconds, ms waited so far), in order."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        out = []
        with open(self.path) as f:
            for line in f:
                t, _, w = line.partition(" ")
                try:
                    out.append((float(t), float(w)))
                except ValueError:
                    pass  # the last line, cut short by SIGTERM
        return out


def longest_wait(samples, start, end, length):
    """The most time (s) the thread can be shown to have waited for a CPU within some span of
    `length` seconds inside [start, end], from `samples` [(t s, waited ms)].

    Between two samples i < j the thread waited w = waited_j − waited_i. If the samples are
    closer than `length`, a span of that length holds all of w; if farther apart, at least
    w − (t_j − t_i − length) of it falls into one such span. The answer is the largest such
    bound (never more than `length`): a lower bound of the true longest wait, so a stall is
    never excused by more waiting than the samples prove."""
    lo = bisect.bisect_left(samples, start - INTERVAL * 5, key=lambda x: x[0])
    hi = bisect.bisect_right(samples, end + INTERVAL * 5, key=lambda x: x[0])
    pts = [(t, w / 1e3) for t, w in samples[lo:hi]]
    best = 0.0
    for i, (ti, wi) in enumerate(pts):
        for j in range(i + 1, len(pts)):
            tj, wj = pts[j]
            if tj - ti > 2 * length + 0.05:
                break
            bound = (wj - wi) - max(0.0, (tj - ti) - length)
            if bound > best:
                best = bound
    return min(best, length)


def _main(pid, path):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(path, "w", buffering=1 << 16) as out:
        while not stop:
            try:
                w = run_delay_ms(pid)
            except (OSError, IndexError, ValueError):
                break  # the process is gone
            out.write(f"{time.monotonic():.6f} {w:.3f}\n")
            time.sleep(INTERVAL)


if __name__ == "__main__":
    _main(int(sys.argv[1]), sys.argv[2])
