"""Soak: N events through one fd-mode group, every one received, fds and RSS checked.

    python bench/bench_soak.py                    # 1,000,000 events (root; a few minutes)
    python bench/bench_soak.py --events 100000 --json

A child process creates, closes and unlinks N files with distinct names on a
private tmpfs (one CLOSE_WRITE each; distinct files, so the kernel merges
none), while the group (UNLIMITED_QUEUE, so the kernel drops none) is read
with ``async for``.  At the end it reports:

* ``received`` and ``missing``: every index 0..N-1 must arrive exactly once;
* ``fds_after_close`` against ``fds_before``: the process's open fds;
* ``rss_kib``: VmRSS after 10% of the events (warmed up) and its peak from
  then on, sampled every 5%; ``rss_growth`` is peak / warm.

tests/test_soak.py runs the 100,000-event version and checks the same numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from afanotify import Event, Fanotify, InitFlag

_PRODUCER = """
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    p = f"{d}/f{i}"
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))
    os.unlink(p)
"""


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def soak(directory: Path, n: int) -> dict[str, Any]:
    seen = bytearray(n)
    dup = 0
    received = 0
    rss: list[int] = []
    step = max(1, n // 20)
    fds_before = _fds()
    t0 = time.monotonic()
    cpu0 = time.process_time()
    async with Fanotify(InitFlag.UNLIMITED_QUEUE) as fan:
        fan.mark(directory, Event.CLOSE_WRITE | Event.EVENT_ON_CHILD)
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PRODUCER, str(directory), str(n)
        )
        prefix = f"{directory}/f"
        async for ev in fan:
            path = ev.path or ""
            if path.startswith(prefix):
                i = int(path[len(prefix):])
                if seen[i]:
                    dup += 1
                seen[i] = 1
                received += 1
                if received % step == 0:
                    rss.append(_rss_kib())
                if received == n:
                    break
        await producer.wait()
        stats = fan.stats
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    warm = rss[1] if len(rss) > 1 else (rss[0] if rss else 0)
    peak = max(rss[1:] or rss or [0])
    return {
        "events": n,
        "received": received,
        "missing": n - sum(seen),
        "duplicates": dup,
        "lost": stats.lost,
        "overflows": stats.overflows,
        "fd_errors": stats.fd_errors,
        "fds_before": fds_before,
        "fds_after_close": _fds(),
        "rss_kib": {"warm": warm, "peak": peak},
        "rss_growth": round(peak / warm, 3) if warm else None,
        "seconds": round(elapsed, 2),
        "events_per_cpu_second": round(received / cpu) if cpu else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    args = ap.parse_args(argv)
    mnt = tempfile.mkdtemp(prefix="afanotify-soak-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "afanotify-soak", mnt], check=True)
    try:
        result = asyncio.run(soak(Path(mnt), args.events))
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    ok = (
        result["missing"] == 0 and result["duplicates"] == 0
        and result["fds_after_close"] == result["fds_before"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
