"""Static permission rules, decided in C in the read that produced the events.

A :class:`StaticRule` says allow or deny for events that meet all of its
criteria (path and executable patterns, effective uid, event type, a byte
range of a PRE_ACCESS event).  :class:`StaticRules` compiles an ordered list
of them for ``afanotify/csrc/fastpath_rules.c``: the group's pipeline hands
each buffer it reads to :meth:`StaticRules.apply` first, which answers,
closes and removes every event the rules decide (the first match decides,
else the default), so those events never become Python objects.  What it
leaves (the group's own events, malformed ones, other events, and, without
a default, those no rule matches) is decoded as usual.

:meth:`StaticRules.decide` is the same decision in Python, for events that
reach Python anyway and for a core without the C path
(``AFANOTIFY_PURE_PARSER=1``); tests hold the two to each other.
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import _ffi
from ._ffi import ffi, lib
from .events import FanotifyData
from .flags import Event, InitFlag, Response
from .rules import fnmatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .group import Fanotify

__all__ = ["EVENT_NAMES", "Decision", "StaticRule", "StaticRules", "StaticServer", "process_uid"]

log = logging.getLogger(__name__)

#: The event names of a rule's ``event=``, and their bits.
EVENT_NAMES: dict[str, int] = {
    "open": int(Event.OPEN_PERM),
    "access": int(Event.ACCESS_PERM),
    "exec": int(Event.OPEN_EXEC_PERM),
    "pre_access": int(Event.PRE_ACCESS),
}
_ALLOW = int(Response.ALLOW)
_DENY = int(Response.DENY)
_AUDIT = int(Response.AUDIT)
_ERRNO_SHIFT = int(lib.FAN_ERRNO_SHIFT)
_ERRNO_MASK = int(lib.FAN_ERRNO_MASK)
_ARENA = 1 << 20


@dataclass(frozen=True)
class StaticRule:
    """One rule: a verdict for the events that meet every criterion given."""

    #: True: allow; False: deny.
    allowed: bool
    #: How logs and counters name the rule ("rules.conf:3", "--deny '*.key'").
    label: str
    #: The rule as written.
    text: str = ""
    #: fnmatch(3) pattern (FNM_EXTMATCH) for the file's path.
    path: str | None = None
    #: fnmatch(3) pattern for the process's executable.
    exe: str | None = None
    #: Effective uids of the process (any of them).
    uid: frozenset[int] = frozenset()
    #: Event bits (any of them); 0 for every permission event.
    event: int = 0
    #: Bytes ``(first, last)``: a PRE_ACCESS event whose range overlaps them.
    range: tuple[int, int] | None = None
    #: With a denial: the errno the process sees (FAN_DENY_ERRNO, pre-content groups).
    errno: int | None = None
    #: Add FAN_AUDIT to the response.
    audit: bool = False

    def response(self, audit_denials: bool = False) -> int:
        """The response word this rule writes."""
        r = _ALLOW if self.allowed else _DENY
        if self.errno is not None:
            r |= (self.errno & _ERRNO_MASK) << _ERRNO_SHIFT
        if self.audit or (audit_denials and not self.allowed):
            r |= _AUDIT
        return r

    def matches(self, ev: FanotifyData, uid: Callable[[int], int | None]) -> bool:
        """The C rule's decision for a decoded event; ``uid(pid)`` gives the uid."""
        if self.event and not ev.ev_types & self.event:
            return False
        if self.range is not None:
            off, count = ev.range_offset, ev.range_count
            if off is None or not count:
                return False
            if off + count - 1 < self.range[0] or off > self.range[1]:
                return False
        if self.uid and uid(ev.pid) not in self.uid:
            return False
        if self.exe is not None and (ev.exe is None or not fnmatch(self.exe, ev.exe)):
            return False
        return self.path is None or (ev.path is not None and fnmatch(self.path, ev.path))


def process_uid(pid: int) -> int | None:
    """The effective uid of ``pid``: the owner of its /proc/PID directory.

    The kernel gives that directory the task's euid even when the process is
    not dumpable (its other files then belong to root), so it is the second
    ``Uid:`` field of /proc/PID/status, for one stat instead of that file.
    """
    try:
        return os.stat(f"/proc/{pid}").st_uid if pid > 0 else None
    except OSError:
        return None


