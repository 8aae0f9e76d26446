"""How much latency a permission check adds to open(2), against a C floor.

    sudo PYTHONPATH=. python bench/bench_permission.py [--opens 20000] [--rounds 3]
        [--only SUBSTRING ...] [--cpus same|split|free] [--cpu N]

A child process (bench/perm_responder.c, built with gcc into a temporary
directory at run time) opens one file on a private tmpfs N times and times
each open(2).  The file is watched for FAN_OPEN_PERM by, in turn:

* nobody (the baseline cost of open(2));
* the same C program in responder mode: read, write FAN_ALLOW, close (the floor);
* the C responder again, reading for each event the file's path, the
  process's executable and its uid (what the guard's path+exe+uid rules
  read) before it allows: the floor for that row, shown in a closing table;
* afanotify, in this process, in several styles (``async for`` + allow_nowait,
  a plain ``on_permission`` handler on the loop and on the group's thread
  (``thread=True``), an async one);
* ``afanotify guard --rules FILE`` as a separate process, its static rules
  decided in C: two path rules; and a path, an executable and a uid rule,
  so each open reads the path, the executable and the uid.  No rule
  matches the file, so the default allows it after every rule was tried.

Where everything runs (``--cpus``).  The default, ``same``, pins the opener,
the responders (the C one, the guard process) and every thread of this
process to one CPU (``--cpu``, default 0): a blocked open(2) hands the CPU
straight to the responder and the verdict hands it back, with no cross-CPU
wake-up and no idle exit, so the latency is the responder's own work per
event.  On this 2-vCPU machine that gave per-round p50 ratios within a few
percent run to run, the C floor steady at 3.2-3.3 us.  ``split`` (the
opener on another CPU) and ``free`` (not pinned, the earlier figures' mode)
are kept: there the C floor was 84-94 us (an idle vCPU's wake-up in every
open) and every ratio was close to 1.

Reports p50/p99/mean per setup (median over rounds), then each afanotify
setup's p50 and p99 as a ratio of the C responder's: of the whole open(2)
latency, and of the latency added over the baseline.  Needs root (mount,
fanotify).  Only ratios within one run mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from afanotify import Event, Fanotify, FanotifyData, InitFlag

HERE = Path(__file__).resolve().parent


def build(work: Path) -> Path:
    exe = work / "perm_responder"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / "perm_responder.c")], check=True
    )
    return exe


Result = tuple[int, int, int, float]

def proc_cpu(pid: int | str = "self") -> float:
    """Seconds on a CPU of every live thread of process ``pid`` (schedstat: ns resolution)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


#: Where the opening child runs (set by main_async from --cpus): None leaves it
#: to the scheduler; otherwise the set of CPUs it is pinned to.
OPENER_CPUS: set[int] | None = None


def _pin_opener() -> None:
    if OPENER_CPUS is not None:
        os.sched_setaffinity(0, OPENER_CPUS)


