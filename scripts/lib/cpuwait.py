"""How long a process's main thread waited for a CPU, finely enough to tell a loop stall the
process caused from one the machine caused (Python 3 standard library only).

A loop stall is wall-clock: a turn of the event loop during which the kernel ran something
else (another process, or the hypervisor another VM) lasts longer than its own work. The
soak's stall check is about the daemon's own work, so it subtracts what the daemon waited for a
CPU during the turn. The daemon exports when its longest recent turn ended
(`uvproxyd_loop_lag_end_seconds`, CLOCK_MONOTONIC, the clock of `time.monotonic()`) and how
long it was; the wait comes from `/proc/PID/schedstat` (its second field, `run_delay`, is the
time the thread spent runnable on a run queue, not running), sampled every 2 ms by a process
of its own (`python3 cpuwait.py PID FILE`: a thread of the busy harness would sample only when
it gets the GIL), at nice -15 when it may (a starved machine starves the sampler last).

    from cpuwait import Sampler, waited_within
    s = Sampler(pid, path)           # starts sampling
    ...
    samples = s.stop()               # [(s before the read, s after it, ms waited so far)]
    waited = waited_within(samples, turn_start, turn_end)

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
        try:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, -15)
        except OSError:
            pass  # not root: it samples at nice 0

    def stop(self):
        """Stops sampling; the samples, (time.monotonic() s before the read, s after it, ms waited
        so far), in order."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        out = []
        with open(self.path) as f:
            for line in f:
                try:
                    before, after, waited = (float(x) for x in line.split())
                    out.append((before, after, waited))
                except ValueError:
                    pass  # the last line, cut short by SIGTERM
        return out


def waited_within(samples, start, end):
    """The time (s) the thread can be shown to have waited for a CPU between `start` and `end`
    (a turn of its loop), from `samples` [(t before the read, t after it, ms waited so far)].

    The kernel adds a wait to `run_delay` when the thread gets a CPU back. The thread was running
    at `start` (the turn's poll had returned) and at `end` (a turn ends in its own code). So for a
    sample i read at or after `start` and a later sample j, every wait added between them began
    after `start`; those added after `end` began after it too, and took at most the time from
    `end` to j's read. Hence waited_j − waited_i − max(0, j's read − `end`) of waiting lies in
    the turn: the answer is the largest such bound (0 when no sample was read in the turn),
    never more than the turn. Since waited only grows, the first sample read in the turn is the
    best i."""
    lo = bisect.bisect_left(samples, start, key=lambda x: x[0])
    if lo >= len(samples) or samples[lo][0] > end:
        return 0.0
    _, _, first = samples[lo]
    best = 0.0
    for _, after, waited in samples[lo + 1:]:
        if after - end > 0.1:
            break
        best = max(best, (waited - first) / 1e3 - max(0.0, after - end))
    return min(best, end - start)


def _main(pid, path):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(path, "w", buffering=1 << 16) as out:
        while not stop:
            before = time.monotonic()
            try:
                w = run_delay_ms(pid)
            except (OSError, IndexError, ValueError):
                break  # the process is gone
            out.write(f"{before:.6f} {time.monotonic():.6f} {w:.3f}\n")
            time.sleep(INTERVAL)


if __name__ == "__main__":
    _main(int(sys.argv[1]), sys.argv[2])
