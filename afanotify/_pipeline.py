"""The decode pipeline: kernel bytes in, events ready for consumers out.

This is the one place where events are made and filled in.  A batch is
decoded by the C walk and builder (``afanotify/_fastparse.py``, which hands
what it does not build to the reference parser) or, without them, by the
pure parser (``afanotify/_parser.py``) alone.  Then, before any consumer
sees an event, this module

1. skips the group's own events (answering own permission events ALLOW),
2. resolves paths: from event fds (``/proc/self/fd``), and in FID modes from
   file handles through the group's :class:`~afanotify._dirmap.DirMap`
   (the C builder already filled the common DFID_NAME shape up to the
   batch's first directory change; the rest is resolved here in order, and
   the map kept right by each directory created, moved or deleted),
3. reads the process details (``exe``, ``cwd``) when asked,
4. registers each unanswered permission event with the group's
   :class:`~afanotify.permission.PermissionTracker`, which becomes its
   :class:`~afanotify.events.Responder`.

The group's reader, its close drain and the permission watchdog all read
through here.  Fields are set with each slot's own descriptor: the events
are frozen, and nobody else holds them yet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from . import _dirmap, _fastparse, _ffi, _threads, _tree
from ._dirmap import DirMap
from ._fdlimit import FdGuard, retryable
from ._loop import LoopLike
from ._parser import parse_lenient
from ._proc import fd_path, process_info
from ._static import StaticRules
from .events import UNANSWERED, FanotifyData
from .exceptions import ParseError
from .flags import (
    CLASS_BITS,
    DIR_CHANGE_EVENTS,
    FID_INIT_FLAGS,
    PERM_EVENTS,
    Event,
    InitFlag,
    Response,
)
from .permission import PermissionTracker

__all__ = ["Counters", "Pipeline"]

log = logging.getLogger(__name__)

_OVERFLOW = int(Event.Q_OVERFLOW)
#: With ONDIR: the events the C builder leaves to the directory map (the cut).
_CUT = int(DIR_CHANGE_EVENTS) | _dirmap.CHANGES
_ONDIR = int(Event.ONDIR)
#: The events that may change the directory map (with ONDIR), or empty it.
_APPLY = _ONDIR | _OVERFLOW
_PERM = int(PERM_EVENTS)
_DELETE_SELF = int(Event.DELETE_SELF)
_MOVE_SELF = int(Event.MOVE_SELF)
_RENAME = int(Event.RENAME)
#: The pid of the Q_OVERFLOW record a drain thread (afanotify._drain) puts
#: where it dropped reads past its memory bound; the kernel's have pid 0.
DRAIN_GAP_PID = -1
#: The overflow warning, by who dropped the events: [the kernel, the drain].
_OVERFLOW_WORDS = (
    "fanotify queue overflowed: the kernel dropped an unknown number of events "
    "(FAN_UNLIMITED_QUEUE, afanotify watch --unlimited-queue, keeps them)",
    "afanotify's drain thread dropped events it had read: its memory bound was full "
    "because they were taken too slowly (raise afanotify watch --max-backlog, or the "
    "Drain's limit); later drops are counted, not logged",
)
_ALLOW = int(Response.ALLOW)
#: Reads of leftover events at most (the kernel's queue is bounded).
_LEFTOVER_READS = 64


def _setter(name: str) -> Callable[[Any, Any], None]:
    # The slot's own descriptor: sets a field of a fresh frozen event without
    # the per-field cost of dataclasses.replace() or object.__setattr__.
    return FanotifyData.__dict__[name].__set__  # type: ignore[no-any-return]


_set_path = _setter("path")
_set_path_resolved = _setter("path_resolved")
_set_dir_path = _setter("dir_path")
_set_old_path = _setter("old_path")
_set_new_path = _setter("new_path")
_set_exe = _setter("exe")
_set_cwd = _setter("cwd")
_set_responder = _setter("_responder")
_set_owns = _setter("_owns")


class Counters:
    """A group's running counts (read by :attr:`Fanotify.stats`)."""

    __slots__ = (
        "events_read", "events_delivered", "overflows", "parse_errors", "own_events", "reads",
        "bytes_read", "lost", "fd_errors", "read_errors", "drain_gaps",
    )

    def __init__(self) -> None:
        self.events_read = self.events_delivered = self.overflows = 0
        self.parse_errors = self.own_events = self.reads = self.bytes_read = 0
        self.lost = self.fd_errors = self.read_errors = self.drain_gaps = 0


join = _dirmap.join


