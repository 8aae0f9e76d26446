"""Where a ``batches()`` FID drain's time goes: read(2), decode, the consumer, the release.

Run as root from the repository root (after ``python build_ffi.py``), on one
CPU (the case without the read-ahead thread)::

    taskset -c 0 python bench/bench_fid_phases.py --rounds 5
    taskset -c 0 python bench/bench_fid_phases.py --buffer-size 262144 --buffer-size 65536

Each round (one per ``--buffer-size``, in turns, in one process: compare the
sizes within a run, as the machine's other work moves every figure between
runs), on a fresh tmpfs with bench/run.py's ``fid_drain``
burst queued (``--files`` CREATE+DELETE pairs):

- ``drain``: ``async for batch in fan.batches()`` touching each path, as
  bench/run.py's ``fid_batches``, with the time spent in each phase summed
  over the batches: ``read`` (the group's ``readv``: the kernel's copy, the
  same work as the C reader's, whose whole CPU time it nearly is), ``decode``
  (``Pipeline.decode``: the C walk and builder), ``consume`` (the loop over
  the batch) and ``release`` (dropping the previous batch's list: its events
  and their strings freed); ``other`` is the rest (the event loop, the
  reader's registration).
- ``replay``: the same burst again, read whole first and then decoded from
  memory, the phases timed alike (best of ``--replays``): decode, consumer
  and release with their memory still in the caches.

The difference between the two is what the drain's memory traffic costs: a
256 KiB read is about 3,800 events, whose objects, strings and walk entries
(about 2 MiB) with the kernel's own traffic for the read outgrow a 2 MiB L2,
so each event's lines are fetched again by the consumer and by the release.
Figures are nanoseconds per event (perf_counter; the machine's other work
moves them from run to run: compare rows of one run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as R  # noqa: E402

from afanotify import Event, Fanotify, InitFlag, _fdlimit, _pipeline  # noqa: E402

PHASES = ("read", "decode", "consume", "release", "other")


class Timed:
    """Sums the time spent in the group's reads and decodes while installed."""

    def __init__(self) -> None:
        self.read = self.decode = 0.0
        self._read: Any = _fdlimit.FdGuard.read
        self._decode: Any = _pipeline.Pipeline.decode

    def __enter__(self) -> Timed:
        read, decode = self._read, self._decode

        def timed_read(guard: Any, fd: int, view: memoryview) -> int:
            t = time.perf_counter()
            try:
                return int(read(guard, fd, view))
            finally:
                self.read += time.perf_counter() - t

        def timed_decode(pipe: Any, view: memoryview, loop: Any) -> list[Any]:
            t = time.perf_counter()
            try:
                return list(decode(pipe, view, loop))
            finally:
                self.decode += time.perf_counter() - t

        _fdlimit.FdGuard.read = timed_read  # type: ignore[method-assign]
        _pipeline.Pipeline.decode = timed_decode  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        _fdlimit.FdGuard.read = self._read  # type: ignore[method-assign]
        _pipeline.Pipeline.decode = self._decode  # type: ignore[method-assign]


async def _round(ctx: R.Context, mnt: Path, nfiles: int, bufsize: int,
                 replays: int) -> tuple[dict[str, float], dict[str, float]]:
    n = 2 * nfiles
    with Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.UNLIMITED_QUEUE,
                  buffer_size=bufsize) as fan:
        fan.mark(mnt, Event.CREATE | Event.DELETE, kind="filesystem")
        ctx.produce("create-unlink", mnt / "d", nfiles)
        got = resolved = 0
        consume = release = 0.0
        keep: list[Any] | None = None
        with Timed() as timed:
            t0 = time.perf_counter()
            async with fan.batches() as batches:
                async for batch in batches:
                    t = time.perf_counter()
                    keep = None  # the previous batch: its last reference
                    t1 = time.perf_counter()
                    for ev in batch:
                        if ev.path is not None and ev.path_resolved:
                            resolved += 1
                    got += len(batch)
                    t2 = time.perf_counter()
                    release += t1 - t
                    consume += t2 - t1
                    keep = batch
                    del batch
                    if got >= n:
                        break
                t = time.perf_counter()
                del keep
                release += time.perf_counter() - t
            total = time.perf_counter() - t0
        if got != n or resolved != n:
            raise RuntimeError(f"drained {got} of {n} events, {resolved} resolved")
        drain = {"read": timed.read, "decode": timed.decode, "consume": consume,
                 "release": release}
        drain["other"] = total - sum(drain.values())
        # The burst again, read whole first (no copy in the drain above).
        ctx.produce("create-unlink", mnt / "d", nfiles)
        reads: list[bytes] = []
        buf = bytearray(bufsize)
        while True:
            try:
                size = os.readv(fan.fileno(), (buf,))
            except BlockingIOError:
                break
            reads.append(bytes(buf[:size]))
        pipe = fan._pipeline
        loop = asyncio.get_running_loop()
        best: dict[str, float] = {}
        for _ in range(replays):
            phase = dict.fromkeys(("decode", "consume", "release"), 0.0)
            for data in reads:
                t = time.perf_counter()
                events = pipe.decode(memoryview(data), loop)
                t1 = time.perf_counter()
                for ev in events:
                    if ev.path is not None and ev.path_resolved:
                        resolved += 1
                t2 = time.perf_counter()
                events = ev = None
                t3 = time.perf_counter()
                phase["decode"] += t1 - t
                phase["consume"] += t2 - t1
                phase["release"] += t3 - t2
            best = {k: min(v, best.get(k, v)) for k, v in phase.items()}
    per = 1e9 / n
    return ({k: v * per for k, v in drain.items()}, {k: v * per for k, v in best.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--buffer-size", type=int, action="append",
                    help="bytes per read (repeat to interleave sizes; default 262144)")
    ap.add_argument("--replays", type=int, default=5)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (tmpfs mounts, filesystem marks)", file=sys.stderr)
        return 2
    sizes = args.buffer_size or [256 * 1024]
    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="afanotify-phases-") as tmp:
        ctx = R.Context(quick=False, cbench=R.build_cbench(Path(tmp)))
        for i in range(args.rounds + 1):  # the first round warms up, unrecorded
            for size in sizes if i % 2 else sizes[::-1]:
                with ctx.mount() as mnt:
                    drain, replay = asyncio.run(
                        _round(ctx, mnt, args.files, size, args.replays))
                if i:
                    rows.setdefault(f"drain {size}", []).append(drain)
                    rows.setdefault(f"replay {size}", []).append(replay)
    print(f"ns per event, median [min-max] of {args.rounds} rounds, {2 * args.files:,} events")
    for name, runs in rows.items():
        cells = []
        for phase in PHASES:
            vals = sorted(r[phase] for r in runs if phase in r)
            if vals:
                cells.append(f"{phase} {statistics.median(vals):.0f} "
                             f"[{vals[0]:.0f}-{vals[-1]:.0f}]")
        print(f"{name:14s} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
