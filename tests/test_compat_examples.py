"""Our ports of pyfanotify's examples, run under afanotify and under the real pyfanotify 0.3.0.

Each program in examples/legacy_*.py is written for pyfanotify 0.3.0 and
imports ``afanotify.pyfanotify``; its twin for the real library differs in
that one line.  Both run at the same time inside a private mount namespace
(``unshare --mount --propagation private``, held by a sleeping process), on
filesystems mounted only there, which vanish with the namespace.  The
actions run in processes of their own (``nsenter``), outside both programs'
process trees.

Waiting is done on both sides: a probe action is repeated until both
programs have printed it (pyfanotify's worker adds a rule some time after
``connect()`` returns, and all_mountpoints marks from ``fn``), then the
actions run once, then a sentinel is repeated until both printed it.  The
programs are stopped with SIGINT, as Ctrl-C would.
"""

from __future__ import annotations

import ast
import importlib.util
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CHILD_CWD, REPO, child_env

EXAMPLES = REPO / "examples"
OURS = "import afanotify.pyfanotify as fan  # was: import pyfanotify as fan"
THEIRS = "import pyfanotify as fan"
HAVE_REAL = importlib.util.find_spec("pyfanotify") is not None
NO_REAL = "pyfanotify 0.3.0 is not installed: pip install '.[pyfanotify-ref]' (needs gcc)"
HAVE_SETNS = importlib.util.find_spec("pysetns") is not None

LIBS = [
    pytest.param(("afanotify",), id="afanotify"),
    pytest.param(("afanotify", "pyfanotify"), id="both",
                 marks=pytest.mark.skipif(not HAVE_REAL, reason=NO_REAL)),
]


class Namespace:
    """A private mount namespace, held by a sleeping process; its mounts go with it."""

    def __init__(self, parent: Namespace | None = None) -> None:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               "echo ready; exec sleep 600"]
        if parent is not None:  # a namespace made from the parent's (a copy of its mounts)
            cmd = ["nsenter", "-t", str(parent.pid), "-m", "--", *cmd]
        # nsenter, unshare and sh each exec the next: the pid is the holder's.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n"
        self.pid = self.proc.pid

    def run(self, script: str) -> None:
        """Run a shell script inside the namespace (a child of the test, not of a program)."""
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "--", "sh", "-c", script],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, f"{script}: {r.stderr}"

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "--", *args]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class Program:
    """One example running in a namespace; stdout collected line by line on a thread."""

    def __init__(self, lib: str, source: Path, space: Namespace, *args: str,
                 fn_line: str | None = None) -> None:
        self.lib = lib
        #: What ``fn`` prints, from another process: taken out of the output.
        self.fn_line = fn_line
        self.fn_calls = 0
        self.proc = subprocess.Popen(
            space.argv(sys.executable, str(source), *args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=child_env(), cwd=CHILD_CWD,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))

    def pump(self) -> None:
        while True:
            try:
                self.out.append(self._lines.get_nowait())
            except queue.Empty:
                return

    def has(self, text: str) -> bool:
        self.pump()
        return any(text in line for line in self.out)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        if not self.proc.stderr.closed:
            self.err = self.proc.stderr.read()
            self.proc.stderr.close()
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.pump()
        if self.fn_line is not None:
            # fn's process writes its short line at once; the program's own
            # lines can be longer than a pipe writes atomically, so fn's
            # line may land inside one of them.
            text = "".join(ln + "\n" for ln in self.out)
            self.fn_calls = text.count(self.fn_line + "\n")
            self.out = text.replace(self.fn_line + "\n", "").splitlines()
        # pyfanotify 0.3.0 without a logger prints its debug lines to stdout.
        self.out = [ln for ln in self.out if " DEBUG: Fanotify: " not in ln]
        return self.proc.returncode


@pytest.fixture
def sandbox() -> Iterator[tuple[Callable[..., Namespace], Path]]:
    """Namespaces to run in, and a host directory to mount on (inside them only)."""
    base = Path(tempfile.mkdtemp(prefix="afanotify-ex-"))
    made: list[Namespace] = []

    def make(parent: Namespace | None = None) -> Namespace:
        space = Namespace(parent)
        made.append(space)
        return space

    yield make, base
    for space in reversed(made):
        space.close()
    shutil.rmtree(base, ignore_errors=True)  # nothing was mounted here on the host


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[Callable[..., list[Program]]]:
    running: list[Program] = []

    def start(name: str, libs: tuple[str, ...], space: Namespace, *args: str,
              fn_line: str | None = None) -> list[Program]:
        text = (EXAMPLES / name).read_text()
        out = []
        for lib in libs:
            source = EXAMPLES / name
            if lib == "pyfanotify":
                source = tmp_path / name
                source.write_text(text.replace(OURS, THEIRS))
            prog = Program(lib, source, space, *args, fn_line=fn_line)
            running.append(prog)
            out.append(prog)
        return out

    yield start
    for prog in running:
        prog.stop()


