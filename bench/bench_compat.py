"""Drain rate of a burst: afanotify.compat versus the native async client (and pyfanotify).

Each run mounts a private tmpfs, marks it (mount mark, FAN_CLOSE_WRITE),
connects one client with ``path_pattern="<mount>/*"``, and then -- before
anything reads the group -- a process outside this one's process tree
creates N empty files: N events wait in the kernel's queue (the groups are
made with FAN_UNLIMITED_QUEUE, as pyfanotify's is).  The clock starts when
reading starts and stops when the client has received the N-th event.

* native: ``afanotify.Fanotify`` + ``afanotify.FanotifyClient``, consumed
  with ``async for`` on the same event loop.
* compat: ``afanotify.compat`` exactly as legacy code uses it: ``start()``,
  then ``select.poll()`` on ``client.sock`` and ``client.get_events()``.
* pyfanotify (optional): the same legacy loop on the real pyfanotify, run by
  another interpreter that has it installed (``--pyfanotify-python``).  It
  drops events silently when its client socket is full, so it gets a time
  budget and its received count is reported next to the burst size.

Run as root:  python bench/bench_compat.py [--events 100000] [--repeat 3]
              [--pyfanotify-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Runs in a detached process: create N empty files (one CLOSE_WRITE each),
# then create the "done" flag outside the watched mount.
_GENERATOR = r"""
import os, sys, time
parent = os.getpid()
if os.fork():
    os._exit(0)
deadline = time.monotonic() + 5
while os.getppid() == parent and time.monotonic() < deadline:
    time.sleep(0.001)
d, n, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
for i in range(n):
    os.close(os.open(f"{d}/f{i}", flags, 0o644))
os.close(os.open(done, flags, 0o644))
"""


def burst(directory: str, n: int, done: str) -> None:
    """Create ``n`` files in ``directory`` from a non-descendant process; wait until done."""
    subprocess.run([sys.executable, "-c", _GENERATOR, directory, str(n), done],
                   check=True, timeout=60)
    deadline = time.monotonic() + 300
    while not os.path.exists(done):
        if time.monotonic() > deadline:
            raise RuntimeError("the event generator did not finish")
        time.sleep(0.01)


class Mount:
    """A private tmpfs for one run (and a scratch dir outside it)."""

    def __enter__(self) -> Mount:
        self.scratch = tempfile.mkdtemp(prefix="afanotify-bench-")
        self.path = os.path.join(self.scratch, "mnt")
        os.mkdir(self.path)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,nr_inodes=1000000",
                        "afanotify-bench", self.path], check=True)
        self.done = os.path.join(self.scratch, "done")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", self.path], check=False, capture_output=True)
        shutil.rmtree(self.scratch, ignore_errors=True)


def run_native(n: int) -> dict[str, float]:
    from afanotify import Event, FanoRule, Fanotify, FanotifyClient, InitFlag

    async def main(m: Mount) -> dict[str, float]:
        flags = InitFlag.UNLIMITED_QUEUE | InitFlag.UNLIMITED_MARKS
        event_flags = os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE | os.O_NOATIME
        async with Fanotify(flags, event_flags) as fan:
            fan.mark(m.path, Event.CLOSE_WRITE, "mount")
            client = FanotifyClient(fan, FanoRule("bench", path_pattern=f"{m.path}/*"))
            burst(m.path, n, m.done)
            got = 0
            t0 = time.perf_counter()
            async for _ev in client:
                got += 1
                if got == n:
                    break
            dt = time.perf_counter() - t0
            client.close()
        return {"events": got, "seconds": dt, "rate": got / dt}

    with Mount() as m:
        return asyncio.run(main(m))


def run_compat(n: int) -> dict[str, float]:
    import afanotify.compat as pyfanotify

    with Mount() as m:
        fanot = pyfanotify.Fanotify()
        try:
            fanot.mark(m.path, ev_types=pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
            cli = pyfanotify.FanotifyClient(fanot, path_pattern=f"{m.path}/*")
            burst(m.path, n, m.done)
            poller = select.poll()
            poller.register(cli.sock.fileno(), select.POLLIN)
            got = 0
            t0 = time.perf_counter()
            fanot.start()
            while got < n and poller.poll(10_000):
                for _ev in cli.get_events():
                    got += 1
            dt = time.perf_counter() - t0
            stats = cli.statistics()
            cli.close()
        finally:
            fanot.stop()
        return {"events": got, "seconds": dt, "rate": got / dt, "dropped": stats.dropped,
                "blocked": stats.blocked, "engine_waits": fanot.statistics().waits}


# The same legacy loop, run by an interpreter with the real pyfanotify.
_PYFANOTIFY = r"""
import json, os, select, sys, time
import pyfanotify
mnt, n, budget, gen, done = sys.argv[1:6]
n, budget = int(n), float(budget)
fanot = pyfanotify.Fanotify()
fanot.mark(mnt, ev_types=pyfanotify.FAN_CLOSE_WRITE, is_type="mp")
cli = pyfanotify.FanotifyClient(fanot, path_pattern=mnt + "/*")
import subprocess
subprocess.run([sys.executable, "-c", gen, mnt, str(n), done], check=True)
while not os.path.exists(done):
    time.sleep(0.01)
