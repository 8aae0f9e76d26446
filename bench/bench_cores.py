#!/usr/bin/env python3
"""The pure-Python core against the compiled one, on real kernel events.

    sudo python bench/bench_cores.py [--reps 4] [--full]

Runs ``bench/run.py --quick --only fd_drain --only fid_drain`` (``--full``:
without ``--quick``) once per core and repetition, the two cores taking turns
(``AFANOTIFY_CORE=c`` / ``pure``, in alternating order).  Every run measures
its C reader too, so each core's figure is a ratio to a C reader of the same
run; the table gives, per scenario, each core's CPU-time ratio to C and the
pure core's rate as a fraction of the compiled core's (pure / c of adjacent
runs), as median (min-max) over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = ("fd_drain", "fid_drain")


def one_run(core: str, quick: bool) -> dict[str, dict[str, float]]:
    cmd = [sys.executable, str(HERE / "run.py"), *(["--quick"] if quick else [])]
    for s in SCENARIOS:
        cmd += ["--only", s]
    env = dict(os.environ, AFANOTIFY_CORE=core)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((HERE / "results" / "summary.json").read_text())
    return {s: summary["scenarios"][s] for s in SCENARIOS}


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="full-size runs (slower)")
    args = ap.parse_args(argv)
    cpu: dict[tuple[str, str], list[float]] = {}
    frac: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    frac_cpu: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    for rep in range(args.reps):
        order = ("c", "pure") if rep % 2 == 0 else ("pure", "c")
        got = {core: one_run(core, not args.full) for core in order}
        for s in SCENARIOS:
            for core in order:
                cpu.setdefault((s, core), []).append(got[core][s]["cpu_ratio_to_c"])
            frac[s].append(got["pure"][s]["events_per_s"] / got["c"][s]["events_per_s"])
            frac_cpu[s].append(got["pure"][s]["cpu_ratio_to_c"] / got["c"][s]["cpu_ratio_to_c"])
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    print(f"# {os.uname().release}, {os.cpu_count()} CPUs, {args.reps} reps, "
          f"{'full' if args.full else 'quick'} sizes; median (min-max)")
    print("| scenario | compiled core, CPU ratio to C | pure core, CPU ratio to C "
          "| pure / compiled, events/s | pure / compiled, CPU ratios |")
    print("|---|---|---|---|---|")
    for s in SCENARIOS:
        print(f"| {s} | {fmt(cpu[(s, 'c')])} | {fmt(cpu[(s, 'pure')])} | {fmt(frac[s])} "
              f"| {fmt(frac_cpu[s])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
