"""The FID drain with and without the read-ahead thread, against the C reader, interleaved.

Run as root from the repository root (after ``python build_ffi.py``)::

    python bench/bench_read_thread.py --rounds 6            # batches()
    python bench/bench_read_thread.py --rounds 5 --mode async

After an unrecorded warm-up round, each round runs, each in a fresh process
on a fresh tmpfs: the C reader (``bench/cbench.c drain-fid``), then the
consumer with the thread, then with ``AFANOTIFY_READ_THREAD=0``, each on
``--files`` CREATE+DELETE pairs queued before the drain (the ``fid_drain``
burst of bench/run.py; every path must come out resolved).  It prints each
run's wall time, the loop thread's and the read thread's CPU and run-queue
time (``/proc/self/task/TID/schedstat``: time runnable but waiting for a
CPU, which is what other work on the machine costs a drain), and the ratio
of each consumer to the C run of its round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import run as R  # noqa: E402


def _schedstat(tid: int) -> tuple[int, int]:
    try:
        text = Path(f"/proc/self/task/{tid}/schedstat").read_text()
        cpu, wait, _ = (int(x) for x in text.split())
    except OSError:
        return 0, 0
    return cpu, wait


def child(cbench: str, mnt: str, nfiles: int, mode: str) -> None:
    sys.path.insert(0, str(ROOT))
    from afanotify import Event, Fanotify, InitFlag

    n = 2 * nfiles

    async def main() -> dict[str, float]:
        with Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.UNLIMITED_QUEUE) as fan:
            fan.mark(mnt, Event.CREATE | Event.DELETE, kind="filesystem")
            subprocess.run([cbench, "create-unlink", f"{mnt}/d", str(nfiles)], check=True)
            got = resolved = 0
            me = threading.get_native_id()
            m0 = _schedstat(me)
            t0 = time.perf_counter()
            if mode == "batches":
                async with fan.batches() as batches:
                    async for batch in batches:
                        for ev in batch:
                            resolved += ev.path is not None and ev.path_resolved
                        got += len(batch)
                        if got >= n:
                            break
            else:
                async for ev in fan:
                    resolved += ev.path is not None and ev.path_resolved
                    got += 1
                    if got >= n:
                        ev.close()
                        break
            wall = time.perf_counter() - t0
            m1 = _schedstat(me)
            thread = getattr(fan._reader, "thread", None)
            t = _schedstat(thread.native_id) if thread is not None else (0, 0)
        if got != n or resolved != n:
            raise RuntimeError(f"drained {got} of {n} events, {resolved} resolved")
        return {"wall_ms": wall * 1e3, "loop_cpu_ms": (m1[0] - m0[0]) / 1e6,
                "loop_runq_ms": (m1[1] - m0[1]) / 1e6, "thread_cpu_ms": t[0] / 1e6,
                "thread_runq_ms": t[1] / 1e6}  # fmt: skip

    print(json.dumps(asyncio.run(main())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--mode", choices=("batches", "async"), default="batches")
    ap.add_argument("--child", nargs=3, metavar=("CBENCH", "MNT", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.files, args.child[2])
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ctx = R.Context(quick=False, cbench=R.build_cbench(Path(tmp)))
        ratios: dict[str, list[float]] = {"thread": [], "no thread": []}
        for rnd in range(-1, args.rounds):  # round 0: a warm-up, not recorded
            with ctx.mount() as mnt:
                c = R.c_drain(ctx, "drain-fid", mnt, "create-unlink", args.files, 2 * args.files)
            c_ms = 2 * args.files / c.wall * 1e3
            print(f"round {rnd + 1}{' (warm-up)' if rnd < 0 else ''}: C reader {c_ms:.1f} ms")
            for name, flag in (("thread", "1"), ("no thread", "0")):
                with ctx.mount() as mnt:
                    out = subprocess.run(
                        [sys.executable, __file__, "--files", str(args.files), "--child",
                         str(ctx.cbench), str(mnt), args.mode],
                        env={**os.environ, "AFANOTIFY_READ_THREAD": flag},
                        check=True, capture_output=True, text=True,
                    ).stdout  # fmt: skip
                r = json.loads(out)
                if rnd >= 0:
                    ratios[name].append(c_ms / r["wall_ms"])
                ratio = c_ms / r["wall_ms"]
                print(f"  {args.mode} {name:9} {r['wall_ms']:6.1f} ms  ratio {ratio:.3f}"
                      f"  loop cpu {r['loop_cpu_ms']:.0f} runq {r['loop_runq_ms']:.0f}"
                      f"  thread cpu {r['thread_cpu_ms']:.0f} runq {r['thread_runq_ms']:.0f}")
        for name, rs in ratios.items():
            print(f"{args.mode} {name}: ratio to C median {statistics.median(rs):.3f} "
                  f"({min(rs):.3f}-{max(rs):.3f}), {len(rs)} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
