"""``afanotify watch`` against fatrace and inotifywait on the same burst.

Run as root from the repository root (after ``python build_ffi.py``)::

    python bench/bench_cli.py                 # tmpfs, 5 reps
    python bench/bench_cli.py --fs ext4 --reps 3
    python bench/bench_cli.py --quick         # 50 x 100 files, 2 reps
    python bench/bench_cli.py --rate 1000 --seconds 6   # a steady writer instead
    python bench/bench_cli.py --tree 30 --dirs 300 --files 1   # directory-heavy

Also run by ``python bench/run.py`` (scenario ``cli``).

The burst, from one Python child: 200 directories x 100 files; each file is
created and written, then renamed, then deleted; then the directories are
removed (about 100,000 events). ``--tree K`` makes it directory-heavy: each
directory holds K subdirectories with the files in them, and each directory
is removed with ``shutil.rmtree`` (the order ``rm -r`` uses). Each watcher
runs alone against its own burst on a fresh private mount (tmpfs, or a
loop-mounted ext4 image), and the watchers take turns within each
repetition, so every ratio compares runs made seconds apart. A watcher has
caught up when the line for a sentinel file written after the burst is in
its output; then it is stopped with SIGINT and its CPU time and peak RSS
come from wait4(2).

Watchers: ``afanotify watch --filesystem --json --output FILE DIR`` (and the
same without ``--json``), ``fatrace -c -o FILE`` (run in DIR: its mount), and
``inotifywait -m -r -o FILE DIR``.  fatrace is installed from Debian's
``fatrace`` package when missing (inotifywait from ``inotify-tools``).

Figures: events captured by kind (creates, renames and deletes with their
full path, for afanotify; fatrace names only the directory for those), lines
per CPU-second of the watcher, peak RSS, and the ratios of afanotify's lines
per CPU-second to fatrace's, per repetition, as median and min-max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SENTINEL = "zz-bench-sentinel"

BURST = r"""
import os, shutil, sys, time
root, ndirs, nfiles = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
tree = int(sys.argv[6]) if len(sys.argv) > 6 else 0
tops = [os.path.join(root, f"d{i:03d}") for i in range(ndirs)]
# With ``tree``, each top directory holds ``tree`` subdirectories and the
# files are in those: a directory-heavy load, removed as ``rm -r`` does.
dirs = [os.path.join(t, f"s{k:02d}") for t in tops for k in range(tree)] if tree else tops
names = [(f"f{j:03d}", f"g{j:03d}") for j in range(nfiles)]
for t in tops:
    os.mkdir(t)
    for k in range(tree):
        os.mkdir(os.path.join(t, f"s{k:02d}"))
if rate:
    # A steady writer: each file created and written, renamed and deleted at
    # once, ``rate`` files a second (never ahead of time; behind it, at once).
    t0, k = time.monotonic(), 0
    for d in dirs:
        for f, g in names:
            with open(os.path.join(d, f), "w") as out:
                out.write("x")
            os.rename(os.path.join(d, f), os.path.join(d, g))
            os.unlink(os.path.join(d, g))
            k += 1
            wait = t0 + k / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
else:
    for d in dirs:
        for f, _ in names:
            with open(os.path.join(d, f), "w") as out:
                out.write("x")
    for d in dirs:
        for f, g in names:
            os.rename(os.path.join(d, f), os.path.join(d, g))
    if not tree:
        for d in dirs:
            for _, g in names:
                os.unlink(os.path.join(d, g))
if tree:
    for t in tops:
        shutil.rmtree(t)
else:
    for d in dirs:
        os.rmdir(d)
with open(os.path.join(root, sys.argv[4]), "w") as f:
    f.write("end")
