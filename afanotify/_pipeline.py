"""The decode pipeline: kernel bytes in, events ready for consumers out.

This is the one place where events are made and filled in.  A batch is
decoded by the C walk and builder (``afanotify/_fastparse.py``, which hands
what it does not build to the reference parser) or, without them, by the
pure parser (``afanotify/_parser.py``) alone.  Then, before any consumer
sees an event, this module

1. skips the group's own events (answering own permission events ALLOW),
2. resolves paths: from event fds (``/proc/self/fd``), and in FID modes from
   file handles through the group's :class:`~afanotify._proc.HandleResolver`
   (the C builder already filled the common DFID_NAME shape),
3. reads the process details (``exe``, ``cwd``) when asked,
4. registers each unanswered permission event with the group's
   :class:`~afanotify.permission.PermissionTracker`, which becomes its
   :class:`~afanotify.events.Responder`.

The group's reader, its close drain and the permission watchdog all read
through here.  Fields are set with each slot's own descriptor: the events
are frozen, and nobody else holds them yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from . import _fastparse, _ffi
from ._parser import parse_lenient
from ._proc import HandleResolver, fd_path, process_info
from ._static import StaticRules
from .events import UNANSWERED, FanotifyData
from .exceptions import ParseError
from .flags import DIR_CHANGE_EVENTS, FID_INIT_FLAGS, PERM_EVENTS, Event, InitFlag, Response
from .permission import PermissionTracker

__all__ = ["Counters", "Pipeline"]

log = logging.getLogger(__name__)

_OVERFLOW = int(Event.Q_OVERFLOW)
_DIR_CHANGE = int(DIR_CHANGE_EVENTS)
_ONDIR = int(Event.ONDIR)
_PERM = int(PERM_EVENTS)
_ALLOW = int(Response.ALLOW)
#: Thread ids of this process remembered after they were seen alive.
_SEEN_TIDS_MAX = 4096
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
        "bytes_read", "lost",
    )

    def __init__(self) -> None:
        self.events_read = self.events_delivered = self.overflows = 0
        self.parse_errors = self.own_events = self.reads = self.bytes_read = 0
        self.lost = 0


def join(directory: str, name: str | None) -> str:
    """``directory/name`` as fanotify's DFID_NAME means it (``.`` is the directory itself)."""
    if not name or name == ".":
        return directory
    if directory == "/":
        return "/" + name
    return directory + "/" + name


def _fast_decoder(bufsize: int) -> _fastparse.Decoder | None:
    """The C batch decoder, or None when this core lacks it or AFANOTIFY_PURE_PARSER is set.

    The pure parser stays the reference and the fallback: both give the same
    events (tests/test_fastparse_differential.py).
    """
    if os.environ.get("AFANOTIFY_PURE_PARSER") or not _fastparse.available():
        return None
    return _fastparse.Decoder(bufsize)


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
        self.resolver = HandleResolver(handle_cache_size)
        self.ignore_own = ignore_own
        self._pid = os.getpid()
        #: Ids that are always this process (thread ids are checked per event).
        self.own_tids: frozenset[int] = frozenset((self._pid,))
        #: Thread ids seen live in this process (REPORT_TID), see is_own.
        self.seen_tids: set[int] = set()
        self.fast = _fast_decoder(bufsize)
        #: Static permission rules decided in C before decoding (``_static.py``).
        self.static: StaticRules | None = None
        if self.fast is not None:
            # Our events are frozen and hold no cycles (see Decoder.untrack).
            self.fast.untrack = True
            if self._fd_paths:
                self.fast.open_fd_dir()  # kept until close(), not per read

    # -- the reader's batches ----------------------------------------------

    def decode(
        self, view: memoryview, loop: asyncio.AbstractEventLoop | None
    ) -> list[FanotifyData]:
        """The events of one read, filled in, own ones and malformed ones removed."""
        if self.static is not None:
            # Answered in C, gone from the buffer: no objects for those.
            view = self.static.apply(self._fd, view)
            if not view:
                return []
        fast = self.fast
        c = self._counters
        # Events [0, done) of the batch come with every field filled in C:
        # the FID+name shape with its paths (fd paths are filled for all).
        done = 0
        if fast is not None:
            dir_path = None
            if self._fid_paths and self.resolver.caching:
                dir_path = self.resolver.resolve
            events, errors = fast.decode(
                view, len(view), owned=True, pid_is_tid=self._pid_is_tid,
                fd_error=self._fd_error, resolve_fd_paths=self._fd_paths,
                dir_path=dir_path, skip_pids=self.own_tids if self.ignore_own else (),
            )  # fmt: skip
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
        c.events_read += len(events)
        if done == len(events):
            return events
        out = events[:done]
        append = out.append
        # Per-event work below touches only locals: it runs for every event.
        own = self.own_tids if self.ignore_own else None
        pid_is_tid = self._pid_is_tid
        proc_info = self.proc_info
        fid_paths = self._fid_paths
        perm = self._perm
        for idx in range(done, len(events)):
            ev = events[idx]
            mask = ev.ev_types
            if mask & _OVERFLOW:
                c.overflows += 1
                log.warning("fanotify queue overflowed: the kernel dropped events")
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
            elif fid_paths and (
                idx >= resolved_upto or ev.dfid is None or ev.old_dfid is not None
                or ev.new_dfid is not None
            ):  # fmt: skip
                # Not filled by the C builder (the cut, or another shape).
                self._resolve_fid(ev)
            if proc_info:
                exe, cwd = process_info(ev.pid, ev.pidfd, pidfd_reported=self._pidfd_reported)
                _set_exe(ev, exe)
                _set_cwd(ev, cwd)
            if ev._owns & UNANSWERED:
                _set_responder(ev, perm)
                perm.add(ev, loop)
            append(ev)
        return out

    def _resolve_fid(self, ev: FanotifyData) -> None:
        """Set the paths of a fresh FID event from its handles."""
        res = self.resolver
        mask = ev.ev_types
        if mask & _DIR_CHANGE and mask & _ONDIR:
            # A directory moved or went away: cached paths under it may be stale.
            res.invalidate()
        old_dfid = ev.old_dfid
        new_dfid = ev.new_dfid
        if old_dfid is not None or new_dfid is not None:
            resolved = True
            old_path = new_path = None
            if old_dfid is not None:
                d = res.resolve(old_dfid)
                if d is None:
                    resolved = False
                    old_path = ev.old_name
                else:
                    old_path = join(d, ev.old_name)
                _set_old_path(ev, old_path)
            if new_dfid is not None:
                d = res.resolve(new_dfid)
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
            d = res.resolve(dfid)
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
            p = res.resolve(fid, cache=False)
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
        # is still ours as long as no other process holds its id; once the id
        # is reused (it shows under /proc again), it is never trusted: that
        # process's permission events must not be allowed unseen.
        if os.path.exists(f"/proc/self/task/{pid}"):
            seen = self.seen_tids
            if len(seen) >= _SEEN_TIDS_MAX:
                seen.clear()
            seen.add(pid)
            return True
        if pid in self.seen_tids:
            if os.path.exists(f"/proc/{pid}"):
                self.seen_tids.discard(pid)
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
                n = os.readv(fd, (buf,))
            except OSError:
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
        """Release the resolver's mount fds and the decoder's /proc/self/fd."""
        self.resolver.close()
        if self.fast is not None:
            self.fast.close()