async def run_opener(exe: Path, target: Path, n: int) -> tuple[int, int, int]:
    proc = await asyncio.create_subprocess_exec(
        str(exe), "open", str(target), str(n), stdout=asyncio.subprocess.PIPE,
        preexec_fn=_pin_opener,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    if proc.returncode != 0:
        raise RuntimeError(f"opener failed with status {proc.returncode}")
    p50, p99, mean = (int(x) for x in out.split())
    return p50, p99, mean


Setup = Callable[[Path, Path, int], Awaitable[Result]]


async def baseline(exe: Path, target: Path, n: int) -> Result:
    return (*await run_opener(exe, target, n), 0.0)


async def c_responder(exe: Path, target: Path, n: int, mode: str = "respond") -> Result:
    proc = await asyncio.create_subprocess_exec(
        str(exe), mode, str(target), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        if line.strip() != b"ready":
            raise RuntimeError("the C responder did not start")
        cpu0 = proc_cpu(proc.pid)
        result = await run_opener(exe, target, n)
        return (*result, (proc_cpu(proc.pid) - cpu0) / n)
    finally:
        proc.terminate()
        await proc.wait()


def afanotify_setup(style: str, resolve_paths: bool = True, thread: bool = False) -> Setup:
    async def run(exe: Path, target: Path, n: int) -> Result:
        with Fanotify(InitFlag.CLASS_CONTENT, resolve_paths=resolve_paths) as fan:
            fan.mark(target, Event.OPEN_PERM)
            if style == "iter":
                task = asyncio.create_task(_iterate(fan))
            else:
                handler = _allow if style == "handler" else _allow_async
                if thread:
                    fan.on_permission(handler, thread=True)
                else:
                    fan.on_permission(handler)  # also on a library without thread=
                task = asyncio.create_task(_iterate(fan))
            await asyncio.sleep(0)  # the consumer starts the reader
            cpu0 = proc_cpu()  # this process, every thread
            try:
                result = await run_opener(exe, target, n)
            finally:
                cpu = proc_cpu() - cpu0
                task.cancel()
            st = fan.permission_stats
            if st.allowed < n or st.defaulted:
                raise RuntimeError(f"{style}: unexpected verdicts {st}")
            return (*result, cpu / n)

    return run


#: Rules that read the file's path only, and rules that also read the
#: process's executable and uid; none matches the file.
GUARD_PATH_RULES = "deny path=*.@(key|pem)\ndeny path=/srv/secrets/*\n"
GUARD_ALL_RULES = "deny path=*.@(key|pem)\ndeny exe=*/curl\ndeny uid=65534 path=*/file\n"


def guard_cli(rules_text: str) -> Setup:
    async def run(exe: Path, target: Path, n: int) -> Result:
        return await _guard_cli(rules_text, exe, target, n)

    return run


async def _guard_cli(rules_text: str, exe: Path, target: Path, n: int) -> Result:
    rules = target.parent.parent / "guard.rules"  # outside the marked mount
    rules.write_text(rules_text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "afanotify", "guard", "--rules", str(rules), str(target),
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        if b"guarding" not in line or b"decided in C" not in line:
            raise RuntimeError(f"the guard did not start with C decisions: {line!r}")
        cpu0 = proc_cpu(proc.pid)
        result = await run_opener(exe, target, n)
        cpu = (proc_cpu(proc.pid) - cpu0) / n
    finally:
        proc.terminate()
        err = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
        await proc.wait()
    if f"{n} allowed, 0 denied" not in err:
        raise RuntimeError(f"guard: unexpected verdicts: {err}")
    return (*result, cpu)


async def _iterate(fan: Fanotify) -> None:
    async for ev in fan:
        if not ev.answered:
            ev.allow_nowait()


def _allow(ev: FanotifyData) -> bool:
    return True


async def _allow_async(ev: FanotifyData) -> bool:
    return True


#: The C responder that also reads what the guard's path+exe+uid rules read.
FACTS_FLOOR = "C responder, reading path+exe+uid"
#: Each setup whose work includes reading those facts, and its same-work floor.
SAME_WORK = {"afanotify guard, path+exe+uid rules (C)": FACTS_FLOOR}

SETUPS: dict[str, Setup] = {
    "baseline (no listener)": baseline,
    "C responder": c_responder,
    FACTS_FLOOR: lambda exe, target, n: c_responder(exe, target, n, "respond-facts"),
    "afanotify async for + allow_nowait()": afanotify_setup("iter"),
    "afanotify async for, resolve_paths=False": afanotify_setup("iter", resolve_paths=False),
    "afanotify on_permission(sync fn)": afanotify_setup("handler"),
    "afanotify on_permission(sync), no paths": afanotify_setup("handler", resolve_paths=False),
    "afanotify on_permission(sync, thread=True)": afanotify_setup("handler", thread=True),
    "afanotify on_permission(async fn)": afanotify_setup("async"),
    "afanotify guard, path rules (C)": guard_cli(GUARD_PATH_RULES),
    "afanotify guard, path+exe+uid rules (C)": guard_cli(GUARD_ALL_RULES),
}


def pin_cpus(mode: str, cpu: int) -> str:
    """Place this process (every thread; its children inherit it) and the opener.

    ``same``: all on ``cpu``, so a blocked open(2) hands the CPU straight to
    the responder (no cross-CPU wake-up, no idle exit) and back.  ``split``:
    the responders on ``cpu``, the opener on another CPU.  ``free``: no
    pinning (the scheduler decides; the mode of the earlier figures).
    """
    global OPENER_CPUS
    if mode == "free":
        OPENER_CPUS = None
        return "not pinned"
    cpus = sorted(os.sched_getaffinity(0))
    if cpu not in cpus:
        raise SystemExit(f"--cpu {cpu}: not one of this process's CPUs {cpus}")
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {cpu})
    if mode == "same":
        OPENER_CPUS = {cpu}
        return f"opener and responders on CPU {cpu}"
    others = set(cpus) - {cpu}
    if not others:
        raise SystemExit("--cpus split needs two CPUs")
    OPENER_CPUS = {min(others)}
    return f"responders on CPU {cpu}, opener on CPU {min(others)}"


async def main_async(opens: int, rounds: int, only: list[str] | None = None,
                     mode: str = "same", cpu: int = 0) -> int:
    if os.geteuid() != 0:
        print("needs root: mounts a tmpfs and uses fanotify permission events", file=sys.stderr)
        return 2
    placement = pin_cpus(mode, cpu)
    work = Path(tempfile.mkdtemp(prefix="afanotify-bench-perm-"))
    mnt = work / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        exe = build(work)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "bench-perm", str(mnt)],
                       check=True)
        mounted = True
        target = mnt / "file"
        target.write_bytes(b"x")
        setups = {
            name: setup for name, setup in SETUPS.items()
            if not name.startswith("afanotify") or not only or any(o in name for o in only)
        }
        if "thread" not in inspect.signature(Fanotify.on_permission).parameters:
            # An older afanotify (bench/against.py, or PYTHONPATH=another checkout).
            setups = {name: s for name, s in setups.items() if "thread=True" not in name}
        results: dict[str, list[Result]] = {name: [] for name in setups}
        for setup in setups.values():  # warm-up, not reported
            await setup(exe, target, min(opens, 500))
        for _ in range(rounds):  # interleaved, so drift hits every setup alike
            for name, setup in setups.items():
                results[name].append(await setup(exe, target, opens))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)

    med = {
        name: tuple(statistics.median(r[i] for r in rs) for i in range(3))
        for name, rs in results.items()
    }
    import afanotify

    print(f"afanotify {afanotify.__version__} from {Path(afanotify.__file__).parent}")
    print(f"CPUs: --cpus {mode} ({placement})")
    print(f"open(2) latency, {opens} opens x {rounds} rounds (median of rounds), ns")
    print(f"{'setup':42} {'p50':>8} {'p99':>8} {'mean':>8}  p50 min-max over rounds")
    for name, (p50, p99, mean) in med.items():
        lo = min(r[0] for r in results[name])
        hi = max(r[0] for r in results[name])
        print(f"{name:42} {p50:8.0f} {p99:8.0f} {mean:8.0f}  {lo}-{hi}")
    base = med["baseline (no listener)"]
    floor = med["C responder"]
    print()
    print("ratio to the C responder: whole open(2) | added over baseline")
    print(f"{'setup':42} {'p50':>7} {'p99':>7} | {'p50':>7} {'p99':>7}")
    for name, m in med.items():
        if not name.startswith("afanotify"):
            continue
        whole = [m[i] / floor[i] for i in (0, 1)]
        added = [(m[i] - base[i]) / max(1.0, floor[i] - base[i]) for i in (0, 1)]
        print(f"{name:42} {whole[0]:6.2f}x {whole[1]:6.2f}x | {added[0]:6.2f}x {added[1]:6.2f}x")
    print()
    print("p50 ratio to the C responder of the same round (median, min-max over rounds)")
    for name, rs in results.items():
        if not name.startswith("afanotify"):
            continue
        per = sorted(r[0] / c[0] for r, c in zip(rs, results["C responder"], strict=True))
        print(f"{name:42} {statistics.median(per):6.2f}x  ({per[0]:.2f}-{per[-1]:.2f})")
    print()
    print("CPU time of the responding process per open, us (median, min-max over rounds;")
    print("in-process setups count every thread of this process), and its ratio to the")
    print("C responder's of the same round")
    for name, rs in results.items():
        if name.startswith("baseline"):
            continue
        us = sorted(r[3] * 1e6 for r in rs)
        floor_cpu = [c[3] for c in results["C responder"]]
        per = sorted(r[3] / max(c, 1e-9) for r, c in zip(rs, floor_cpu, strict=True))
        print(f"{name:42} {statistics.median(us):7.1f} ({us[0]:.1f}-{us[-1]:.1f})  "
              f"{statistics.median(per):6.2f}x ({per[0]:.2f}-{per[-1]:.2f})")
    same = [(name, floor_name) for name, floor_name in SAME_WORK.items() if name in results]
    if same:
        print()
        print("p50 ratio to a C responder that reads the same facts, same round")
        for name, floor_name in same:
            per = sorted(r[0] / c[0] for r, c in zip(results[name], results[floor_name],
                                                     strict=True))
            print(f"{name:42} {statistics.median(per):6.2f}x  ({per[0]:.2f}-{per[-1]:.2f})"
                  f"  over {floor_name!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=20000, help="opens per setup and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", metavar="SUBSTRING",
                        help="only the afanotify setups whose name contains it (repeatable); "
                        "the baseline and the C responder always run")
    parser.add_argument("--cpus", choices=("same", "split", "free"), default="same",
                        help="same (default): the opener, the responders and every thread "
                        "of this process on one CPU; split: the opener on another CPU; "
                        "free: not pinned (the old mode)")
    parser.add_argument("--cpu", type=int, default=0, help="the responders' CPU (default 0)")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args.opens, args.rounds, args.only, args.cpus, args.cpu))


if __name__ == "__main__":
    sys.exit(main())