"""


def ensure_tools() -> None:
    """Install fatrace and inotifywait from Debian when they are missing."""
    missing = [pkg for tool, pkg in (("fatrace", "fatrace"), ("inotifywait", "inotify-tools"))
               if shutil.which(tool) is None]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                       capture_output=True, check=False)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                       capture_output=True, check=True)


@contextlib.contextmanager
def mount(fs: str) -> Iterator[Path]:
    """A private tmpfs or loop-mounted ext4, unmounted afterwards."""
    work = Path(tempfile.mkdtemp(prefix="afanotify-bench-cli-"))
    mnt = work / "mnt"
    mnt.mkdir()
    try:
        if fs == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "afanotify-bench", str(mnt)],
                           check=True)
        else:
            img = work / "fs.img"
            with open(img, "wb") as f:
                f.truncate(512 << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
            subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
        try:
            (mnt / "w").mkdir()
            yield mnt / "w"
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: A checkout to compare with (``--baseline``): its afanotify runs as ``base-json``
#: and ``base-text``, taking turns with this checkout's.
BASELINE: Path | None = None
#: ``--contend N``: the watcher shares CPU 0 with N busy loops, the burst runs
#: on CPU 1 (a loaded machine: the watcher gets a share of a core while the
#: writer has a whole one).
CONTEND = 0
HOG = "while True: pass"


@contextlib.contextmanager
def _bytecode() -> Iterator[None]:
    """Every checkout the watchers import, with its modules compiled, for the runs.

    With PYTHONDONTWRITEBYTECODE set, a checkout without ``__pycache__``
    compiles every module again in each run: about 70 ms of CPU per run that
    the other side may not pay.  This checkout is compiled in place; a
    ``--baseline`` (often read-only) is copied to a temporary directory and
    compiled there.
    """
    global BASELINE
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "afanotify")],
                   check=True)
    base = BASELINE
    if base is None:
        yield
        return
    tmp = Path(tempfile.mkdtemp(prefix="afanotify-bench-base-"))
    try:
        shutil.copytree(base / "afanotify", tmp / "afanotify",
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp / "afanotify")],
                       check=True)
        BASELINE = tmp
        yield
    finally:
        BASELINE = base
        shutil.rmtree(tmp, ignore_errors=True)


def _root(tool: str) -> Path:
    if tool.startswith("base-"):
        assert BASELINE is not None
        return BASELINE
    return ROOT


def _watcher(tool: str, d: Path, out: Path) -> tuple[list[str], str | None]:
    """The command line and working directory of one watcher."""
    if tool.startswith("base-"):
        tool = "afanotify-" + tool[len("base-"):]
    # The afanotify watchers run from "/": ``python -m`` puts its working
    # directory first on sys.path, so run from a checkout it would import that
    # checkout instead of the one PYTHONPATH names (--baseline measured the
    # same code twice that way).
    if tool == "afanotify-json":
        return [sys.executable, "-m", "afanotify", "watch", "--filesystem", "--json",
                "--output", str(out), str(d)], "/"
    if tool == "afanotify-text":
        return [sys.executable, "-m", "afanotify", "watch", "--filesystem",
                "--output", str(out), str(d)], "/"
    if tool == "fatrace":
        return ["fatrace", "-c", "-o", str(out)], str(d)
    if tool == "inotifywait":
        return ["inotifywait", "-m", "-r", "-q", "-o", str(out), str(d)], None
    raise ValueError(tool)


def _ready(tool: str, proc: subprocess.Popen[bytes], d: Path, deadline: float) -> None:
    """Wait until the watcher's marks are in place."""
    if tool.startswith(("afanotify", "base-")):
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if b"watching" not in line:
            raise RuntimeError(f"{tool} did not start: {line!r}")
        return
    # fatrace and inotifywait say nothing when ready: write a probe file until it shows.
    probe = d / "zz-probe"
    out = _out_path(d)
    while time.monotonic() < deadline:
        probe.write_text("p")
        if out.exists() and "zz-probe" in out.read_text(errors="replace"):
            probe.unlink()
            return
        time.sleep(0.05)
    raise RuntimeError(f"{tool} did not start")


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _out_path(d: Path) -> Path:
    return d.parent.parent / "out.log"


