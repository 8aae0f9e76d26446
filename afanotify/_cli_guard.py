"""``afanotify guard``: answer permission requests by rules.

The rules (the command line's, then a ``--rules`` file's, then
``--default``) are checked whole before anything is marked.  Then they are
compiled for the C path (``afanotify/_static.py``): every permission event
they decide is answered in the read that produced it, without a Python
object.  Events that reach Python anyway (a core without the C path) are
decided by the same rules in :meth:`GuardPolicy.decide`.

SIGHUP reads the rules file again and swaps the new rules in between two
reads, or keeps the old ones if the file is bad (and says so); it also
reopens ``--log``.  A guard that dies fails open: the kernel allows what
was waiting for it once its fd closes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable, Sequence

from ._cli_guard_log import LogFile, json_decision, stamp, text_decision
from ._cli_output import _err
from ._cli_run import _check_paths, _run_until_stopped
from ._rulesfile import RulesError, read_rules, rules_from_args
from ._static import Decision, StaticRule, StaticRules, StaticServer
from .events import FanotifyData
from .flags import Event, InitFlag, Response
from .group import Fanotify
from .permission import Verdict


class GuardPolicy:
    """The guard's rules in order (command line, then file) and its default verdict."""

    def __init__(
        self,
        rules: Sequence[StaticRule],
        default_allow: bool = True,
        *,
        audit_denials: bool = False,
        on_decided: Callable[[list[Decision]], None] | None = None,
        source: str = "",
    ) -> None:
        self.rules = list(rules)
        self.default_allow = default_allow
        self.source = source
        self.static = StaticRules(
            self.rules, default_allow, audit_denials=audit_denials, on_decided=on_decided
        )
        #: True when a rule looks at the process's executable (/proc must be read).
        self.needs_exe = any(r.exe is not None for r in self.rules)
        #: The permission events the rules need marked (OPEN_PERM at least).
        self.events = int(Event.OPEN_PERM)
        for r in self.rules:
            self.events |= r.event

    @property
    def default_text(self) -> str:
        return "--default " + ("allow" if self.default_allow else "deny")

    def decide(self, ev: FanotifyData) -> Decision:
        """The decision for one permission event that reached Python."""
        d = self.static.decide(ev)
        assert d is not None  # there is always a default
        return d

    def __repr__(self) -> str:
        rules = ", ".join(r.label for r in self.rules)
        return f"GuardPolicy([{rules}], default={'allow' if self.default_allow else 'deny'})"


def _verdict(d: Decision) -> Verdict:
    err = (d.response >> 24) & 0xFF
    audit = bool(d.response & Response.AUDIT)
    return Verdict(d.allowed, None if d.allowed or not err else err, audit)