poller = select.poll()
poller.register(cli.sock.fileno(), select.POLLIN)
got = 0
t0 = time.perf_counter()
last = t0
fanot.start()
while got < n:
    now = time.perf_counter()
    if now - t0 > budget or (got and now - last > 5):
        break
    if poller.poll(1000):
        for ev in cli.get_events():
            got += 1
            last = time.perf_counter()
dt = last - t0
print("RESULT " + json.dumps({"events": got, "seconds": dt, "rate": got / dt if dt else 0.0,
                  "budget_s": budget}))
cli.close()
fanot.stop()
"""


def run_pyfanotify(python: str, n: int, budget: float) -> dict[str, float]:
    with Mount() as m:
        r = subprocess.run(
            [python, "-c", _PYFANOTIFY, m.path, str(n), str(budget), _GENERATOR, m.done],
            capture_output=True, text=True, timeout=budget + 120, cwd="/",
        )
        if r.returncode != 0:
            raise RuntimeError(f"pyfanotify run failed: {r.stderr[-2000:]}")
        line = next(x for x in reversed(r.stdout.splitlines()) if x.startswith("RESULT "))
        return dict(json.loads(line[len("RESULT "):]))


def find_pyfanotify(candidate: str | None) -> str | None:
    for python in filter(None, (candidate, os.environ.get("PYFANOTIFY_PYTHON"))):
        r = subprocess.run([python, "-c", "import pyfanotify"], capture_output=True)
        if r.returncode == 0:
            return python
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pyfanotify-python", help="an interpreter with pyfanotify installed")
    p.add_argument("--pyfanotify-events", type=int, default=2_000,
                   help="burst size for pyfanotify (it drains slowly)")
    p.add_argument("--pyfanotify-budget", type=float, default=60.0,
                   help="seconds pyfanotify gets to drain its burst")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_compat needs root (fanotify mount marks, tmpfs mounts)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))

    native, compat = [], []
    for _ in range(args.repeat):  # alternate, so drift hits both alike
        native.append(run_native(args.events))
        compat.append(run_compat(args.events))
    result: dict[str, object] = {
        "events": args.events,
        "native_rates": [round(r["rate"]) for r in native],
        "compat_rates": [round(r["rate"]) for r in compat],
        "native_rate": statistics.median(r["rate"] for r in native),
        "compat_rate": statistics.median(r["rate"] for r in compat),
        "compat_received": [r["events"] for r in compat],
        "compat_dropped": [r["dropped"] for r in compat],
        "compat_engine_waits": [r["engine_waits"] for r in compat],
    }
    result["native_over_compat"] = result["native_rate"] / result["compat_rate"]  # type: ignore[operator]

    py = find_pyfanotify(args.pyfanotify_python)
    if py is not None:
        pf = run_pyfanotify(py, args.pyfanotify_events, args.pyfanotify_budget)
        result["pyfanotify"] = {**pf, "burst": args.pyfanotify_events,
                                "lost": args.pyfanotify_events - int(pf["events"])}
        same = run_compat(args.pyfanotify_events)
        result["compat_same_burst"] = {"events": same["events"], "rate": same["rate"]}
    else:
        result["pyfanotify"] = "not run: no interpreter with pyfanotify (--pyfanotify-python)"

    if args.json:
        print(json.dumps(result))
        return 0
    print(f"burst of {args.events} events, {args.repeat} runs each (median):")
    print(f"  native async client : {result['native_rate']:>10.0f} events/s  "
          f"{result['native_rates']}")
    print(f"  afanotify.compat    : {result['compat_rate']:>10.0f} events/s  "
          f"{result['compat_rates']}  received {result['compat_received']}, "
          f"dropped {result['compat_dropped']}")
    print(f"  native / compat     : {result['native_over_compat']:.2f}x")
    pf = result["pyfanotify"]
    if isinstance(pf, dict):
        same = result["compat_same_burst"]
        assert isinstance(same, dict)
        print(f"  pyfanotify 0.3      : {pf['rate']:>10.1f} events/s, received {pf['events']} "
              f"of {pf['burst']} (lost {pf['lost']}) in {pf['seconds']:.1f} s")
        print(f"  compat, same burst  : {same['rate']:>10.0f} events/s, received "
              f"{same['events']} of {args.pyfanotify_events}")
    else:
        print(f"  pyfanotify          : {pf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