#: The naming scenarios: short-lived processes, each run in the background and
#: waited for, so that the script can write its pid and expected name to a log
#: outside the mount (``$3``); only those pids are counted, for every watcher
#: (fatrace's lines name the directory for a create, so the sentinel's touch
#: could not be told apart by its path).
NAMING = {
    # touch, mv, rm every 0.2 s
    "tmv": r"""
i=0
while [ $i -lt "$1" ]; do
  touch "f$i" & p=$!; wait $p; echo "$p touch" >> "$3"
  mv "f$i" "g$i" & p=$!; wait $p; echo "$p mv" >> "$3"
  rm "g$i" & p=$!; wait $p; echo "$p rm" >> "$3"
  sleep 0.2; i=$((i + 1))
done
touch "$2"
""",
    # a tight loop of sh -c 'echo > f': three per round, no pause
    "echo": r"""
i=0
while [ $i -lt "$1" ]; do
  for k in a b c; do
    sh -c "echo x > $k$i" & p=$!; wait $p; echo "$p sh" >> "$3"
  done
  i=$((i + 1))
done
touch "$2"
""",
    # processes that exit right after their write, several alive at once
    "exit": r"""
i=0
while [ $i -lt "$1" ]; do
  dd if=/dev/zero of="a$i" bs=1 count=1 status=none & p1=$!
  cp /dev/null "b$i" & p2=$!
  ln -s x "c$i" & p3=$!
  wait $p1 $p2 $p3
  printf '%s dd\n%s cp\n%s ln\n' $p1 $p2 $p3 >> "$3"
  sleep 0.05; i=$((i + 1))
done
touch "$2"
""",
}
#: ``--rate``: files a second of a steady writer instead of the burst (0: the burst).
RATE = 0.0
#: ``--tree``: subdirectories per directory of the burst, holding its files (0: none).
TREE = 0
#: ``--pattern``: which of :data:`NAMING` the naming runs use.
PATTERN = "tmv"


def _set_pattern(name: str) -> None:
    global PATTERN
    PATTERN = name


def run_one(tool: str, fs: str, ndirs: int, nfiles: int,
            rounds: int | None = None) -> dict[str, Any]:
    """One watcher against one burst: lines, CPU seconds, peak RSS, what it caught.

    With ``rounds``, the load is the :data:`NAMING` script of :data:`PATTERN`
    instead (``rounds`` x 3 short-lived processes), and what counts is how
    many of those processes are named.
    """
    env = dict(os.environ, PYTHONPATH=str(_root(tool)))
    pin = _pinned(0) if CONTEND else None
    with mount(fs) as d, _hog():
        out = _out_path(d)
        pidlog = d.parent.parent / "pids.log"
        cmd, cwd = _watcher(tool, d, out)
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=pin)
        try:
            _ready(tool, proc, d, time.monotonic() + 20)
            start = out.stat().st_size if out.exists() else 0
            t0 = time.monotonic()
            if rounds is None:
                subprocess.run([sys.executable, "-c", BURST, str(d), str(ndirs), str(nfiles),
                                SENTINEL, str(RATE), str(TREE)], check=True, cwd="/",
                               preexec_fn=_pinned(1) if CONTEND else None)
            else:
                pidlog.write_text("")
                subprocess.run(["sh", "-c", NAMING[PATTERN], "sh", str(rounds), SENTINEL,
                                str(pidlog)], check=True, cwd=str(d))
            burst_s = time.monotonic() - t0
            deadline = time.monotonic() + 60
            pos = start
            extra = 0
            next_probe = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if time.monotonic() > next_probe:
                    # The kernel may have dropped the sentinel's events in an
                    # overflow: write another until one gets through.
                    extra += 1
                    (d / f"{SENTINEL}-{extra}").write_text("end")
                    next_probe = time.monotonic() + 1.0
                with open(out, "rb") as f:
                    f.seek(max(start, pos - 200))
                    chunk = f.read()
                    pos = f.tell()
                if SENTINEL.encode() in chunk:
                    break
                time.sleep(0.05)
            else:
                proc.send_signal(signal.SIGINT)
                proc.wait()
                assert proc.stderr is not None
                raise RuntimeError(f"{tool}: the sentinel never showed: "
                                   f"{proc.stderr.read().decode(errors='replace')[-400:]}")
            # ru_maxrss of wait4 counts the image before exec (this script):
            # the peak is read from the watcher's own VmHWM instead.
            peak_kb = _vm_hwm(proc.pid)
            proc.send_signal(signal.SIGINT)
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        summary = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        data = out.read_bytes()[start:]
        expected = {} if rounds is None else _expected_pids(pidlog)
    cpu = ru.ru_utime + ru.ru_stime
    lines = data.count(b"\n")
    caught = _caught(tool, data, str(d)) if rounds is None else _named(tool, data, expected)
    return {"tool": tool, "lines": lines, "cpu_s": round(cpu, 3),
            "lines_per_cpu_s": round(lines / cpu) if cpu else None,
            "peak_rss_kb": peak_kb, "burst_s": round(burst_s, 2),
            "summary": summary[0] if summary else "", **caught}