class _Guard:
    """One guard run: its group, its rules (replaced on SIGHUP), its log and counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pre_content = bool(args.pre_content or args.pre_access)
        self.cli_rules = rules_from_args(args.deny, args.deny_exe, args.allow_exe)
        self.log = LogFile(args.log) if args.log else None
        #: Decisions of rule sets replaced by a reload, by label.
        self.carried: dict[str, int] = {}
        self.carried_allowed = self.carried_denied = 0
        self.reloads = self.failed_reloads = 0
        #: Decisions whose log line could not be written.
        self.lost_lines = 0
        self.policy = self.load()
        self.fan: Fanotify | None = None
        self.in_c = False
        self.server: StaticServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- rules -----------------------------------------------------------

    def load(self) -> GuardPolicy:
        """Read every rule; raises RulesError (naming the line) or OSError."""
        rules = list(self.cli_rules)
        if self.args.rules:
            rules += read_rules(self.args.rules, pre_content=self.pre_content,
                                audit=self.args.audit)
        for r in rules:
            if r.event & Event.PRE_ACCESS and not self.args.pre_access:
                raise RulesError(f"{r.label}: event=pre_access needs --pre-access")
            if r.range is not None and not self.args.pre_access:
                raise RulesError(f"{r.label}: range= matches PRE_ACCESS events: use --pre-access")
        return GuardPolicy(
            rules, self.args.default == "allow", audit_denials=self.args.audit,
            on_decided=self.record_soon if self.recording else None,
            source=self.args.rules or "",
        )

    @property
    def recording(self) -> bool:
        return self.log is not None or bool(self.args.log_denials)

    def reload(self) -> None:
        """SIGHUP: reopen --log, read the rules again; keep the old ones on an error."""
        if self.log is not None:
            self.log.reopen()
        if not self.args.rules:
            _err("SIGHUP: reopened the log (no --rules file to reload)")
            return
        old = self.policy
        try:
            new = self.load()
            assert self.fan is not None
            missing = new.events & ~old.events
            if missing:
                self.mark(missing)
        except (RulesError, OSError) as exc:
            self.failed_reloads += 1
            _err(f"reload failed, keeping the {len(old.rules)} rule(s) in force: {_why(exc)}")
            return
        self.fold(old)
        self.policy = new
        if self.server is not None:
            self.server.swap(new.static)
        elif self.in_c:
            self.fan.decide_statically(new.static)
        self.reloads += 1
        _err(f"reloaded {self.args.rules}: {len(new.rules)} rule(s)")

    def fold(self, old: GuardPolicy) -> None:
        for label, n in old.static.hits():
            if label.startswith("default "):
                label = "no rule matched (" + old.default_text + ")"
            self.carried[label] = self.carried.get(label, 0) + n
        self.carried_allowed += old.static.allowed
        self.carried_denied += old.static.denied

    def hits(self) -> list[tuple[str, int]]:
        counts = dict(self.carried)
        for label, n in self.policy.static.hits():
            if label.startswith("default "):
                label = "no rule matched (" + self.policy.default_text + ")"
            counts[label] = counts.get(label, 0) + n
        return list(counts.items())

    # -- the audit trail ---------------------------------------------------

    def record_soon(self, decisions: list[Decision]) -> None:
        """Log decisions on the loop's thread (they may come from the serving thread)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.record, decisions)

    def record(self, decisions: list[Decision]) -> None:
        now = stamp()
        if self.args.log_denials:
            for d in decisions:
                if not d.allowed:
                    why = d.rule.label if d.rule is not None else self.policy.default_text
                    _err(f"denied open of {d.path} by pid {d.pid} ({d.exe or '?'}): {why}")
        log = self.log
        if log is None:
            return
        if self.args.json:
            default = self.policy.default_text
            for d in decisions:
                log.write(json_decision(d, now, default))
        else:
            for d in decisions:
                log.write(text_decision(d, now))
        try:
            log.flush()
        except OSError as exc:
            # The verdicts were written; the lines are lost, and said to be.
            if not self.lost_lines:
                _err(f"cannot write the log {log.path}: {exc.strerror or exc}; counting "
                     "the lines lost (SIGHUP reopens it)")
            self.lost_lines += len(decisions)

    # -- the group -----------------------------------------------------------

    def mark(self, events: int) -> None:
        assert self.fan is not None
        for p in self.args.paths:
            mask = events
            if self.args.scope == "inode" and os.path.isdir(p):
                mask |= Event.EVENT_ON_CHILD
            self.fan.mark(p, mask, self.args.scope)

    def open(self) -> Fanotify:
        flags = InitFlag.CLASS_PRE_CONTENT if self.pre_content else InitFlag.CLASS_CONTENT
        if self.args.audit:
            flags |= InitFlag.ENABLE_AUDIT
        fan = self.fan = Fanotify(
            flags,
            proc_info=self.policy.needs_exe or self.recording,
            default_response=Response.ALLOW if self.policy.default_allow else Response.DENY,
            permission_timeout=self.args.deadline,
        )
        events = self.policy.events
        if self.args.pre_access:
            events |= Event.PRE_ACCESS
        self.mark(events)
        return fan

    def summary(self) -> None:
        assert self.fan is not None
        st = self.fan.permission_stats
        static = self.policy.static
        allowed = st.allowed + static.allowed + self.carried_allowed
        denied = st.denied + static.denied + self.carried_denied
        # The totals line comes last: scripts read the final line.
        _err("by rule: " + self.rule_counts())
        if static.write_errors:
            _err(f"{static.write_errors} response(s) the kernel refused")
        if self.lost_lines:
            _err(f"{self.lost_lines} decision(s) not logged: writing {self.args.log} failed")
        if static.fallbacks:
            _err(f"{static.fallbacks} response(s) with FAN_AUDIT or an errno the kernel "
                 "refused (EINVAL): sent as plain allow/deny instead")
        _err(
            f"{allowed + denied} opens answered: {allowed} allowed, {denied} "
            f"denied ({st.defaulted} by the default after a deadline, error or stop)"
        )

    def rule_counts(self) -> str:
        return ", ".join(f"{label}: {n}" for label, n in self.hits())


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)


