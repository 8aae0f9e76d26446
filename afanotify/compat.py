"""pyfanotify's API on afanotify: change one import line and legacy code runs.

``import afanotify.compat as pyfanotify`` gives the names pyfanotify's
documentation promises -- :class:`Fanotify`, :class:`FanoRule`,
:class:`FanotifyClient`, :class:`FanotifyData`, :func:`evt_to_str` and the
``FAN_*`` constants -- with the same parameters, defaults and exceptions.

How it differs inside.  pyfanotify forks a worker process that sends every
event to the client as a unix datagram; a client socket holds 10 of them,
and when it is full the worker sleeps 250 ms, retries three times, then drops
the event without a word.  Here :meth:`Fanotify.start` runs the native engine
(an :class:`afanotify.Fanotify` group) on a background thread with its own
event loop.  Each compat client is a native :class:`afanotify.FanotifyClient`
(which does the rule matching and fan-out) plus a pump task that moves its
events into a bounded, thread-safe mailbox; the client's ``sock`` is one end
of a socket pair that is readable while events wait, so ``select.poll()``
loops written for pyfanotify keep working.  When a mailbox is full the pump
waits, the native client's queue fills, the group stops reading, and the
backlog waits in the kernel's queue (the group is made with
FAN_UNLIMITED_QUEUE, as pyfanotify's is): nothing is dropped unless a client
asks for a drop policy, and then every drop is counted and logged.

As in pyfanotify, events caused by this process or its descendants are not
delivered, and ``mark()`` logs a failure instead of raising.

Where behaviour differs from pyfanotify on purpose:

* Events that arrive while no client (or client-less rule) is connected stay
  in the kernel's queue and go to the first one that connects; pyfanotify's
  worker read and discarded them.  (pyfanotify also flushed the inode and
  mount marks when its last rule disconnected; this layer keeps the marks.)
* ``FanotifyData.path`` is a str as documented (pyfanotify 0.3 made it a
  tuple); a rename carries both sides in ``old_path`` and ``new_path``.
* With ``init_fid=True`` events carry no fd, even for ``pass_fd`` rules.
* ``get_events()`` never loses an event: one the loop did not reach (it broke
  out early) stays queued.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NamedTuple, Union

from . import _ffi
from . import flags as _flags
from ._compat_data import FanotifyData as FanotifyData
from ._compat_engine import _Engine
from ._compat_fnchild import FnChild
from ._compat_mailbox import ClientStatistics as ClientStatistics
from ._compat_mailbox import _Mailbox
from ._resource import ClosingContext, WarnsUnclosed, warn_and_close
from .client import DispatchStatistics
from .exceptions import ClosedResourceError
from .flags import Event, InitFlag
from .group import Fanotify as _Group
from .group import GroupStatistics, MarkKind
from .rules import FanoRule as _NativeRule

__all__ = [
    "Fanotify",
    "FanoRule",
    "FanotifyClient",
    "FanotifyData",
    "CompatStatistics",
    "ClientStatistics",
    "evt_to_str",
]


class FanoRule(_NativeRule):
    """:class:`afanotify.FanoRule` as pyfanotify takes it: a malformed pattern
    (an unclosed ``[`` or ``@(``) is accepted with a logged warning instead of
    raising ``ValueError``; glibc matches the malformed part as literal text."""

    __slots__ = ()
    _lenient_patterns = True

log = logging.getLogger(__name__)

# Defined in private modules; shown (repr, pickle, help) under this one, as before.
FanotifyData.__module__ = ClientStatistics.__module__ = __name__

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# -- constants ----------------------------------------------------------------
#
# pyfanotify exports the kernel's FAN_* names plus three composites of its own.
# Its FAN_ALL_EVENTS is wider than the kernel header's old one: it includes
# OPEN_EXEC, ONDIR and EVENT_ON_CHILD, so a directory marked with the default
# mask reports its children too.  Legacy code relies on that, so it is kept.

FAN_ACCESS = _flags.FAN_ACCESS
FAN_MODIFY = _flags.FAN_MODIFY
FAN_ATTRIB = _flags.FAN_ATTRIB
FAN_CLOSE_WRITE = _flags.FAN_CLOSE_WRITE
FAN_CLOSE_NOWRITE = _flags.FAN_CLOSE_NOWRITE
FAN_OPEN = _flags.FAN_OPEN
FAN_MOVED_FROM = _flags.FAN_MOVED_FROM
FAN_MOVED_TO = _flags.FAN_MOVED_TO
FAN_CREATE = _flags.FAN_CREATE
FAN_DELETE = _flags.FAN_DELETE
FAN_DELETE_SELF = _flags.FAN_DELETE_SELF
FAN_MOVE_SELF = _flags.FAN_MOVE_SELF
FAN_OPEN_EXEC = _flags.FAN_OPEN_EXEC
FAN_Q_OVERFLOW = _flags.FAN_Q_OVERFLOW
FAN_FS_ERROR = _flags.FAN_FS_ERROR
FAN_OPEN_PERM = _flags.FAN_OPEN_PERM
FAN_ACCESS_PERM = _flags.FAN_ACCESS_PERM
FAN_OPEN_EXEC_PERM = _flags.FAN_OPEN_EXEC_PERM
FAN_PRE_ACCESS = _flags.FAN_PRE_ACCESS
FAN_RENAME = _flags.FAN_RENAME
FAN_ONDIR = _flags.FAN_ONDIR
FAN_EVENT_ON_CHILD = _flags.FAN_EVENT_ON_CHILD
FAN_CLOSE = _flags.FAN_CLOSE
FAN_MOVE = _flags.FAN_MOVE
FAN_ALL_EVENTS = (
    FAN_ACCESS | FAN_MODIFY | FAN_OPEN | FAN_OPEN_EXEC | FAN_CLOSE | FAN_ONDIR
    | FAN_EVENT_ON_CHILD
)
FAN_ALL_PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM
FAN_ALL_FID_EVENTS = (
    FAN_ATTRIB | FAN_MOVE | FAN_CREATE | FAN_DELETE | FAN_DELETE_SELF | FAN_MOVE_SELF
    | FAN_RENAME | FAN_ONDIR | FAN_EVENT_ON_CHILD
)

FAN_CLOEXEC = _flags.FAN_CLOEXEC
FAN_NONBLOCK = _flags.FAN_NONBLOCK
FAN_CLASS_NOTIF = _flags.FAN_CLASS_NOTIF
FAN_CLASS_CONTENT = _flags.FAN_CLASS_CONTENT
FAN_CLASS_PRE_CONTENT = _flags.FAN_CLASS_PRE_CONTENT
FAN_UNLIMITED_QUEUE = _flags.FAN_UNLIMITED_QUEUE
FAN_UNLIMITED_MARKS = _flags.FAN_UNLIMITED_MARKS
FAN_ENABLE_AUDIT = _flags.FAN_ENABLE_AUDIT
FAN_REPORT_PIDFD = _flags.FAN_REPORT_PIDFD
FAN_REPORT_TID = _flags.FAN_REPORT_TID
FAN_REPORT_FID = _flags.FAN_REPORT_FID
FAN_REPORT_DIR_FID = _flags.FAN_REPORT_DIR_FID
FAN_REPORT_NAME = _flags.FAN_REPORT_NAME
FAN_REPORT_DFID_NAME = _flags.FAN_REPORT_DFID_NAME

FAN_MARK_ADD = _flags.FAN_MARK_ADD
FAN_MARK_REMOVE = _flags.FAN_MARK_REMOVE
FAN_MARK_DONT_FOLLOW = _flags.FAN_MARK_DONT_FOLLOW
FAN_MARK_ONLYDIR = _flags.FAN_MARK_ONLYDIR
FAN_MARK_IGNORED_MASK = _flags.FAN_MARK_IGNORED_MASK
FAN_MARK_IGNORED_SURV_MODIFY = _flags.FAN_MARK_IGNORED_SURV_MODIFY
FAN_MARK_FLUSH = _flags.FAN_MARK_FLUSH
FAN_MARK_EVICTABLE = _flags.FAN_MARK_EVICTABLE
FAN_MARK_IGNORE = _flags.FAN_MARK_IGNORE
FAN_MARK_INODE = _flags.FAN_MARK_INODE
FAN_MARK_MOUNT = _flags.FAN_MARK_MOUNT
FAN_MARK_FILESYSTEM = _flags.FAN_MARK_FILESYSTEM

FANOTIFY_METADATA_VERSION = _flags.FANOTIFY_METADATA_VERSION
FAN_ALLOW = _flags.FAN_ALLOW
FAN_DENY = _flags.FAN_DENY
FAN_AUDIT = _flags.FAN_AUDIT
FAN_NOFD = _flags.FAN_NOFD
AT_FDCWD: int = _ffi.lib.AT_FDCWD

# pyfanotify opens event fds with these flags; O_NOATIME keeps the watcher's
# own reads from touching access times.
_EVENT_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_LARGEFILE", 0) | os.O_NOATIME
_GROUP_FLAGS = InitFlag.UNLIMITED_QUEUE | InitFlag.UNLIMITED_MARKS
_FID_FLAGS = InitFlag.REPORT_FID | InitFlag.REPORT_DFID_NAME

_IS_TYPES = ("", "mp", "fs", "dir")
#: Events a client's get_events() takes from its mailbox per lock round.
_TAKE = 256


# -- event names ---------------------------------------------------------------


# pyfanotify's spelling: lower case, and "on_child" (for EVENT_ON_CHILD) last.
_EVENT_NAMES = (
    *((bit, name.lower()) for bit, name in _flags._EVENT_BITS if bit != Event.EVENT_ON_CHILD),
    (int(Event.EVENT_ON_CHILD), "on_child"),
)


def evt_to_str(mask: int) -> str:
    """The lower-case names of the bits in ``mask`` joined by ``|``, as pyfanotify writes them.

    ``evt_to_str(FAN_OPEN | FAN_CLOSE_NOWRITE) == "close_nowrite|open"``;
    bits no event names are appended in hex.
    """
    return _flags._bit_names(mask, _EVENT_NAMES)


# -- Fanotify ----------------------------------------------------------------------


class CompatStatistics(NamedTuple):
    """A snapshot of a compat engine's counters."""

    #: The native group's counters.
    group: GroupStatistics
    #: The native fan-out's counters (matching happens there).
    dispatch: DispatchStatistics
    #: Events caused by descendants of this process, not delivered.
    descendant_events: int
    #: Times the engine waited for a full client mailbox (backpressure).
    waits: int
    #: Events for client-less rules whose socket address nobody had bound.
    datagrams_dropped: int


_live: weakref.WeakSet[Fanotify] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for fan in list(_live):
        try:
            fan.stop()
        except Exception:  # at exit, one failure must not keep the others running
            log.exception("stopping %r at exit failed", fan)


atexit.register(_stop_all_at_exit)


class Fanotify:
    """pyfanotify's ``Fanotify``: one fanotify group, its marks, and the engine that serves clients.

    The engine runs on a background thread with its own event loop once
    :meth:`start` is called; :meth:`stop` ends it (and runs at interpreter
    exit for every engine still running).

    :param init_fid: report directory-entry events (FAN_CREATE, FAN_DELETE,
        FAN_MOVE, FAN_ATTRIB, FAN_RENAME): a FAN_REPORT_FID |
        FAN_REPORT_DFID_NAME group.  Events then carry paths but no fd.
    :param log: the logger for errors (``mark()`` failures, ``fn`` failures);
        by default this module's logger.  Nothing is written to stdout.
    :param fn: called as ``fn(*fn_args)`` every ``fn_timeout`` seconds (every
        second when ``fn_timeout`` is 0) while the engine runs.  Exceptions
        are logged.  Where it runs is ``fn_in``'s choice.
    :param fn_args: a tuple of arguments for ``fn``.
    :param fn_timeout: seconds between calls of ``fn``.
    :param maxsize: (afanotify) bound of the group's own event queue.
    :param fn_in: (afanotify) ``"thread"`` (this module's default): ``fn``
        runs on the engine thread from :meth:`start` on.  ``"process"``
        (:mod:`afanotify.pyfanotify`'s default, pyfanotify 0.3.0's way): ``fn``
        runs in a single-threaded child process forked by :meth:`start`, which
        shares the group (its marks count) and can ``setns(2)`` into another
        mount namespace; it runs only while a rule is connected, at once when
        the first one connects.  Its changes to memory stay in the child.
    :raises OSError: if fanotify is not available (no kernel support, no
        CAP_SYS_ADMIN) or fanotify_init fails otherwise
    :raises TypeError: if ``fn`` is not callable or ``fn_args`` is not a tuple
    :raises ValueError: if ``fn_timeout`` is negative, or ``fn_in`` is neither
        ``"thread"`` nor ``"process"``
    """

    #: Where ``fn`` runs unless ``fn_in`` says otherwise.
    FN_IN: Literal["thread", "process"] = "thread"

    def __init__(
        self,
        init_fid: bool = False,
        log: logging.Logger | None = None,
        fn: Callable[..., object] | None = None,
        fn_args: tuple[Any, ...] = (),
        fn_timeout: float = 0,
        *,
        maxsize: int = 8192,
        fn_in: Literal["thread", "process"] | None = None,
    ) -> None:
        self._state = "stopped"  # until the group exists, nothing to stop
        fn_in = self.FN_IN if fn_in is None else fn_in
        if fn_in not in ("thread", "process"):
            raise ValueError(f"fn_in must be 'thread' or 'process', got {fn_in!r}")
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable or None, not {type(fn).__name__}")
        if not isinstance(fn_args, tuple):
            raise TypeError(
                f"fn_args must be a tuple, not {type(fn_args).__name__}: write (arg,) for one"
            )
        if isinstance(fn_timeout, bool) or not isinstance(fn_timeout, (int, float)):
            raise TypeError(
                f"fn_timeout must be a number of seconds, not {type(fn_timeout).__name__}"
            )
        if fn_timeout < 0:
            raise ValueError(f"fn_timeout must be >= 0 seconds, got {fn_timeout}")
        self._log: logging.Logger = log if log is not None else globals()["log"]
        self._with_fid = bool(init_fid)
        flags = _GROUP_FLAGS | (_FID_FLAGS if init_fid else 0)
        try:
            self._group = _Group(flags, _EVENT_FLAGS, maxsize=maxsize)
        except OSError as exc:
            self._log.error("Fanotify: fanotify_init failed: %s", exc)
            raise
        self._state = "ready"
        self._state_lock = threading.Lock()
        self._mark_lock = threading.Lock()
        self._fn_child: FnChild | None = None
        if fn is not None and fn_in == "process":
            self._fn_child = FnChild(fn, fn_args, float(fn_timeout), self._log)
            fn = None  # not on the engine thread
        self._engine = _Engine(
            self._group, self._log, self._mark_lock, fn, fn_args, float(fn_timeout)
        )
        self._thread: threading.Thread | None = None
        _live.add(self)

    # -- properties ------------------------------------------------------

    @property
    def with_fid(self) -> bool:
        """True when the group reports directory-entry events (``init_fid=True``)."""
        return self._with_fid

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` while the engine thread lives."""
        t = self._thread
        return self._state == "running" and t is not None and t.is_alive()

    @property
    def group(self) -> _Group:
        """The native :class:`afanotify.Fanotify` group underneath."""
        return self._group

    def statistics(self) -> CompatStatistics:
        """The engine's counters (group, fan-out, descendants filtered, backpressure waits)."""
        engine = self._engine
        return CompatStatistics(
            self._group.stats, self._group.dispatch_stats, engine.descendant_events,
            engine.waits, engine.datagrams_dropped,
        )

    def __repr__(self) -> str:
        return f"<afanotify.compat.Fanotify {self._state} with_fid={self._with_fid}>"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the engine on a background thread.  A second call does nothing.

        :raises ClosedResourceError: if :meth:`stop` was called before
        """
        with self._state_lock:
            if self._state == "running":
                return
            if self._state == "stopped":
                raise ClosedResourceError("this Fanotify was stopped: make a new one")
            if self._state == "fn-child":
                return
            if self._fn_child is not None:
                # Before the engine thread exists: the child has only one.
                self._fn_child.start(self._in_fn_child)
            self._state = "running"
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._engine.run, args=(ready,), name="afanotify-compat", daemon=True
            )
            self._thread.start()
        ready.wait()
        self._sync_fn_child()

    def _in_fn_child(self) -> None:
        # In fn's child, right after the fork: locks another thread of the
        # parent may have held are made new, and the object only marks.
        self._state = "fn-child"
        self._state_lock = threading.Lock()
        self._mark_lock = threading.Lock()
        _live.discard(self)

    def _sync_fn_child(self) -> None:
        child = self._fn_child
        if child is not None and self._state == "running":
            child.set_active(self._engine.rule_count() > 0)

    def stop(self) -> None:
        """Stop the engine, join its thread and close the group.  Idempotent.

        Clients stay open (close them with :meth:`FanotifyClient.close`);
        events already in their mailboxes can still be read.
        """
        with self._state_lock:
            state = self._state
            if state in ("stopped", "fn-child"):
                return
            self._state = "stopped"
        _live.discard(self)
        if self._fn_child is not None:
            self._fn_child.stop()
        thread, loop = self._thread, self._engine.loop
        if state == "running" and thread is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(self._engine.request_stop)
            except RuntimeError:  # the loop already ended (the engine failed)
                pass
            if thread is not threading.current_thread():
                thread.join()
        with self._mark_lock:
            self._group.close()
        self._engine.release_idle()

    def __enter__(self) -> Fanotify:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if getattr(self, "_state", "stopped") != "stopped":
            warn_and_close(self, self.stop, "unstopped")

    # -- rules -------------------------------------------------------------

    def connect(self, rule: _NativeRule) -> None:
        """Deliver events matching ``rule`` to the :class:`FanotifyClient` that made it.

        A rule with the name of a connected rule replaces it.  A rule no
        client made gets pyfanotify's datagrams: one per event, sent to the
        unix socket bound at the abstract address ``"\\0" + rule.name``.

        :raises TypeError: if ``rule`` is not a :class:`FanoRule`
        :raises ClosedResourceError: if the Fanotify was stopped
        """
        if not isinstance(rule, _NativeRule):
            raise TypeError(f"connect() takes a FanoRule, not {type(rule).__name__}")
        if self._state == "stopped":
            raise ClosedResourceError("this Fanotify was stopped")
        self._in_loop(self._engine.connect_now, rule, self._engine.box_for(rule))
        self._sync_fn_child()

    def disconnect(self, rule: _NativeRule) -> None:
        """Stop delivering events for ``rule`` (matched by name).

        :raises TypeError: if ``rule`` is not a :class:`FanoRule`
        """
        if not isinstance(rule, _NativeRule):
            raise TypeError(f"disconnect() takes a FanoRule, not {type(rule).__name__}")
        self._in_loop(self._engine.disconnect_now, rule.name)
        self._sync_fn_child()

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        # Clients are created and closed on the engine's thread, the only one
        # that touches the group's dispatcher once the engine runs.
        loop = self._engine.loop
        if (
            self._state != "running" or loop is None or loop.is_closed()
            or threading.current_thread() is self._thread
        ):
            fn(*args)
            return

        async def call() -> None:
            fn(*args)

        try:
            fut = asyncio.run_coroutine_threadsafe(call(), loop)
        except RuntimeError:  # the loop closed meanwhile
            fn(*args)
            return
        fut.result()

    def _debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log ``msg % args`` at DEBUG to ``log``: pyfanotify's private helper, which its
        ``all_mountpoints`` example calls.  (pyfanotify printed to stdout without a
        logger; here the default is this module's logger.)"""
        self._log.debug(msg, *args, **kwargs)

    def _attach(self, name: str | bytes, box: _Mailbox) -> None:
        self._engine.attach(name, box)

    def _detach(self, name: str | bytes) -> None:
        self._engine.detach(name)

    # -- marks -------------------------------------------------------------

    def mark(
        self,
        path: PathArg | Iterable[PathArg],
        ev_types: int = FAN_ALL_EVENTS,
        is_type: str = "",
        dont_follow: bool = False,
        as_ignore: bool = False,
        remove: bool = False,
        dirfd: int = AT_FDCWD,
    ) -> None:
        """Add ``ev_types`` to (or, with ``remove``, take them from) the mark on ``path``.

        See fanotify_mark(2).  A failure is logged to ``log`` and does not
        raise, as in pyfanotify.

        :param path: a path, or an iterable of paths (each is marked).
        :param ev_types: the event mask; must not be empty.
        :param is_type: ``''`` the inode, ``'mp'`` the mount point, ``'fs'``
            the filesystem, ``'dir'`` the inode, which must be a directory.
        :param dont_follow: mark a symbolic link itself.
        :param as_ignore: add to (or remove from) the ignore mask instead; it
            survives modification, as pyfanotify's does.
        :param remove: remove ``ev_types`` instead of adding them.
        :param dirfd: directory fd for a relative ``path``.
        :raises ValueError: if ``is_type`` is not one of the four values
        :raises NotImplementedError: for permission events (as pyfanotify)
        :raises TypeError: if ``path`` is neither a path nor an iterable of paths
        """
        if is_type not in _IS_TYPES:
            raise ValueError(f"is_type must be one of '', 'mp', 'fs', 'dir'; got {is_type!r}")
        if isinstance(ev_types, bool) or not isinstance(ev_types, int):
            raise TypeError(f"ev_types must be an int mask, not {type(ev_types).__name__}")
        if ev_types & FAN_ALL_PERM_EVENTS:
            self._log.error("Fanotify: mark(): permission events are not supported")
            raise NotImplementedError(
                "permission events are not supported by afanotify.compat (nor by pyfanotify): "
                "use afanotify.Fanotify with InitFlag.CLASS_CONTENT"
            )
        if isinstance(path, (str, bytes, os.PathLike)):
            paths: Iterable[PathArg] = (path,)
        elif isinstance(path, Iterable):
            paths = path
        else:
            raise TypeError(
                f"path must be a path or an iterable of paths, not {type(path).__name__}"
            )
        kind: MarkKind = (
            "mount" if is_type == "mp" else "filesystem" if is_type == "fs" else "inode"
        )
        onlydir = is_type == "dir"
        use_dirfd = None if dirfd == AT_FDCWD else dirfd
        for p in paths:
            try:
                with self._mark_lock:
                    if remove:
                        self._group.unmark(
                            p, ev_types, kind, ignore=as_ignore, ignore_style="old",
                            dont_follow=dont_follow, onlydir=onlydir, dirfd=use_dirfd,
                        )
                    else:
                        self._group.mark(
                            p, ev_types, kind, ignore=as_ignore, ignore_style="old",
                            survive_modify=as_ignore, dont_follow=dont_follow,
                            onlydir=onlydir, dirfd=use_dirfd,
                        )
            except (OSError, ValueError, ClosedResourceError) as exc:
                self._log.error("Fanotify: mark(%r) failed: %s", p, exc)

    def flush(self, do_non_mounts: bool = True, do_mounts: bool = True, do_fs: bool = True) -> None:
        """Remove all inode marks, all mount marks and/or all filesystem marks.

        Failures are logged, as in pyfanotify.
        """
        kinds: tuple[tuple[bool, MarkKind], ...] = (
            (do_non_mounts, "inode"), (do_mounts, "mount"), (do_fs, "filesystem"),
        )
        for wanted, kind in kinds:
            if not wanted:
                continue
            try:
                with self._mark_lock:
                    self._group.flush(kind)
            except (OSError, ClosedResourceError) as exc:
                self._log.error("Fanotify: flush(%s marks) failed: %s", kind, exc)


# -- clients -----------------------------------------------------------------------

_POLICIES = ("block", "drop_oldest", "drop_newest")


class FanotifyClient(ClosingContext, WarnsUnclosed):
    """pyfanotify's ``FanotifyClient``: a rule plus a mailbox of the events it matched.

    ``sock`` has a ``fileno()`` that polls readable while events wait, so
    ``select.poll()`` loops written for pyfanotify work unchanged;
    :meth:`get_events` yields what is waiting without blocking.  Matching
    and fan-out are the native :class:`afanotify.FanotifyClient`'s.

    :param fanotify: the :class:`Fanotify` to receive from.
    :param rkw: keyword arguments for :class:`FanoRule`, except ``name``: the
        rule's name is generated (from ``name`` if given) and kept in ``rname``.
    :param maxsize: (afanotify) bound of the mailbox.
    :param overflow: (afanotify) what a full mailbox does: ``"block"`` (the
        default) makes the engine wait, so the kernel holds the backlog and
        nothing is lost; ``"drop_oldest"`` / ``"drop_newest"`` drop, count
        (``statistics().dropped``) and log.
    :raises TypeError: if ``fanotify`` is not a compat :class:`Fanotify`, or as
        :class:`FanoRule` does (``pids`` not a set, list or tuple)
    :raises ValueError: as :class:`FanoRule` does (no criterion given)
    :raises ClosedResourceError: if ``fanotify`` was stopped
    """

    def __init__(
        self,
        fanotify: Fanotify,
        *,
        maxsize: int = 8192,
        overflow: str = "block",
        **rkw: Any,
    ) -> None:
        self._closed = True
        if not isinstance(fanotify, Fanotify):
            raise TypeError(
                f"fanotify must be an afanotify.compat.Fanotify, not {type(fanotify).__name__}"
            )
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        if overflow not in _POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(_POLICIES)}; got {overflow!r}")
        name = rkw.pop("name", None)
        seed = os.fsencode(name) if isinstance(name, str) else name
        self.fanotify = fanotify
        self.rname: bytes = hashlib.sha256(seed or os.urandom(32)).hexdigest().encode()
        self.rule = FanoRule(self.rname, **rkw)
        box = _Mailbox(maxsize, overflow)
        self._box = box
        self.sock: socket.socket = box.reader
        fanotify._attach(self.rname, box)
        try:
            fanotify.connect(self.rule)
        except BaseException:
            fanotify._detach(self.rname)
            box.close()
            raise
        self._closed = False

    def get_events(self) -> Iterator[FanotifyData]:
        """Yield the events waiting for this client, without blocking; stops when none is left.

        Events the loop did not reach (it broke out early) stay queued for
        the next call.
        """
        box = self._box
        while True:
            batch = box.take(_TAKE)
            if not batch:
                return
            pos = 0
            try:
                while pos < len(batch):
                    ev = batch[pos]
                    pos += 1
                    yield ev
            finally:
                if pos < len(batch):
                    box.unget(batch[pos:])

    def statistics(self) -> ClientStatistics:
        """This client's mailbox counters."""
        return self._box.statistics()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Disconnect from the :class:`Fanotify` and release what is still queued.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.fanotify.disconnect(self.rule)
        finally:
            self.fanotify._detach(self.rname)
            left = self._box.close()
            if left:
                log.debug("compat client closed with %d events unread", left)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<afanotify.compat.FanotifyClient {state} rule={self.rule!r}>"