def _pinned(cpu: int) -> Any:
    return lambda: os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def _hog() -> Iterator[None]:
    """With ``--contend N``, N busy loops on CPU 0 for the length of one run."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG], preexec_fn=_pinned(0))
            for _ in range(CONTEND)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _caught(tool: str, data: bytes, d: str) -> dict[str, int]:
    """Creates, renames and deletes of the burst's files, by what the output shows."""
    c = {"creates": 0, "renames": 0, "deletes": 0, "overflows": 0}
    text = data.decode("utf-8", "replace")
    if tool in ("afanotify-json", "base-json"):
        for line in text.splitlines():
            r = json.loads(line)
            if r["event"]["kind"] == "pipeline_error":
                c["overflows"] += 1
                continue
            acts = r["event"]["action"]
            path = r["file"]["path"] or ""
            full = r["fanotify"]["path_resolved"] and path.startswith(d + "/d")
            if "rename" in acts:
                old = r["fanotify"]["old_path"] or ""
                if full and "/f" in old and "/g" in path:
                    c["renames"] += 1
            elif "create" in acts and full and "/f" in path:
                c["creates"] += 1
            elif "delete" in acts and full and "/g" in path:
                c["deletes"] += 1
    elif tool in ("afanotify-text", "base-text"):
        for line in text.splitlines():
            fields = line.split()
            if "Q_OVERFLOW" in line:
                c["overflows"] += 1
            elif len(fields) >= 5:
                ev, where = fields[3], fields[4:]
                if ev == "RENAME" and len(where) == 3 and "/g" in where[2]:
                    c["renames"] += 1
                elif ev == "CREATE" and where[0].startswith(d + "/d") and "/f" in where[0]:
                    c["creates"] += 1
                elif ev == "DELETE" and where[0].startswith(d + "/d") and "/g" in where[0]:
                    c["deletes"] += 1
    elif tool == "fatrace":
        # fatrace names the directory for these: "+" create, "D" delete, "<"/">" moves.
        for line in text.splitlines():
            kinds = line.split(": ", 1)[1].split(" ", 1)[0] if ": " in line else ""
            c["creates"] += "+" in kinds
            c["deletes"] += "D" in kinds
            c["renames"] += ">" in kinds
    elif tool == "inotifywait":
        for line in text.splitlines():
            parts = line.split(" ")
            if len(parts) < 3:
                continue
            ev, name = parts[1], parts[2]
            if ev == "CREATE" and name.startswith("f"):
                c["creates"] += 1
            elif ev == "MOVED_TO" and name.startswith("g"):
                c["renames"] += 1
            elif ev == "DELETE" and name.startswith("g"):
                c["deletes"] += 1
            elif ev == "Q_OVERFLOW" or "overflow" in line.lower():
                c["overflows"] += 1
    return c


def _expected_pids(pidlog: Path) -> dict[int, str]:
    """``pid -> name`` of the processes a naming script ran (its log)."""
    out = {}
    for line in pidlog.read_text().splitlines():
        pid, name = line.split()
        out[int(pid)] = name
    return out


def _named(tool: str, data: bytes, expected: dict[int, str]) -> dict[str, int]:
    """Of the naming script's processes, how many a watcher saw, named, and misnamed.

    The same processes are counted for every watcher: the pids the script
    logged (not the sentinel's touch, nor a probe).  A process is named if a
    line of its pid carries its name, and misnamed if a line of its pid
    carries another name (a reused pid taken for it would).
    """
    seen: set[int] = set()
    named: set[int] = set()
    wrong: set[int] = set()
    text = data.decode("utf-8", "replace")
    for line in text.splitlines():
        pid: int | None = None
        name: str | None = None
        if tool.endswith("-json"):
            r = json.loads(line)
            pid, name = r["process"]["pid"], r["process"]["name"]
        elif tool.endswith("-text"):
            fields = line.split()
            if len(fields) > 3 and fields[1].isdigit():
                pid, name = int(fields[1]), fields[2]
                name = None if name == "?" else name
        elif tool == "fatrace" and "(" in line and "): " in line:
            comm, rest = line.split("(", 1)
            # fatrace writes "unknown" when /proc/PID/comm could not be read
            pid, name = int(rest.split(")", 1)[0]), None if comm == "unknown" else comm
        if pid is None or pid not in expected:
            continue
        seen.add(pid)
        if name == expected[pid]:
            named.add(pid)
        elif name is not None:
            wrong.add(pid)
    return {"processes": len(expected), "seen": len(seen), "named": len(named),
            "misnamed": len(wrong)}


