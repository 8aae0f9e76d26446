"""``afanotify guard``: answer open permission requests by rules."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

from ._cli_output import _err
from ._cli_run import _check_paths, _run_until_stopped
from .events import FanotifyData
from .flags import Event, InitFlag, Response
from .group import Fanotify
from .permission import ALLOW, DENY, Verdict
from .rules import FanoRule


class GuardPolicy:
    """The guard's rules, in order: ``--allow-exe``, ``--deny-exe``, ``--deny``, ``--default``."""

    def __init__(
        self,
        deny: Sequence[str] = (),
        deny_exe: Sequence[str] = (),
        allow_exe: Sequence[str] = (),
        default_allow: bool = True,
    ) -> None:
        self.rules: list[tuple[bool, str, FanoRule]] = []
        for p in allow_exe:
            self.rules.append((True, f"--allow-exe {p!r}", FanoRule("allow-exe", exe_pattern=p)))
        for p in deny_exe:
            self.rules.append((False, f"--deny-exe {p!r}", FanoRule("deny-exe", exe_pattern=p)))
        for p in deny:
            self.rules.append((False, f"--deny {p!r}", FanoRule("deny", path_pattern=p)))
        self.default_allow = default_allow
        #: True when a rule looks at the process's executable (/proc must be read).
        self.needs_exe = bool(allow_exe or deny_exe)

    def decide(self, ev: FanotifyData) -> tuple[bool, str]:
        """``(allowed, why)`` for one permission event."""
        for allowed, why, rule in self.rules:
            if rule.matches(ev):
                return allowed, why
        return self.default_allow, "--default " + ("allow" if self.default_allow else "deny")

    def __repr__(self) -> str:
        rules = ", ".join(why for _, why, _ in self.rules)
        return f"GuardPolicy([{rules}], default={'allow' if self.default_allow else 'deny'})"


def _cmd_guard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_paths(parser, args.paths)
    policy = GuardPolicy(args.deny, args.deny_exe, args.allow_exe, args.default == "allow")
    default = Response.ALLOW if policy.default_allow else Response.DENY
    fan = Fanotify(
        InitFlag.CLASS_CONTENT,
        proc_info=policy.needs_exe or args.log_denials,
        default_response=default,
        permission_timeout=args.deadline,
    )
    try:
        for p in args.paths:
            mask = Event.OPEN_PERM
            if args.scope == "inode" and os.path.isdir(p):
                mask |= Event.EVENT_ON_CHILD
            fan.mark(p, mask, args.scope)

        async def run() -> str:
            loop = asyncio.get_running_loop()

            def log_denial(ev: FanotifyData, why: str) -> None:
                exe = ev.exe or "?"
                _err(f"denied open of {ev.path} by pid {ev.pid} ({exe}): {why}")

            def handler(ev: FanotifyData) -> Verdict:
                allowed, why = policy.decide(ev)
                if not allowed and args.log_denials:
                    # After the verdict is written: logging can wait, the process can't.
                    loop.call_soon(log_denial, ev, why)
                return ALLOW if allowed else DENY

            fan.on_permission(handler)

            async def serve() -> None:
                # Permission events go to the handler; receiving starts the reader.
                while True:
                    (await fan.receive()).close()

            return await _run_until_stopped(
                serve, args.timeout,
                lambda: _err(
                    f"guarding {len(args.paths)} path(s): {args.scope} marks, "
                    f"{len(policy.rules)} rule(s), default {args.default}"
                ),
            )

        asyncio.run(run())
    finally:
        # Closing answers what is pending, and what is still queued in the
        # kernel, with the default verdict (docs/permissions.md).
        fan.close()
        st = fan.permission_stats
        _err(
            f"{st.allowed + st.denied} opens answered: {st.allowed} allowed, {st.denied} "
            f"denied ({st.defaulted} by the default after a deadline, error or stop)"
        )
    return 0