def until_all(progs: list[Program], act: Callable[[int], None], marker: str | list[str],
              timeout: float = 60.0) -> None:
    """Repeat ``act(i)`` until every program printed every marker; fail at the deadline."""
    markers = [marker] if isinstance(marker, str) else marker
    deadline = time.monotonic() + timeout
    i = 0
    while True:
        act(i)
        step = time.monotonic() + 0.5
        while time.monotonic() < step:
            if all(p.has(m) for p in progs for m in markers):
                return
            for p in progs:
                if p.proc.poll() is not None:
                    p.stop()
                    raise AssertionError(f"{p.lib} ended: {p.out} {p.err}")
            time.sleep(0.02)
        if time.monotonic() > deadline:
            last = {p.lib: p.out[-3:] for p in progs}
            raise AssertionError(f"not printed by all: {markers}; last lines: {last}")
        i += 1


def finish(progs: list[Program]) -> None:
    for p in progs:
        rc = p.stop()
        assert rc == 0, (p.lib, p.out, p.err)
        if p.lib == "afanotify":
            assert p.out and p.out[-1] == "STOP", (p.out, p.err)
            assert "Traceback" not in p.err, p.err
        else:  # 0.3.0's worker may still log to stdout while it stops
            assert "STOP" in p.out, (p.out, p.err)


def dict_events(
    prog: Program, skip: tuple[str, ...], only: frozenset[str] | None = None
) -> Counter[tuple[Any, ...]]:
    """The events a dict-printing example printed, one key per event name (in ``only``).

    The kernel merges an event into one still queued for the same file and
    process, so which other names ride along with a name a rule selects
    depends on when each group read: compare only the selected names then.
    """
    keys: Counter[tuple[Any, ...]] = Counter()
    for line in prog.out:
        if not line.startswith("{"):
            continue
        for path, events in ast.literal_eval(line).items():
            if any(s.encode() in p for s in skip for p in path):
                continue
            for ev in events:
                assert ev["path"] == path and isinstance(path, tuple)
                assert all(isinstance(ev[k], bytes) for k in ("exe", "cwd"))
                for name in ev["ev_types"].split("|"):
                    if only is not None and name not in only:
                        continue
                    keys[(path, ev["pid"], name, ev["fd"], ev["exe"], ev["cwd"])] += 1
    return keys


