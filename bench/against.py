"""``python bench/run.py --against REV``: this checkout against afanotify at ``REV``, interleaved.

REV's ``afanotify/`` is exported (``git archive``) into a temporary
directory and its core built there; the benchmark code is this checkout's
for both.  Each repetition runs every chosen scenario once on each library,
in a fresh process each (``run.py --only NAME --reps 1`` with
``AFANOTIFY_BENCH_LIB`` naming the library), alternating which goes first,
so drift on the shared machine falls on both alike.

The figures compared are the ones a scenario already normalises within its
own process (a drain's ratio to the C reader run just before it, on wall
clock and on CPU time; the latency percentiles; each permission setup's p50
as a ratio to the C responder), as new/old per repetition: median and
min-max over the repetitions, with each side's median.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

#: scenario -> the figures compared: (label, how to get it from the result, higher is better)
FIGURES: dict[str, list[tuple[str, str, bool]]] = {
    "fd_drain": [("ratio_to_c", "ratio_to_c", True), ("cpu_ratio_to_c", "cpu_ratio_to_c", True)],
    "fid_drain": [("ratio_to_c", "ratio_to_c", True), ("cpu_ratio_to_c", "cpu_ratio_to_c", True)],
    "fid_batches": [
        ("batches() ratio_to_c", "ratio_to_c", True),
        ("batches() cpu_ratio_to_c", "cpu_ratio_to_c", True),
        ("async for ratio_to_c", "async_for_ratio_to_c", True),
        ("async for cpu_ratio_to_c", "async_for_cpu_ratio_to_c", True),
    ],
    "fid_mixed": [
        ("async for ratio_to_c", "ratio_to_c", True),
        ("async for cpu_ratio_to_c", "cpu_ratio_to_c", True),
        ("batches() ratio_to_c", "batches_ratio_to_c", True),
        ("batches() cpu_ratio_to_c", "batches_cpu_ratio_to_c", True),
    ],
    "watch_tree": [
        ("ratio_to_prefix_check", "ratio_to_c", True),
        ("cpu_ratio_to_prefix_check", "cpu_ratio_to_c", True),
    ],
    "watch_tree_spread": [
        ("ratio_to_prefix_check", "ratio_to_c", True),
        ("cpu_ratio_to_prefix_check", "cpu_ratio_to_c", True),
    ],
    "watch_tree_live": [
        ("ratio_to_prefix_check", "ratio_to_c", True),
        ("cpu_ratio_to_prefix_check", "cpu_ratio_to_c", True),
    ],
    "latency": [("p50_ms", "p50_ms", False), ("p99_ms", "p99_ms", False)],
}


def _export(rev: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # our own repository's archive
    subprocess.run(
        [sys.executable, "build_ffi.py"], cwd=into, check=True, capture_output=True
    )
    # The measured library must be that tree's, not an installed one.
    where = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import afanotify, "
         "afanotify._fanotify as c; print(afanotify.__file__, c.__file__)", str(into)],
        capture_output=True, text=True, check=True, cwd=into,
    ).stdout.split()
    assert all(Path(w).is_relative_to(into) for w in where), where


def _permission_figures(result: dict[str, Any]) -> dict[str, float]:
    """Each setup's p50 ratio to the C responder, from bench_permission.py's table."""
    out: dict[str, float] = {}
    lines = result.get("output", [])
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("ratio to the C"))
    except StopIteration:
        return out
    for line in lines[start + 2 :]:
        head, _, _rest = line.partition("|")
        words = head.split()
        ratios = [w for w in words if w.endswith("x")]
        if len(ratios) < 2:
            continue
        name = " ".join(words[: len(words) - 2])
        out[f"{name} p50"] = float(ratios[0][:-1])
    return out


def _figures(name: str, result: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    if "error" in result or "skipped" in result:
        raise RuntimeError(f"{name}: {result.get('error') or result.get('skipped')}")
    if name == "permission":
        return {k: (v, False) for k, v in _permission_figures(result).items()}
    return {label: (float(result[key]), up) for label, key, up in FIGURES.get(name, [])}


def _one(name: str, lib: Path, quick: bool, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "run.py"), "--only", name, "--reps", "1", "--out", str(out)]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ, AFANOTIFY_BENCH_LIB=str(lib))
    subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=3600)
    result: dict[str, Any] = json.loads(out.read_text())["scenarios"][name]
    return result


_DRAIN = r"""
import asyncio, os, resource, subprocess, sys, tempfile
lib, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, lib)
from afanotify import Event, Fanotify, InitFlag
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
mnt = tempfile.mkdtemp()
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "afanotify-bench", mnt], check=True)
try:
    os.mkdir(f"{mnt}/d")
    fid = mode in ("fid", "fid_batches")
    async def main():
        flags = InitFlag.UNLIMITED_QUEUE | (InitFlag.REPORT_DFID_NAME if fid else 0)
        with Fanotify(flags) as fan:
            kind = "filesystem" if fid else "mount"
            fan.mark(mnt, Event.CREATE if fid else Event.CLOSE_WRITE, kind)
            make = ("import os\n"
                    f"for i in range({n}):\n"
                    f"    os.close(os.open('{mnt}/d/f%d' % i, os.O_CREAT | os.O_WRONLY))")
            subprocess.run([sys.executable, "-c", make], check=True)
            got = 0
            if mode == "fid_batches":
                async with fan.batches() as batches:
                    async for batch in batches:
                        for ev in batch:
                            ev.path
                        got += len(batch)
                        if got >= n:
                            break
                return
            async for ev in fan:
                ev.path
                got += 1
                if got >= n:
                    ev.close()
                    break
    asyncio.run(main())