TOOLS = ("afanotify-json", "afanotify-text", "fatrace", "inotifywait")
BASE_TOOLS = ("base-json", "base-text")


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def measure(fs: str, reps: int, ndirs: int, nfiles: int,
            tools: tuple[str, ...] = TOOLS) -> dict[str, Any]:
    ensure_tools()
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    with _bytecode():
        for rep in range(reps):
            order = tools if rep % 2 == 0 else tuple(reversed(tools))
            for tool in order:
                runs[tool].append(run_one(tool, fs, ndirs, nfiles))
    files = ndirs * nfiles * (TREE or 1)
    ratios: dict[str, dict[str, float]] = {}
    for tool in [t for t in tools if t != "fatrace"]:
        per = [a["lines_per_cpu_s"] / f["lines_per_cpu_s"]
               for a, f in zip(runs[tool], runs["fatrace"], strict=True)]
        ratios[f"{tool}_lines_per_cpu_s_over_fatrace"] = _spread(per)
        rss = [a["peak_rss_kb"] / f["peak_rss_kb"]
               for a, f in zip(runs[tool], runs["fatrace"], strict=True)]
        ratios[f"{tool}_peak_rss_over_fatrace"] = _spread(rss)
    for mine, base in (("afanotify-json", "base-json"), ("afanotify-text", "base-text")):
        if mine in runs and base in runs:
            per = [a["lines_per_cpu_s"] / b["lines_per_cpu_s"]
                   for a, b in zip(runs[mine], runs[base], strict=True)]
            ratios[f"{mine}_lines_per_cpu_s_over_{base}"] = _spread(per)
    table = []
    for tool in tools:
        rs = runs[tool]
        row = {"tool": tool}
        for key in ("creates", "renames", "deletes", "overflows", "lines", "cpu_s",
                    "lines_per_cpu_s", "peak_rss_kb"):
            row[key] = _spread([float(r[key]) for r in rs])
        table.append(row)
    return {"fs": fs, "reps": reps, "files": files, "table": table, "ratios": ratios,
            "runs": runs}


NAMING_TOOLS = ("afanotify-json", "afanotify-text", "fatrace")


def measure_naming(fs: str, reps: int, rounds: int,
                   tools: tuple[str, ...] = NAMING_TOOLS) -> dict[str, Any]:
    """How many short-lived processes each watcher names, watchers taking turns."""
    ensure_tools()
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    with _bytecode():
        for rep in range(reps):
            for tool in tools if rep % 2 == 0 else tuple(reversed(tools)):
                runs[tool].append(run_one(tool, fs, 0, 0, rounds=rounds))
    table = [{"tool": t, **{k: _spread([float(r[k]) for r in runs[t]])
                            for k in ("processes", "named", "seen", "misnamed")}}
             for t in tools]
    return {"fs": fs, "reps": reps, "pattern": PATTERN, "processes": 3 * rounds,
            "table": table, "runs": runs}


def render_naming(res: dict[str, Any]) -> str:
    n = res["processes"]
    out = [f"short-lived processes on {res['fs']}: pattern {res['pattern']!r}, {n} processes "
           f"(the script's own pids, the same for every watcher), {res['reps']} reps; "
           "processes named, seen, misnamed: median (min-max)"]

    def f(s: dict[str, float]) -> str:
        return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"

    for row in res["table"]:
        out.append(f"  {row['tool']:15s} named {f(row['named'])}/{n}   seen {f(row['seen'])}"
                   f"   misnamed {f(row['misnamed'])}")
    return "\n".join(out)


