"""Lines per CPU-second of ``afanotify watch``'s formatters: C against Python.

    python build_ffi.py >/dev/null && python bench/bench_format.py --reps 5

Each batch is what the watch formats after one read of the burst in
bench/bench_cli.py: ``--batch`` events (default 400) of creates, writes,
close_writes, renames (one line, old and new path) and deletes in FID mode,
with full paths under 200 directories, a few processes (one of them with no
details, as a gone one), and now and then an unresolved path.  Rows: the
JSON lines, the text format, and a ``--format`` template, each by the C
formatter (``BatchFormatter``) and by the Python one (``use_c=False``: the
functions of ``_cli_output`` the watch used before, joined and encoded as the
sink did).  Both write the same bytes, checked on every batch before timing.

Reps are interleaved (C, Python, C, Python, ... per row), each timed in
process CPU time with the garbage collector off; printed: median and
min-max of lines per CPU-second, and the median of the per-rep ratios.
``--orjson`` adds a row that builds each line's dict and serialises it with
orjson (when it is installed), to show what that library would cost and
whether its bytes are the same.

``--watch CHECKOUT`` (root) measures the whole command instead, before and
after: bench/bench_cli.py's burst against ``afanotify watch --filesystem
[--json] --unlimited-queue`` of this checkout and of CHECKOUT (its core built
in place), and fatrace, in one session.  With the unlimited queue nothing is
lost, so both write the same lines and their CPU seconds (wait4) compare
directly; the two take turns in alternating order (ABBA) so that neither
always runs first.  Each watcher runs with ``/`` as its working directory,
so that ``python -m afanotify`` imports the checkout on its PYTHONPATH.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from afanotify._cli_output import (
    ECS_VERSION,
    BatchFormatter,
    Template,
    _mask_names,
    clean,
    json_stamp,
)
from afanotify.events import FanotifyData
from afanotify.flags import Event

NOW = time.time()


def batches(count: int, size: int, seed: int = 12) -> list[tuple[list[FanotifyData], dict]]:
    rnd = random.Random(seed)
    out = []
    pids = [4101, 4102, 4103, 4104]
    procs = {
        4101: ("touch", "/usr/bin/touch", "/tmp/burst"),
        4102: ("mv", "/usr/bin/mv", "/tmp/burst"),
        4103: ("python3", "/usr/bin/python3.11", "/root"),
        4104: (None, None, None),
    }
    root = "/tmp/afanotify-bench-burst"
    for _ in range(count):
        evs = []
        for _ in range(size):
            d = f"{root}/d{rnd.randrange(200):03d}"
            n = f"f{rnd.randrange(100):03d}"
            kind = rnd.randrange(5)
            pid = rnd.choice(pids)
            if kind == 3:
                evs.append(FanotifyData(
                    pid=pid, ev_types=int(Event.RENAME), path=f"{d}/{n}.moved",
                    old_path=f"{d}/{n}", new_path=f"{d}/{n}.moved", path_resolved=True,
                ))
                continue
            mask = (Event.CREATE, Event.MODIFY, Event.CLOSE_WRITE, 0, Event.DELETE)[kind]
            resolved = rnd.random() < 0.97
            evs.append(FanotifyData(
                pid=pid, ev_types=int(mask), path=f"{d}/{n}" if resolved else None,
                dir_path=d if resolved else None, name=n, path_resolved=resolved,
            ))
        out.append((evs, procs))
    return out


def orjson_formatter() -> Callable[[list[FanotifyData], dict, float], bytes] | None:
    """Each line as a dict, serialised by orjson: the nested-dict way."""
    try:
        import orjson  # type: ignore[import-not-found]
    except ImportError:
        return None

    def fmt(events: list[FanotifyData], procs: dict, now: float) -> bytes:
        stamp = json_stamp(now)
        out = []
        for ev in events:
            mask = ev.ev_types
            names = _mask_names(mask)
            name, exe, cwd = procs.get(ev.pid, (None, None, None))
            path, directory, fname = ev.path, ev.dir_path, ev.name
            if path is not None and ev.path_resolved:
                directory = directory or os.path.dirname(path) or None
                fname = fname or os.path.basename(path) or None
            c = [clean(x) if x is not None else None
                 for x in (path, directory, fname, name, exe, cwd, ev.old_path, ev.new_path)]
            out.append(orjson.dumps({
                "@timestamp": stamp, "ecs": {"version": ECS_VERSION},
                "event": {"kind": "event", "category": ["file"], "type": list(names.ecs_types),
                          "action": list(names.actions), "module": "fanotify"},
                "file": {"path": c[0], "directory": c[1], "name": c[2],
                         "type": "dir" if mask & Event.ONDIR else "file"},
                "process": {"pid": ev.pid if ev.pid > 0 else None, "name": c[3],
                            "executable": c[4], "working_directory": c[5]},
                "fanotify": {"mask": mask, "events": list(names.events),
                             "path_resolved": ev.path_resolved, "old_path": c[6],
                             "new_path": c[7]},
            }))
        out.append(b"")
        return b"\n".join(out)

    return fmt


def cpu_rate(fn: Callable[[list[FanotifyData], dict, float], bytes], work: list) -> float:
    lines = 0
    gc.disable()
    try:
        t0 = time.process_time()
        for evs, procs in work:
            fn(evs, procs, NOW)
            lines += len(evs)
        t = time.process_time() - t0
    finally:
        gc.enable()
    return lines / t


def watch_ab(baseline: Path, fs: str, reps: int) -> None:
    """The whole watcher, this checkout against ``baseline``, lossless (see the docstring)."""
    import bench_cli as b

    b.BASELINE = baseline.resolve()
    plain = b._watcher

    def lossless(tool: str, d: Path, out: Path) -> tuple[list[str], str | None]:
        cmd, cwd = plain(tool, d, out)
        if tool.startswith(("afanotify-", "base-")):
            return [*cmd[:-1], "--unlimited-queue", cmd[-1]], "/"
        return cmd, cwd

    b._watcher = lossless
    b.ensure_tools()
    res: dict[str, list[dict]] = {}
    for rep in range(reps):
        for kind in ("json", "text"):
            pair = [f"afanotify-{kind}", f"base-{kind}"]
            if rep % 2:
                pair.reverse()
            for tool in pair:
                res.setdefault(tool, []).append(b.run_one(tool, fs, 200, 100))
        res.setdefault("fatrace", []).append(b.run_one("fatrace", fs, 200, 100))
    print(f"whole watcher on {fs}, lossless (--unlimited-queue), {reps} reps: median (min-max)")
    for tool, runs in res.items():
        lines = [r["lines"] for r in runs]
        cpu = [r["cpu_s"] for r in runs]
        rate = [r["lines_per_cpu_s"] for r in runs]
        print(f"  {tool:<15} lines {statistics.median(lines):>8,.0f}"
              f" ({min(lines):,}-{max(lines):,})"
              f"  CPU s {statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f})"
              f"  lines/CPU-s {statistics.median(rate):>8,.0f} ({min(rate):,}-{max(rate):,})"
              f"  {runs[-1]['summary'][-40:]!r}")
    for kind in ("json", "text"):
        new, old = res[f"afanotify-{kind}"], res[f"base-{kind}"]
        fat = res["fatrace"]
        key = "lines_per_cpu_s"
        r_base = [n[key] / o[key] for n, o in zip(new, old, strict=True)]
        r_fat = [n[key] / f[key] for n, f in zip(new, fat, strict=True)]
        r_bfat = [o[key] / f[key] for o, f in zip(old, fat, strict=True)]
        for name, r in ((f"{kind} after/before", r_base), (f"{kind} after/fatrace", r_fat),
                        (f"{kind} before/fatrace", r_bfat)):
            print(f"  {name:<22} {statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--batch", type=int, default=400, help="events per batch")
    ap.add_argument("--orjson", action="store_true", help="add the dict + orjson row")
    ap.add_argument("--watch", type=Path, metavar="CHECKOUT",
                    help="the whole command, lossless, against CHECKOUT's (root)")
    ap.add_argument("--fs", choices=("tmpfs", "ext4"), default="tmpfs")
    args = ap.parse_args()
    if args.watch is not None:
        watch_ab(args.watch, args.fs, args.reps)
        return
    work = batches(args.batches, args.batch)
    forms: list[tuple[str, dict]] = [
        ("json", {"json": True}),
        ("text", {}),
        ("template", {"template": Template("{time} {pid:>7} {comm} {events} {path}")}),
    ]
    rows: list[tuple[str, Callable, Callable]] = []
    for name, kw in forms:
        c, py = BatchFormatter(**kw), BatchFormatter(**kw, use_c=False)
        if not c.in_c:
            sys.exit("the C formatter is not in use: build the core (python build_ffi.py)")
        for evs, procs in work:
            assert c.format(evs, procs, NOW) == py.format(evs, procs, NOW), name
        rows.append((name, c.format, py.format))
    if args.orjson:
        oj = orjson_formatter()
        if oj is None:
            print("orjson is not installed: its row is left out")
        else:
            same = all(oj(e, p, NOW) == rows[0][2](e, p, NOW) for e, p in work)
            print(f"orjson's bytes are {'the same' if same else 'NOT the same'} as the JSON lines")
            rows.append(("json-orjson", oj, rows[0][2]))
    rates: dict[str, tuple[list[float], list[float]]] = {r[0]: ([], []) for r in rows}
    for _ in range(args.reps):
        for name, c_fn, py_fn in rows:
            rates[name][0].append(cpu_rate(c_fn, work))
            rates[name][1].append(cpu_rate(py_fn, work))
    n = args.batches * args.batch
    print(f"{args.reps} reps, {args.batches} batches x {args.batch} events ({n} lines) per rep")
    print(f"{'row':<12} {'C lines/CPU-s (median, min-max)':>36} {'Python':>30} {'ratio':>16}")
    for name, (cs, ps) in rates.items():
        ratios = [c / p for c, p in zip(cs, ps, strict=True)]
        print(
            f"{name:<12} {statistics.median(cs):>12,.0f} ({min(cs):,.0f}-{max(cs):,.0f})"
            f" {statistics.median(ps):>12,.0f} ({min(ps):,.0f}-{max(ps):,.0f})"
            f" {statistics.median(ratios):>6.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    if "json-orjson" in rates:
        print("(json-orjson: orjson's column is 'C', the Python JSON formatter's is 'Python')")


if __name__ == "__main__":
    main()