finally:
    subprocess.run(["umount", "-l", mnt], check=False)
    os.rmdir(mnt)
"""


def _instructions(lib: Path, n: int, mode: str) -> int:
    """User-space instructions of one drain process (valgrind's callgrind; children not traced)."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-c", _DRAIN, str(lib), str(n), mode],
        capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONHASHSEED="0"),
    )  # fmt: skip
    return int(out.stderr.split("Collected : ")[1].split()[0])


def instructions(rev: str, sizes: tuple[int, int] = (10_000, 30_000)) -> int:
    """Instructions per event of the fd and FID drains, this checkout and REV.

    ``fd_drain`` and ``fid_drain`` read with ``async for``, ``fid_batches``
    the same FID burst with ``fan.batches()``.

    Each drain runs at two sizes; the difference divided by the difference
    in events is the per-event cost, without start-up and import.  Counted
    instructions do not depend on what else the machine runs.
    """
    with tempfile.TemporaryDirectory(prefix="afanotify-bench-against-") as tmp:
        libs = {"new": ROOT, "old": Path(tmp) / "old"}
        libs["old"].mkdir()
        _export(rev, libs["old"])
        print(f"instructions per event, this checkout (new) against {rev} (old), "
              f"from drains of {sizes[0]:,} and {sizes[1]:,} events")
        for mode in ("fd", "fid", "fid_batches"):
            per: dict[str, float] = {}
            for which in ("new", "old"):
                small, big = (_instructions(libs[which], n, mode) for n in sizes)
                per[which] = (big - small) / (sizes[1] - sizes[0])
            label = mode if mode == "fid_batches" else f"{mode}_drain"
            print(f"{label:12s} new {per['new']:,.0f}  old {per['old']:,.0f}"
                  f"  new/old {per['new'] / per['old']:.4f}")
    return 0


def compare(rev: str, names: list[str], reps: int, quick: bool) -> int:
    """Run ``names`` ``reps`` times on this checkout and on ``rev``; print new/old."""
    libs = {"new": ROOT}
    with tempfile.TemporaryDirectory(prefix="afanotify-bench-against-") as tmp:
        libs["old"] = Path(tmp) / "old"
        libs["old"].mkdir()
        _export(rev, libs["old"])
        seen: dict[str, dict[str, dict[str, list[float]]]] = {}
        better_up: dict[str, dict[str, bool]] = {}
        for rep in range(reps):
            order = ("new", "old") if rep % 2 == 0 else ("old", "new")
            for name in names:
                for which in order:
                    result = _one(name, libs[which], quick, Path(tmp) / f"{which}.json")
                    for label, (value, up) in _figures(name, result).items():
                        slot = seen.setdefault(name, {}).setdefault(label, {"new": [], "old": []})
                        slot[which].append(value)
                        better_up.setdefault(name, {})[label] = up
            print(f"rep {rep + 1}/{reps} done ({' then '.join(order)})", flush=True)
    print(f"\nthis checkout (new) against {rev} (old), {reps} interleaved reps"
          f"{' (--quick sizes)' if quick else ''}; new/old per rep: median [min-max]")
    for name, labels in seen.items():
        for label, sides in labels.items():
            new, old = sides["new"], sides["old"]
            ratios = sorted(n / o for n, o in zip(new, old, strict=True) if o)
            if not ratios:
                continue
            kind = "higher is better" if better_up[name][label] else "lower is better"
            print(
                f"{name:10s} {label:44s} new {statistics.median(new):9.3f}"
                f"  old {statistics.median(old):9.3f}"
                f"  new/old {statistics.median(ratios):.3f} [{ratios[0]:.3f}-{ratios[-1]:.3f}]"
                f"  ({kind})"
            )
    return 0