def _cmd_guard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_paths(parser, args.paths)
    if args.json and not args.log:
        parser.error("--json formats the --log file: give --log FILE too")
    try:
        guard = _Guard(args)
    except (RulesError, OSError) as exc:
        _err(f"guard: error: {_why(exc)}")
        return 2
    try:
        fan = guard.open()

        async def run() -> str:
            loop = asyncio.get_running_loop()

            def handler(ev: FanotifyData) -> Verdict:
                d = guard.policy.decide(ev)
                if guard.recording:
                    # After the verdict is written: logging can wait, the process can't.
                    loop.call_soon(guard.record, [d])
                return _verdict(d)

            guard.loop = loop
            fan.on_permission(handler)
            failed: asyncio.Future[BaseException] = loop.create_future()

            def on_failure(exc: BaseException) -> None:
                def fail() -> None:
                    if not failed.done():
                        failed.set_result(exc)
                if not loop.is_closed():
                    loop.call_soon_threadsafe(fail)

            guard.server = fan.serve_statically(guard.policy.static, on_failure=on_failure)
            guard.in_c = guard.server is not None
            loop.add_signal_handler(signal.SIGHUP, guard.reload)
            ticker = None
            if args.stats_interval:
                ticker = asyncio.ensure_future(_stats(guard, args.stats_interval))

            async def serve() -> None:
                if guard.server is not None:
                    # Every event is decided on the serving thread, in C.  If it
                    # fails, the loop reads instead (the rules decided in C there too).
                    exc = await failed
                    _err(f"the serving thread failed ({exc!r}): reading from the event loop")
                    guard.server.stop()
                    guard.server = None
                guard.in_c = fan.decide_statically(guard.policy.static)
                # Permission events go to the handler; receiving starts the reader.
                while True:
                    (await fan.receive()).close()

            try:
                return await _run_until_stopped(
                    serve, args.timeout,
                    lambda: _err(
                        f"guarding {len(args.paths)} path(s): {args.scope} marks, "
                        f"{len(guard.policy.rules)} rule(s), default {args.default}"
                        + (" (decided in C)" if guard.in_c else "")
                    ),
                )
            finally:
                loop.remove_signal_handler(signal.SIGHUP)
                if ticker is not None:
                    ticker.cancel()
                if guard.server is not None:
                    guard.server.stop()  # before the group closes
                    guard.server = None

        asyncio.run(run())
    finally:
        # Closing answers what is pending, and what is still queued in the
        # kernel, with the default verdict (docs/permissions.md).
        if guard.fan is not None:
            guard.fan.close()
            guard.summary()
        if guard.log is not None:
            guard.log.close()
    return 0


async def _stats(guard: _Guard, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        fan = guard.fan
        assert fan is not None
        st = fan.permission_stats
        static = guard.policy.static
        allowed = st.allowed + static.allowed + guard.carried_allowed
        denied = st.denied + static.denied + guard.carried_denied
        _err(
            f"stats: {allowed} allowed, {denied} denied, {st.pending} pending, "
            f"{st.defaulted} by the default; by rule: {guard.rule_counts()}"
        )