def render(res: dict[str, Any]) -> str:
    files = res["files"]
    load = f"{RATE:g} files/s" if RATE else "burst"
    if TREE:
        load += f" in {TREE} subdirectories per directory, removed with rmtree"
    out = [f"{load} on {res['fs']}: {files:,} files (create+write, rename, delete), "
           f"{res['reps']} reps; median (min-max)"]
    out.append(f"{'tool':15s} {'creates':>22s} {'renames':>22s} {'deletes':>22s} "
               f"{'overflows':>10s} {'lines/CPU-s':>24s} {'peak RSS kB':>22s}")

    def f(s: dict[str, float], pct: bool = False) -> str:
        if pct:
            return (f"{s['median'] / files:.1%} ({s['min'] / files:.1%}-"
                    f"{s['max'] / files:.1%})")
        return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"

    for row in res["table"]:
        out.append(f"{row['tool']:15s} {f(row['creates'], True):>22s} "
                   f"{f(row['renames'], True):>22s} {f(row['deletes'], True):>22s} "
                   f"{row['overflows']['median']:>10.0f} {f(row['lines_per_cpu_s']):>24s} "
                   f"{f(row['peak_rss_kb']):>22s}")
    out.append("ratios to fatrace, per rep: median (min-max)")
    for key, s in res["ratios"].items():
        out.append(f"  {key:45s} {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})")
    out.append("(fatrace names only the directory of a create, rename or delete: its "
               "counts are of lines of that kind, not of full paths)")
    return "\n".join(out)


def run(ctx: Any) -> dict[str, Any]:
    """The ``cli`` scenario of bench/run.py."""
    quick = bool(getattr(ctx, "quick", False))
    reps = int(getattr(ctx, "reps", 0) or (2 if quick else 3))
    res = measure("tmpfs", reps, 50 if quick else 200, 100)
    naming = measure_naming("tmpfs", reps, 5 if quick else 20)
    res["naming"] = naming
    res["figure"] = "\n" + render(res) + "\n" + render_naming(naming)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fs", choices=("tmpfs", "ext4"), default="tmpfs")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dirs", type=int, default=200)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--naming", type=int, metavar="ROUNDS",
                   help="instead of the burst: ROUNDS x 3 short-lived processes (--pattern), "
                   "and how many of those processes each watcher names")
    p.add_argument("--pattern", choices=sorted(NAMING), default=PATTERN,
                   help="with --naming: tmv (touch, mv, rm every 0.2 s), echo (a tight loop "
                   "of sh -c 'echo x > f'), exit (dd, cp, ln at once, exiting right after "
                   "their write)")
    p.add_argument("--rate", type=float, default=0.0, metavar="FILES_PER_S",
                   help="instead of the burst: a steady writer, one file created and written, "
                   "renamed and deleted at once, this many a second (--dirs x --files files; "
                   "with --rate, --seconds S sets --dirs 1 --files RATE x S)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="with --rate: how long the writer runs")
    p.add_argument("--tree", type=int, default=0, metavar="K",
                   help="a directory-heavy burst: each of --dirs directories holds K "
                   "subdirectories, each with --files files (created and written, renamed); "
                   "then each directory is removed with shutil.rmtree, as rm -r does")
    p.add_argument("--contend", type=int, default=0, metavar="N",
                   help="a loaded machine: each watcher shares CPU 0 with N busy loops while "
                   "the burst runs on CPU 1")
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                   help="also run the afanotify of this checkout (with its core built), "
                   "as base-json and base-text, for before/after ratios from one session")
    p.add_argument("--tool", action="append", choices=TOOLS + BASE_TOOLS,
                   help="only these watchers (fatrace is always run: the ratios need it)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_cli.py needs root (fanotify, mounts)", file=sys.stderr)
        return 2
    if args.quick:
        args.reps, args.dirs = 2, 50
    if args.tree:
        global TREE
        TREE = args.tree
    if args.rate:
        global RATE
        RATE = args.rate
        if args.seconds:
            args.dirs, args.files = 1, max(1, round(args.rate * args.seconds))
    every = TOOLS + (BASE_TOOLS if args.baseline else ())
    tools = every if not args.tool else tuple(t for t in every if t in args.tool or
                                              t == "fatrace")
    if args.contend:
        if len(os.sched_getaffinity(0)) < 2:
            print("--contend needs two CPUs", file=sys.stderr)
            return 2
        global CONTEND
        CONTEND = args.contend
    if args.baseline:
        global BASELINE
        BASELINE = args.baseline.resolve()
    if args.naming:
        _set_pattern(args.pattern)
        res = measure_naming(args.fs, args.reps, args.naming,
                             tuple(t for t in tools if t in NAMING_TOOLS + BASE_TOOLS))
        print(render_naming(res))
    else:
        res = measure(args.fs, args.reps, args.dirs, args.files, tools)
        print(render(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