def _moved_to(ev: FanotifyData, prev: FanotifyData | None) -> str | None:
    """For a MOVE_SELF right after a file's rename by the same process, the rename's new path.

    See ``moved_to`` of :meth:`DirMap.object_at`: it is taken only if the
    object is there now.
    """
    if (
        ev.ev_types == _MOVE_SELF and prev is not None and prev.ev_types == _RENAME
        and prev.pid == ev.pid and prev.path_resolved
    ):
        return prev.new_path or None
    return None


def _object_only(ev: FanotifyData) -> bool:
    """A FID record and no other (the shape the C builder names with ``object_path``)."""
    return (
        ev.fid is not None and ev.dfid is None and ev.old_dfid is None and ev.new_dfid is None
        and ev.error is None and not ev.unknown_records
    )  # fmt: skip


def _fast_decoder(bufsize: int) -> _fastparse.Decoder | None:
    """The C batch decoder, or None when this core lacks it or AFANOTIFY_PURE_PARSER is set.

    The pure parser stays the reference and the fallback: both give the same
    events (tests/test_fastparse_differential.py).
    """
    if os.environ.get("AFANOTIFY_PURE_PARSER") or not _fastparse.available():
        return None
    return _fastparse.Decoder(bufsize)


#: Pipeline._made: the events made, the errors not yet released, the fds released.
_Made = tuple[list[FanotifyData], list[ParseError], list[int]]
#: Pipeline.failed: the read as decoded, then as :data:`_Made`.
_Failed = tuple[memoryview, list[FanotifyData], list[ParseError], list[int]]
#: Pipeline.take_failed: as :data:`_Failed`, the view None if decode never got to it.
_Taken = tuple[memoryview | None, list[FanotifyData], list[ParseError], list[int]]