def as_0_3_0(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """How pyfanotify 0.3.0 prints our event ``key``.

    For a rename between two directories it joins both names to the new
    directory (it keeps one directory fd per event): (old dir/a, new dir/b)
    comes out as (new dir/a, new dir/b).  docs/compat.md lists it.
    """
    path, name = key[0], key[2]
    if name == "rename" and len(path) == 2:
        old_name = path[0].rpartition(b"/")[2]
        new_dir = path[1].rpartition(b"/")[0]
        return ((new_dir + b"/" + old_name, path[1]), *key[1:])
    return key


def compare(progs: list[Program], keys: Callable[[Program], Counter[tuple[Any, ...]]]) -> None:
    """Ours printed every event pyfanotify printed (extras are events 0.3.0 drops)."""
    got = {p.lib: keys(p) for p in progs}
    if "pyfanotify" in got:
        ours = set(got["afanotify"]) | {as_0_3_0(k) for k in got["afanotify"]}
        missing = set(got["pyfanotify"]) - ours
        assert not missing, f"pyfanotify printed, we did not: {missing}"


@pytest.mark.parametrize(
    "name", ["legacy_simple.py", "legacy_fid.py", "legacy_all_mountpoints.py",
             "legacy_add_reader.py"]
)
def test_example_differs_from_its_pyfanotify_twin_in_the_import_line_only(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    assert text.splitlines().count(OURS) == 1
    # Nothing else from afanotify: the calls are pyfanotify 0.3.0's.
    tree = ast.parse(text)
    imported = [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert [m for m in imported if "afanotify" in m] == ["afanotify.pyfanotify"]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and "afanotify" in (n.module or "")]
    ast.parse(text.replace(OURS, THEIRS))  # the twin is a program too


@pytest.mark.kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("libs", LIBS)
def test_simple(sandbox: Any, programs: Any, libs: tuple[str, ...]) -> None:
    make, base = sandbox
    space = make()
    space.run(f"mount -t tmpfs afanotify-ex {base}")
    progs = programs("legacy_simple.py", libs, space, str(base),
                     fn_line="fn: called every 1 s")
    until_all(progs, lambda i: space.run(f"echo p > {base}/probe{i}"), f"{base}/probe")
    space.run(f"cd {base} && echo hello > note && cat note > /dev/null && mkdir sub")
    until_all(progs, lambda i: space.run(f"echo s > {base}/sentinel{i}"), f"{base}/sentinel")
    finish(progs)
    note = (f"{base}/note".encode(),)
    want = {(note, name) for name in ("open", "modify", "close_write", "access", "close_nowrite")}
    compare(progs, lambda p: dict_events(p, ("/probe", "/sentinel")))
    for p in progs:
        got = {(k[0], k[2]) for k in dict_events(p, ("/probe", "/sentinel"))}
        assert want <= got, (p.lib, want - got)
        assert p.fn_calls >= 1, (p.lib, p.out)


@pytest.mark.kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("libs", LIBS)
def test_fid(sandbox: Any, programs: Any, libs: tuple[str, ...]) -> None:
    make, base = sandbox
    space = make()
    space.run(f"mount -t tmpfs afanotify-ex {base}")
    progs = programs("legacy_fid.py", libs, space, str(base))
    until_all(progs, lambda i: space.run(f"mkdir {base}/probe{i}"), f"{base}/probe")
    # One step at a time, each seen by both before the next: 0.3.0 resolves
    # a file handle when it reads the event, so a later move would rename
    # what it reports for an earlier one.
    steps = ("mkdir d && echo x > d/a", "mv d/a d/b", "chmod 600 d/b", "mv d/b e")
    for k, step in enumerate(steps):
        space.run(f"cd {base} && {step}")
        if k < len(steps) - 1:
            until_all(progs, lambda i, k=k: space.run(f"mkdir {base}/probe_s{k}_{i}"),
                      f"{base}/probe_s{k}_")
    until_all(progs, lambda i: space.run(f"mkdir {base}/sentinel{i}"), f"{base}/sentinel")
    finish(progs)
    b = str(base).encode()
    want = {
        ((b + b"/d",), "create"), ((b + b"/d",), "ondir"), ((b + b"/d/a",), "create"),
        ((b + b"/d/a", b + b"/d/b"), "rename"), ((b + b"/d/b",), "attrib"),
        ((b + b"/d/b",), "moved_from"), ((b + b"/e",), "moved_to"),
    }
    across = ((b + b"/d/b", b + b"/e"), "rename")  # from one directory to another
    for p in progs:
        got = {(k[0], k[2]) for k in dict_events(p, ("/probe", "/sentinel"))}
        assert want <= got, (p.lib, want - got, got)
        if p.lib == "afanotify":
            assert across in got, got
        else:  # 0.3.0 joins the old name to the new directory
            assert ((b + b"/b", b + b"/e"), "rename") in got and across not in got, got
    compare(progs, lambda p: dict_events(p, ("/probe", "/sentinel")))


@pytest.mark.kernel
@pytest.mark.timeout(120)
@pytest.mark.skipif(not HAVE_SETNS, reason="pysetns is not installed: pip install "
                    "'.[pyfanotify-ref]' (the example needs it, as pyfanotify's does)")
@pytest.mark.parametrize("libs", LIBS)
def test_all_mountpoints(sandbox: Any, programs: Any, libs: tuple[str, ...]) -> None:
    make, base = sandbox
    outer = make()
    outer.run(
        f"mount -t tmpfs afanotify-ex {base} && cd {base} && mkdir a b && "
        "truncate -s 8M a.img b.img && mkfs.ext4 -q -F a.img && mkfs.ext4 -q -F b.img && "
        "mount -o loop a.img a && for f in probe data sentinel; do echo $f > a/$f; done"
    )
    # A second namespace whose mount of b.img the first one does not see:
    # only fn's setns into it can mark that mount.
    inner = make(outer)
    inner.run(f"cd {base} && mount -o loop b.img b && "
              "for f in probe data sentinel; do echo $f > b/$f; done")
    outer.run(f"test ! -e {base}/b/data")  # not visible from the outer namespace
    progs = programs("legacy_all_mountpoints.py", libs, outer, str(base))

    def probe(i: int) -> None:
        outer.run(f"cat {base}/a/probe > /dev/null")
        inner.run(f"cat {base}/b/probe > /dev/null")

    until_all(progs, probe, [f"{base}/a/probe", "/b/probe"])
    outer.run(f"cat {base}/a/data > /dev/null")
    inner.run(f"cat {base}/b/data > /dev/null")
    until_all(progs, lambda i: outer.run(f"cat {base}/a/sentinel > /dev/null"),
              f"{base}/a/sentinel")
    finish(progs)
    skip, access = ("/probe", "/sentinel"), frozenset({"access"})  # the rule's ev_types
    for p in progs:
        paths = {k[0] for k in dict_events(p, skip, access)}
        assert (f"{base}/a/data".encode(),) in paths, (p.lib, paths)
        assert any(path[0].endswith(b"/b/data") for path in paths), (p.lib, paths)
    compare(progs, lambda p: dict_events(p, skip, access))


@pytest.mark.kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("libs", LIBS)
def test_add_reader_program(sandbox: Any, programs: Any, libs: tuple[str, ...]) -> None:
    make, base = sandbox
    space = make()
    space.run(f"mount -t tmpfs afanotify-ex {base}")
    progs = programs("legacy_add_reader.py", libs, space, str(base))
    until_all(progs, lambda i: space.run(f"echo p > {base}/probe{i}"), f"{base}/probe")
    space.run(f"cd {base} && echo x > one && echo y > two && echo z > three")
    until_all(progs, lambda i: space.run(f"echo s > {base}/sentinel{i}"), f"{base}/sentinel")
    finish(progs)
    want = [f"close_write {base}/{n}" for n in ("one", "two", "three")]
    for p in progs:
        lines = [ln for ln in p.out[:p.out.index("STOP")]
                 if "/probe" not in ln and "/sentinel" not in ln]
        assert lines == want, (p.lib, p.out)