class Decision(NamedTuple):
    """One decision, for the audit trail."""

    #: The rule that decided, or None for the default.
    rule: StaticRule | None
    allowed: bool
    #: The response word written.
    response: int
    pid: int
    mask: int
    path: str | None
    exe: str | None
    uid: int | None
    range: tuple[int, int] | None
    #: errno of a failed response write, else 0.
    write_errno: int


class _Hits:
    """Per-rule counters where there is no C rule table (the pure core)."""

    __slots__ = ("default_hits", "hits")

    def __init__(self) -> None:
        self.hits = self.default_hits = 0


class StaticRules:
    """An ordered rule list compiled for the C path (see the module docstring).

    :param default: the verdict when no rule matches (True allow, False
        deny), or None to leave those events to Python
    :param audit_denials: add FAN_AUDIT to every denial
    :param own_pid: the group's own process: its events are left to Python
        (which allows them), or -1
    :param on_decided: called after each batch with its decisions (responses
        already written); without it no records are made
    """

    def __init__(
        self,
        rules: Sequence[StaticRule],
        default: bool | None,
        *,
        audit_denials: bool = False,
        own_pid: int | None = None,
        on_decided: Callable[[list[Decision]], None] | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.default = default
        self.audit_denials = audit_denials
        self.on_decided = on_decided
        self._keep: list[Any] = []
        self._out: Any = ffi.NULL
        self._cap = 0
        if not available():
            # The pure core: ``decide`` still works and counts here; the C
            # path is off (decide_statically/serve_statically say so).
            self._crules: Any = [_Hits() for _ in self.rules]
            self._rs: Any = _Hits()
            return
        crules = ffi.new("struct afr_rule[]", max(1, len(self.rules)))
        for i, r in enumerate(self.rules):
            c = crules[i]
            c.mask = r.event
            c.path = self._cstr(r.path)
            c.exe = self._cstr(r.exe)
            if r.uid:
                uids = ffi.new("uint32_t[]", sorted(r.uid))
                self._keep.append(uids)
                c.uids = uids
                c.nuids = len(r.uid)
            c.response = r.response(audit_denials)
            if r.range is not None:
                c.has_range = 1
                c.range_lo, c.range_hi = r.range
        rs = ffi.new("struct afr_ruleset *")
        rs.rules = crules
        rs.nrules = len(self.rules)
        rs.default_response = 0 if default is None else self.default_response()
        rs.own_pid = os.getpid() if own_pid is None else own_pid
        rs.record = int(on_decided is not None)
        rs.fddir = -1
        # The /proc/self/fd directory the C path keeps open for readlinkat.
        weakref.finalize(self, lib.afr_release, rs)
        self._crules = crules
        self._rs = rs
        self._kept: Any = ffi.new("size_t *")
        self._arena: Any = ffi.new("char[]", _ARENA) if on_decided is not None else ffi.NULL
        self._arena_buf = ffi.buffer(self._arena) if on_decided is not None else None

    def _cstr(self, s: str | None) -> Any:
        if s is None:
            return ffi.NULL
        c = ffi.new("char[]", os.fsencode(s))
        self._keep.append(c)
        return c

    def default_response(self) -> int:
        """The response word of the default verdict."""
        if self.default:
            return _ALLOW
        return _DENY | (_AUDIT if self.audit_denials else 0)

    # -- the C path ------------------------------------------------------

    def bind(self, own_pid: int) -> None:
        """Leave the events of ``own_pid`` (-1: none) to the group's own-process rule."""
        self._rs.own_pid = own_pid

    def apply(self, group_fd: int, view: memoryview) -> memoryview:
        """Decide what the rules decide in ``view`` (a writable buffer read from
        ``group_fd``); returns the part left for the decoder."""
        n = len(view)
        cap = n // 24 + 1
        if cap > self._cap:
            self._out = ffi.new("struct afr_decision[]", cap)
            self._cap = cap
        buf = ffi.from_buffer("unsigned char[]", view, require_writable=True)
        count = lib.afr_apply(
            self._rs, group_fd, buf, n, self._out, self._cap, self._arena, _ARENA, self._kept
        )
        kept = int(self._kept[0])
        if count and self.on_decided is not None:
            self.on_decided([self._decision(self._out[i]) for i in range(count)])
        return view[:kept]

    def decisions(self, out: Any, count: int) -> list[Decision]:
        """The first ``count`` records of a ``struct afr_decision`` array."""
        return [self._decision(out[i]) for i in range(count)]

    def _decision(self, d: Any) -> Decision:
        arena = self._arena_buf
        assert arena is not None
        path = exe = None
        if d.path_len >= 0:
            path = os.fsdecode(arena[d.path_off : d.path_off + d.path_len])
        if d.exe_len >= 0:
            exe = os.fsdecode(arena[d.exe_off : d.exe_off + d.exe_len])
        rule = None if d.rule < 0 else self.rules[d.rule]
        rng = None
        if d.has_range and d.range_count:
            rng = (int(d.range_offset), int(d.range_offset + d.range_count - 1))
        return Decision(
            rule, not d.response & _DENY, int(d.response), int(d.pid), int(d.mask), path, exe,
            None if d.uid < 0 else int(d.uid), rng, int(d.write_errno),
        )  # fmt: skip

    # -- the same decision in Python ---------------------------------------

    def decide(self, ev: FanotifyData) -> Decision | None:
        """The decision for a decoded event (counted like the C path's), or None
        when no rule matches and there is no default."""
        uid_cache: dict[int, int | None] = {}

        def uid(pid: int) -> int | None:
            if pid not in uid_cache:
                uid_cache[pid] = process_uid(pid)
            return uid_cache[pid]

        rs = self._rs
        for i, r in enumerate(self.rules):
            if r.matches(ev, uid):
                self._crules[i].hits += 1
                response = r.response(self.audit_denials)
                rule: StaticRule | None = r
                break
        else:
            if self.default is None:
                return None
            rs.default_hits += 1
            response = self.default_response()
            rule = None
        rng = None
        if ev.range_offset is not None and ev.range_count:
            rng = (ev.range_offset, ev.range_offset + ev.range_count - 1)
        return Decision(
            rule, not response & _DENY, response, ev.pid, ev.ev_types, ev.path, ev.exe,
            uid(ev.pid) if self.on_decided is not None else None, rng, 0,
        )  # fmt: skip

    # -- counters ----------------------------------------------------------

    def hits(self) -> list[tuple[str, int]]:
        """``(label, decisions)`` per rule, in order, then the default's."""
        out = [(r.label, int(self._crules[i].hits)) for i, r in enumerate(self.rules)]
        if self.default is not None:
            out.append(("default " + ("allow" if self.default else "deny"),
                        int(self._rs.default_hits)))
        return out

    @property
    def allowed(self) -> int:
        """Events allowed in C (:meth:`decide` counts only per rule)."""
        return int(self._rs.allowed)

    @property
    def denied(self) -> int:
        return int(self._rs.denied)

    @property
    def write_errors(self) -> int:
        """Responses the kernel refused (each logged by the caller)."""
        return int(self._rs.write_errors)

    @property
    def fallbacks(self) -> int:
        """Responses with FAN_AUDIT or an errno the kernel refused, sent plain instead."""
        return int(self._rs.fallbacks)


#: Bytes per read of the serving thread: at most 170 event fds open at once.
_SERVE_READ = 4096


class StaticServer:
    """A thread that reads a permission group and decides every event in C.

    For a group whose every permission event the rules decide (they have a
    default) and whose events nobody else needs: the guard.  The thread
    spends its time in ``afr_serve`` (``csrc/fastpath_rules.c``) without
    the GIL: poll, read, decide, write, close, as a C responder would, and
    answers the group's own events and malformed ones ALLOW, as the Python
    pipeline does.  It comes back to Python only to hand a batch's
    decisions to ``rules.on_decided`` (after they are written), about every
    100 ms to update ``reads`` (the watchdog's sign that someone reads),
    and when woken: :meth:`swap` (new rules, taken between two reads) or
    :meth:`stop`.

    ``rules.on_decided`` is called with each batch's decisions, on the thread.

    :param on_reads: called with the number of reads since the last call
    :param on_failure: called with the exception that ended the thread
    """

    def __init__(
        self,
        group_fd: int,
        rules: StaticRules,
        *,
        on_reads: Callable[[int], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        if rules.default is None:
            raise ValueError("a StaticServer needs rules with a default verdict")
        self._fd = group_fd
        self.rules = rules
        self._on_reads = on_reads
        self._on_failure = on_failure
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._buf: Any = ffi.new("unsigned char[]", _SERVE_READ)
        self._cap = _SERVE_READ // 24 + 1
        self._out: Any = ffi.new("struct afr_decision[]", self._cap)
        self.lost = 0
        self._thread = threading.Thread(target=self._run, name="afanotify-guard", daemon=True)

    def start(self) -> None:
        self._prepare(self.rules)
        self._thread.start()

    @staticmethod
    def _prepare(rules: StaticRules) -> None:
        rules._rs.answer_kept = 1

    def swap(self, rules: StaticRules) -> None:
        """Decide with ``rules`` from the next read on (atomic: whole batches)."""
        if rules.default is None:
            raise ValueError("a StaticServer needs rules with a default verdict")
        self._prepare(rules)
        self.rules = rules
        self._wake()

    def stop(self) -> None:
        """Stop the thread and wait for it; the group fd stays open."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # already awake (the pipe is full) or stopped

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            log.error("the guard's serving thread failed", exc_info=exc)
            if self._on_failure is not None:
                self._on_failure(exc)

    def _serve(self) -> None:
        reads_seen = 0
        while not self._stopping:
            rules = self.rules
            rs = rules._rs
            arena = rules._arena
            count = lib.afr_serve(
                rs, self._fd, self._wake_r, self._buf, _SERVE_READ, self._out, self._cap,
                arena, _ARENA if arena != ffi.NULL else 0,
            )  # fmt: skip
            reads = int(rs.reads)
            if self._on_reads is not None and reads != reads_seen:
                self._on_reads(reads - reads_seen)
            reads_seen = reads
            if count == lib.AFR_WOKEN:
                try:
                    os.read(self._wake_r, 64)
                except BlockingIOError:
                    pass
                reads_seen = int(self.rules._rs.reads)
                continue
            if count > 0:
                if rules.on_decided is not None:
                    rules.on_decided(rules.decisions(self._out, count))
                continue
            if count < 0:
                err = -count
                if err in (_errno.EMFILE, _errno.ENFILE):
                    self.lost += 1
                    log.warning("the kernel dropped a permission event: no fd left (%s)",
                                os.strerror(err))
                    time.sleep(0.05)
                    continue
                raise OSError(err, f"reading the fanotify group failed: {os.strerror(err)}")


def decide_statically(group: Fanotify, rules: StaticRules | None) -> bool:
    """Answer the permission events ``rules`` decide in C, as they are read
    (never delivered).  False where the C path is off: decide in Python with
    ``rules.decide``.  Swapping rules is atomic between reads.
    """
    pipeline = group._pipeline
    if rules is None or pipeline.fast is None or group.flags & InitFlag.REPORT_TID:
        pipeline.static = None
        return False
    rules.bind(os.getpid() if group.ignore_own else -1)
    pipeline.static = rules
    return True


def serve_statically(
    group: Fanotify, rules: StaticRules,
    on_failure: Callable[[BaseException], None] | None = None,
) -> StaticServer | None:
    """Decide every permission event with ``rules`` (which need a default) on a
    thread of C reads; nothing is delivered.  Stop it before closing the group.
    None where the C path is off (:class:`~afanotify._static.StaticServer`).

    :raises RuntimeError: if the group's reader already runs on the loop
    """
    if group._pipeline.fast is None or group.flags & InitFlag.REPORT_TID:
        return None
    if group._reader.reading:
        raise RuntimeError("serve_statically() needs a group nobody reads from the loop")
    rules.bind(os.getpid() if group.ignore_own else -1)
    counters = group._counters

    def on_reads(n: int) -> None:
        counters.reads += n  # the watchdog's sign that someone reads

    server = StaticServer(group._fd, rules, on_reads=on_reads, on_failure=on_failure)
    server.start()
    return server


def available() -> bool:
    """True when the core has the C path (a core built from this source has)."""
    return hasattr(_ffi.lib, "afr_apply")