class Pipeline:
    """Decode and enrich the batches of one group (see the module docstring).

    :param fd: the group fd (own permission events and malformed ones are
        answered on it)
    :param perm: the group's permission tracker
    :param counters: the group's counters
    """

    def __init__(
        self,
        fd: int,
        flags: int,
        *,
        ignore_own: bool,
        proc_info: bool,
        resolve_paths: bool,
        handle_cache_size: int,
        bufsize: int,
        perm: PermissionTracker,
        counters: Counters,
    ) -> None:
        self._fd = fd
        self._perm = perm
        self._counters = counters
        self.proc_info = proc_info
        self.fid_mode = bool(flags & FID_INIT_FLAGS)
        self._pid_is_tid = bool(flags & InitFlag.REPORT_TID)
        self._fd_error = bool(flags & InitFlag.REPORT_FD_ERROR)
        self._pidfd_reported = bool(flags & InitFlag.REPORT_PIDFD)
        self._resolve_paths = resolve_paths
        #: The C walk resolves event fds to paths in fd mode (in FID mode it
        #: uses its arena for names; an fd there is resolved below).
        self._fd_paths = resolve_paths and not self.fid_mode
        self._fid_paths = resolve_paths and self.fid_mode
        #: Directory handle -> path (FID modes); ``resolver`` is its older name.
        self.dirmap = self.resolver = DirMap(handle_cache_size, flags)
        #: The reserve of descriptors and the counts of failed opens and reads.
        self.fdguard = FdGuard(
            fd, fd_mode=not self.fid_mode, perm_class=bool(flags & CLASS_BITS),
            fd_error=self._fd_error, counters=counters, perm=perm,
        )  # fmt: skip
        self.ignore_own = ignore_own
        self._pid = os.getpid()
        #: Ids that are always this process (thread ids are checked per event).
        self.own_tids: frozenset[int] = frozenset((self._pid,))
        #: Thread ids seen live in this process (REPORT_TID), see is_own.
        self.seen_tids: set[int] = set()
        #: ``watch_tree``: (root, its parent, its name, wanted events); only
        #: events under root with a wanted bit are delivered.
        self.tree: tuple[str, str, str, int] | None = None
        #: ``watch_tree``'s ignore marks on busy directories outside the tree.
        self.pruner: _tree.Pruner | None = None
        #: Events the tree kept out (in C, or here), and those of them in C.
        self.filtered = self.c_filtered = 0
        if ignore_own and self._pid_is_tid:
            _threads.install()  # threads record their ids as they start, see is_own
        self.fast = _fast_decoder(bufsize)
        #: Static permission rules decided in C before decoding (``_static.py``).
        self.static: StaticRules | None = None
        #: What the last decode that raised left (see take_failed).
        self.failed: _Failed | None = None
        self._made: _Made | None = None  # the read being decoded, once made
        if self.fast is not None:
            # Our events are frozen and hold no cycles (see Decoder.untrack).
            self.fast.untrack = True
            if self._fd_paths:
                self.fast.open_fd_dir()  # kept until close(), not per read

    # -- the reader's batches ----------------------------------------------

    def decode(
        self, view: memoryview, loop: LoopLike | None
    ) -> list[FanotifyData]:
        """The events of one read, filled in, own ones and malformed ones removed.

        If it raises, nothing of the read was handed to anyone: what was made
        of it is kept in :attr:`failed` (see there) for the caller to release.
        """
        self.failed = self._made = None
        if self.fast is not None:
            self.fast.partial = _fastparse._NO_PARTIAL  # not a left-over of an earlier read
        if self.static is not None:
            # Answered in C, gone from the buffer: no objects for those.
            view = self.static.apply(self._fd, view)
            if not view:
                return []
        try:
            events = self._decode(view, loop)
        except BaseException:
            made: _Made | None = self._made
            if made is None:  # the decoder raised: what it built so far
                built, errors = self.fast.partial if self.fast is not None else ([], [])
                made = (built, errors, [])
            self._made = None
            self.failed = (view, list(made[0]), list(made[1]), list(made[2]))
            raise
        self._made = None
        return events

    def take_failed(self) -> _Taken:
        """What the last :meth:`decode` that raised left, once: ``(view, built, errors, released)``.

        ``view`` is the read as the decoder saw it (after the static rules
        answered theirs and took them out: the part past it holds stale
        copies), or None if decode never got that far; ``built`` the events
        it made (handed to nobody), ``errors`` the malformed events it found
        (not yet released), ``released`` the fds of malformed events it
        released already (their fds and pidfds closed: not to be closed again).
        """
        failed, self.failed = self.failed, None
        if failed is None:
            return None, [], [], []
        return failed

    def _decode(self, view: memoryview, loop: LoopLike | None) -> list[FanotifyData]:
        fast = self.fast
        c = self._counters
        fid_paths = self._fid_paths
        if fid_paths:
            self.dirmap.begin()
        # Events [0, done) of the batch come with every field filled in C:
        # the FID+name shape with its paths (fd paths are filled for all).
        done = 0
        if fast is not None:
            dir_path = None
            if fid_paths and self.dirmap.caching:
                dir_path = self.dirmap.c_lookup
            events, errors = fast.decode(
                view, len(view), owned=True, pid_is_tid=self._pid_is_tid,
                fd_error=self._fd_error, resolve_fd_paths=self._fd_paths,
                dir_path=dir_path, skip_pids=self.own_tids if self.ignore_own else (),
                moves=_dirmap.move_mask(self.dirmap),
                on_walk=self.dirmap.walked if dir_path else None,
                dir_change=_CUT, tree=self.tree if dir_path else None,
                on_cut=self._on_cut, renames=True, dir_version=self.dirmap.version,
                object_path=self.dirmap.c_object if dir_path else None,
            )  # fmt: skip
            if fast.skipped:
                c.events_read += fast.skipped
                self.filtered += fast.skipped
                self.c_filtered += fast.skipped
            fd_paths = self._resolve_paths and not self._fd_paths
            if dir_path is not None:
                upto = fast.resolved_upto
                # Every event before the cut was filled: nothing below would
                # change them, unless proc_info is asked or a tid may be ours.
                if fast.resolved_count == upto and not self.proc_info and not (
                    self.ignore_own and self._pid_is_tid
                ):
                    done = upto
                resolved_upto = upto
            else:
                resolved_upto = 0
        else:
            events, errors = parse_lenient(
                view, owned=True, pid_is_tid=self._pid_is_tid, fd_error=self._fd_error
            )
            fd_paths = self._resolve_paths
            resolved_upto = 0
        for err in errors:
            self.bad_event(err)
        self._made = (events, [], [err.fd for err in errors if err.fd >= 0])
        c.events_read += len(events)
        if fid_paths:
            complete = fast is not None and fast.resolved_count == resolved_upto > 0
            self._fid_pass(events, resolved_upto, complete)
            if self.tree is not None:
                outside = fast.outside if fast is not None else []
                events, done = _tree.filter_read(self, events, done, outside)
        if done == len(events):
            return events
        out = events[:done]
        append = out.append
        # Per-event work below touches only locals: it runs for every event.
        own = self.own_tids if self.ignore_own else None
        pid_is_tid = self._pid_is_tid
        proc_info = self.proc_info
        perm = self._perm
        fd_error = self._fd_error
        failed = False
        for idx in range(done, len(events)):
            ev = events[idx]
            mask = ev.ev_types
            if mask & _OVERFLOW:
                if ev.pid == _tree.GAP_PID:  # watch_tree's own, counted there
                    append(ev)
                    continue
                c.overflows += 1
                if ev.pid != DRAIN_GAP_PID:
                    log.warning(_OVERFLOW_WORDS[0])
                else:  # once: a slow taker makes a gap of nearly every read
                    c.drain_gaps += 1
                    log.log(logging.WARNING if c.drain_gaps == 1 else logging.DEBUG,
                            _OVERFLOW_WORDS[1])
                append(ev)
                continue
            if own is not None:
                pid = ev.pid
                if pid in own or (pid_is_tid and self.is_own(pid)):
                    self._drop_own(ev)
                    continue
            fd = ev.fd
            if fd >= 0:
                if fd_paths:
                    path, resolved = fd_path(fd)
                    _set_path(ev, path)
                    _set_path_resolved(ev, resolved)
            elif fd_error and ev.fd_error is not None:
                self.fdguard.fd_error(ev.fd_error, bool(mask & _PERM))
                failed = True
            if proc_info:
                exe, cwd = process_info(ev.pid, ev.pidfd, pidfd_reported=self._pidfd_reported)
                _set_exe(ev, exe)
                _set_cwd(ev, cwd)
            if ev._owns & UNANSWERED:
                _set_responder(ev, perm)
                perm.add(ev, loop)
            append(ev)
        if not failed:
            self.fdguard.recovered()
        return out

    def _fid_pass(self, events: list[FanotifyData], start: int, complete: bool) -> None:
        """Set the FID paths the C builder left, in event order, keeping the map right.

        Events before ``start`` were built by C with the map as it was when
        the batch began (nothing before the cut changes it); those it could
        not name are tried again here, now that the whole batch is known
        (``complete``: C named them all).
        """
        dm = self.dirmap
        n = len(events)
        redo = dm.missed or not complete
        if start >= n and not redo:
            return
        dm.set_batch(_dirmap.scan(events))
        resolve = self._resolve_fid
        # An object's own event (a FID record alone) that C built before the
        # cut, in a batch without directory moves or overflow, got what
        # object_at gives now (a batch teaches the map only directories, and
        # a handle lookup gives what it gave then): it is not looked up twice.
        settled = dm.live and not dm.c_off and self.fast is not None
        for i in range(start if redo else 0):
            ev = events[i]
            if ev.ev_types & _OVERFLOW:
                dm.apply(ev, i)
            elif not ev.path_resolved and ev.fd < 0 and not (settled and _object_only(ev)):
                resolve(ev, i, events[i - 1] if i else None)
        for i in range(start, n):
            ev = events[i]
            if ev.fd < 0:
                resolve(ev, i, events[i - 1] if i else None)
            if ev.ev_types & _APPLY:
                dm.apply(ev, i)

    def _on_cut(self, ev: FanotifyData, i: int) -> None:
        """A directory created or deleted, in a batch without moves: resolve it, apply it."""
        self._resolve_fid(ev, i)
        dm = self.dirmap
        dm.apply(ev, i)
        if not ev.path_resolved:
            dm.missed += 1  # tried again once the whole batch is known

    def _resolve_fid(self, ev: FanotifyData, i: int, prev: FanotifyData | None = None) -> None:
        """Set the paths of a fresh FID event (event ``i`` of its batch, after ``prev``)."""
        dm = self.dirmap
        old_dfid = ev.old_dfid
        new_dfid = ev.new_dfid
        if old_dfid is not None or new_dfid is not None:
            resolved = True
            old_path = new_path = None
            if old_dfid is not None:
                d = dm.dir_at(old_dfid, i)
                if d is None:
                    resolved = False
                    old_path = ev.old_name
                else:
                    old_path = join(d, ev.old_name)
                _set_old_path(ev, old_path)
            if new_dfid is not None:
                d = dm.dir_at(new_dfid, i)
                if d is None:
                    resolved = False
                    new_path = ev.new_name
                else:
                    new_path = join(d, ev.new_name)
                _set_new_path(ev, new_path)
            _set_path(ev, new_path or old_path)
            _set_path_resolved(ev, resolved)
            return
        dfid = ev.dfid
        if dfid is not None:
            d = dm.dir_at(dfid, i)
            _set_dir_path(ev, d)
            if d is None:
                _set_path(ev, ev.name)
                _set_path_resolved(ev, False)
            else:
                _set_path(ev, join(d, ev.name))
                _set_path_resolved(ev, True)
            return
        fid = ev.fid
        if fid is not None:
            gone = bool(ev.ev_types & _DELETE_SELF)
            p = dm.object_at(fid, i, gone=gone, moved_to=_moved_to(ev, prev))
            _set_path(ev, p)
            _set_path_resolved(ev, p is not None)

    def fill_process(self, ev: FanotifyData) -> bool:
        """Read ``exe`` and ``cwd`` of a fresh event that has neither; True if it read them.

        For the dispatcher, when a rule needs them and the group does not
        read them for every event (``proc_info=False``).  The event is not
        handed to anyone yet.
        """
        if self.proc_info or ev.exe is not None or ev.cwd is not None:
            return False
        exe, cwd = process_info(ev.pid, ev.pidfd, pidfd_reported=self._pidfd_reported)
        _set_exe(ev, exe)
        _set_cwd(ev, cwd)
        return True

    # -- the group's own events --------------------------------------------

    def is_own(self, pid: int) -> bool:
        """True if ``pid`` (a thread id with REPORT_TID) is this process."""
        if pid in self.own_tids:
            return True
        if not self._pid_is_tid:
            return False
        # With REPORT_TID, ``pid`` is a thread id.  A live thread of ours is
        # listed under /proc/self/task.  One that has exited since the event
        # is still ours if it was recorded (every thread started through
        # ``threading`` is, see _threads.py) and no other process holds its
        # id; once the id is reused (it shows under /proc again), it is never
        # trusted: that process's permission events must not be allowed unseen.
        if os.path.exists(f"/proc/self/task/{pid}"):
            _threads.remember(pid)
            return True
        if _threads.known(pid):
            if os.path.exists(f"/proc/{pid}"):
                _threads.forget(pid)
                return False
            return True
        return False

    def take_own(self, ev: FanotifyData) -> bool:
        """If ``ev`` is the group's own (and ``ignore_own``), allow and close it; True then."""
        if not self.ignore_own or not self.is_own(ev.pid):
            return False
        self._drop_own(ev)
        return True

    def _drop_own(self, ev: FanotifyData) -> None:
        self._counters.own_events += 1
        if ev._owns & UNANSWERED:
            # Allow at once, so the agent can read the file it judges.
            _set_owns(ev, ev._owns & ~UNANSWERED)
            try:
                _ffi.respond(self._fd, ev.fd, _ALLOW)
            except OSError as exc:
                log.error("could not allow own permission event: %s", exc)
        ev.close()

    # -- malformed events and leftovers --------------------------------------

    def bad_event(self, err: ParseError) -> None:
        """Count, release and log a malformed event."""
        self._counters.parse_errors += 1
        # Answer first, then close: a malformed permission event must not hang
        # the process that caused it.
        if err.fd >= 0:
            if err.mask & _PERM:
                try:
                    _ffi.respond(self._fd, err.fd, _ALLOW)
                except OSError:
                    pass
            try:
                os.close(err.fd)
            except OSError:
                pass
        if err.pidfd >= 0:
            try:
                os.close(err.pidfd)
            except OSError:
                pass
        log.error("dropped a malformed fanotify event: %s", err)

    def leftovers(self, fd: int, buf: bytearray) -> Iterator[FanotifyData]:
        """Events still queued in the kernel, read from ``fd`` into ``buf``.

        For the paths that must answer them outside the reader (close, the
        watchdog thread): decoded by the pure parser, which keeps no state
        between calls, so another thread may use it while the loop reads.
        Malformed events are handled as in a normal read; the caller passes
        each event to :meth:`take_own` first.
        """
        for _ in range(_LEFTOVER_READS):
            try:
                n = self.fdguard.read(fd, memoryview(buf))
            except BlockingIOError:
                return
            except OSError as exc:
                # Counted (and logged) like the reader's: EMFILE here means the
                # kernel denied a permission event; the next read may succeed.
                if retryable(exc) and self.fdguard.read_failed(exc):
                    continue
                log.error("reading leftover fanotify events failed: %s", exc)
                return
            if n <= 0:
                return
            events, errors = parse_lenient(
                memoryview(buf)[:n], owned=True, pid_is_tid=self._pid_is_tid,
                fd_error=self._fd_error,
            )
            for err in errors:
                self.bad_event(err)
            yield from events

    def close(self) -> None:
        """Release the mount fds, the descriptor reserve and the decoder's /proc/self/fd."""
        self.resolver.close()
        self.fdguard.close()
        if self.fast is not None:
            self.fast.close()
