"""Dispatch throughput to 1, 10 and 100 clients, through the group's real delivery path.

Run (as root: a fanotify group is created, but nothing is marked):

    PYTHONPATH=. python bench/bench_dispatch.py

Synthetic events (no fds, as in FID mode) are fed to ``fan._deliver`` in
batches, the way the reader callback does, and every client's queue is drained
with ``get_nowait`` after each batch.  Three workloads:

* ``selective``: client *i* wants ``pids=[i]``; each event matches one client.
  The (mask, pid) candidate cache makes this cost independent of the number
  of clients.
* ``by-type``: client *i* wants one of 8 event types; each event matches about
  N/8 clients, so the work grows with the number of deliveries.
* ``broadcast``: every client wants every event; each event is delivered N
  times, so cost per *event* grows with N, and the figure to watch is the
  cost per delivery.
* ``pattern``: client *i* wants ``path_pattern="/d/<i>/*"``; every client is a
  candidate and runs ``fnmatch``, so this is linear in N by design (a rule
  with only a pattern cannot be indexed).

``--kernel`` adds an end-to-end run on a private tmpfs (mounted and unmounted
here): a subprocess creates files, N selective clients plus one match-all
client consume them.

Figures are events per second and the ratio to one client within the same run
(the machine is shared: compare ratios, not absolute numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

from afanotify import Event, FanoRule, Fanotify, FanotifyData, WouldBlock

OPEN = int(Event.OPEN)
TYPES = [int(e) for e in (
    Event.ACCESS, Event.MODIFY, Event.CLOSE_WRITE, Event.CLOSE_NOWRITE, Event.OPEN,
    Event.OPEN_EXEC, Event.ATTRIB, Event.CREATE,
)]


def make_rules(kind: str, n: int) -> list[FanoRule]:
    if kind == "selective":
        return [FanoRule(f"c{i}", pids=[i + 1]) for i in range(n)]
    if kind == "by-type":
        return [FanoRule(f"c{i}", ev_types=TYPES[i % len(TYPES)]) for i in range(n)]
    if kind == "broadcast":
        return [FanoRule(f"c{i}", ev_types=OPEN) for i in range(n)]
    if kind == "pattern":
        return [FanoRule(f"c{i}", path_pattern=f"/d/{i}/*") for i in range(n)]
    raise ValueError(kind)


def make_events(kind: str, n: int, count: int) -> list[FanotifyData]:
    out = []
    for k in range(count):
        i = k % n
        ev_types = TYPES[k % len(TYPES)] if kind == "by-type" else OPEN
        out.append(FanotifyData(pid=i + 1, ev_types=ev_types, path=f"/d/{i}/f{k}"))
    return out


async def run_synthetic(
    kind: str, n: int, total: int, batch: int
) -> tuple[float, float, int]:
    """Events/s of dispatch alone, events/s of dispatch + drain, deliveries made."""
    async with Fanotify() as fan:
        clients = [fan.connect(r, maxsize=batch * 2) for r in make_rules(kind, n)]
        events = make_events(kind, n, batch)
        delivered = 0
        rounds = max(1, total // batch)
        t_dispatch = 0.0
        t0 = time.perf_counter()
        for _ in range(rounds):
            t1 = time.perf_counter()
            fan._deliver(events)
            t_dispatch += time.perf_counter() - t1
            for c in clients:
                while True:
                    try:
                        c.get_nowait()
                    except WouldBlock:
                        break
                    delivered += 1
        elapsed = time.perf_counter() - t0
        for c in clients:
            c.close()
    return rounds * batch / t_dispatch, rounds * batch / elapsed, delivered


async def run_kernel(n: int, files: int) -> float:
    mnt = tempfile.mkdtemp(prefix="afanotify-bench-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "afanotify-bench", mnt], check=True)
    try:
        async with Fanotify() as fan:
            fan.mark(mnt, int(Event.CLOSE_WRITE), "mount")
            selective = [fan.connect(FanoRule(f"c{i}", pids=[10**7 + i])) for i in range(n)]
            everything = fan.connect(FanoRule("all", ev_types=int(Event.CLOSE_WRITE)),
                                     maxsize=files + 16)
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "import os,sys\nd=sys.argv[1]\nfor i in range(int(sys.argv[2])):\n"
                " os.close(os.open(f'{d}/f{i}', os.O_WRONLY|os.O_CREAT))",
                mnt, str(files),
            )
            got = 0
            while got < files:
                ev = await asyncio.wait_for(everything.get(), 30)
                ev.close()
                got += 1
            elapsed = time.perf_counter() - t0
            await proc.wait()
            for c in selective:
                c.close()
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)
    return files / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="events per measurement")
    ap.add_argument("--batch", type=int, default=256, help="events per delivery call")
    ap.add_argument("--clients", default="1,10,100")
    ap.add_argument("--kinds", default="selective,by-type,broadcast,pattern")
    ap.add_argument("--kernel", action="store_true", help="also run end to end on a tmpfs")
    ap.add_argument("--files", type=int, default=20_000, help="files for --kernel")
    args = ap.parse_args(argv)
    ns = [int(x) for x in args.clients.split(",")]
    print("dispatch = fan._deliver only; +drain = also every client's get_nowait loop")
    print(f"{'workload':<10} {'clients':>7} {'dispatch ev/s':>14} {'vs 1':>6} "
          f"{'+drain ev/s':>12} {'vs 1':>6} {'deliveries/ev':>13}")
    for kind in args.kinds.split(","):
        base = base2 = 0.0
        for n in ns:
            # Fewer events for slow configurations keep the run short.
            total = args.events if kind in ("selective", "by-type") or n < 100 else args.events // 4
            rate, rate2, delivered = asyncio.run(run_synthetic(kind, n, total, args.batch))
            base = base or rate
            base2 = base2 or rate2
            per_event = delivered / (max(1, total // args.batch) * args.batch)
            print(f"{kind:<10} {n:>7} {rate:>14,.0f} {rate / base:>6.2f} "
                  f"{rate2:>12,.0f} {rate2 / base2:>6.2f} {per_event:>13.2f}")
    if args.kernel:
        print("kernel: files/s end to end (subprocess creates files; N selective clients "
              "that match nothing plus one match-all client)")
        base = 0.0
        for n in ns:
            rate = asyncio.run(run_kernel(n, args.files))
            base = base or rate
            print(f"{'kernel':<10} {n:>7} {rate:>14,.0f} {rate / base:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
