"""The guard's audit trail: one line per decision, text or ECS JSON.

Each line is written after the verdict (the process does not wait for the
log).  JSON lines use Elastic Common Schema names: ``event.category``
``["file", "intrusion_detection"]``, ``event.type`` ``["access",
"allowed"]`` or ``["access", "denied"]``, ``event.outcome`` (``success``
for an allowed access, ``failure`` for a denied one, ``unknown`` when the
kernel refused the response), ``rule.*`` for the rule that decided,
``process.*``, ``user.id`` and ``file.*``; what ECS has no field for goes
under ``fanotify.*``.
"""

from __future__ import annotations

import errno as _errno
import os
import time

from ._cli_output import ECS_VERSION, _js, _mask_names, json_stamp, text_stamp
from ._static import Decision
from .flags import Response

__all__ = ["LogFile", "json_decision", "text_decision"]

_ERRNO_SHIFT = 24
_AUDIT = int(Response.AUDIT)


def _errno_name(response: int) -> str | None:
    err = (response >> _ERRNO_SHIFT) & 0xFF
    return _errno.errorcode.get(err) if err else None


def _rule_name(d: Decision) -> str:
    return d.rule.label if d.rule is not None else "default"


def json_decision(d: Decision, now: float, default_text: str) -> str:
    """One ECS line for decision ``d`` made at ``now``."""
    verdict = "allowed" if d.allowed else "denied"
    outcome = "unknown" if d.write_errno else ("success" if d.allowed else "failure")
    actions = ",".join(f'"{a}"' for a in _mask_names(d.mask).actions)
    rule = d.rule
    text = rule.text if rule is not None else default_text
    path = d.path
    directory = name = None
    if path is not None:
        directory = os.path.dirname(path) or None
        name = os.path.basename(path) or None
    exe = d.exe
    pname = os.path.basename(exe) if exe else None
    uid = "null" if d.uid is None else f'"{d.uid}"'
    extra = ""
    if d.range is not None:
        extra += f',"range":{{"offset":{d.range[0]},"last":{d.range[1]}}}'
    err = _errno_name(d.response)
    if err is not None:
        extra += f',"errno":"{err}"'
    if d.write_errno:
        extra += f',"response_error":"{_errno.errorcode.get(d.write_errno, d.write_errno)}"'
    return (
        f'{{"@timestamp":"{json_stamp(now)}","ecs":{{"version":"{ECS_VERSION}"}},'
        f'"event":{{"kind":"event","category":["file","intrusion_detection"],'
        f'"type":["access","{verdict}"],"outcome":"{outcome}","action":[{actions}],'
        f'"module":"fanotify","dataset":"afanotify.guard"}},'
        f'"rule":{{"name":{_js(_rule_name(d))},"description":{_js(text)}}},'
        f'"process":{{"pid":{d.pid if d.pid > 0 else "null"},"name":{_js(pname)},'
        f'"executable":{_js(exe)}}},"user":{{"id":{uid}}},'
        f'"file":{{"path":{_js(path)},"directory":{_js(directory)},"name":{_js(name)}}},'
        f'"fanotify":{{"mask":{d.mask},"response":{d.response},'
        f'"audit":{"true" if d.response & _AUDIT else "false"}{extra}}}}}'
    )


def text_decision(d: Decision, now: float) -> str:
    """One text line: time, verdict, pid, executable, events, path, rule."""
    verdict = "allow" if d.allowed else "deny"
    err = _errno_name(d.response)
    if err is not None:
        verdict += f"({err})"
    where = d.path if d.path is not None else "?"
    if d.range is not None:
        where += f" [{d.range[0]}-{d.range[1]}]"
    tail = f"  (response failed: {os.strerror(d.write_errno)})" if d.write_errno else ""
    return (
        f"{text_stamp(now)}  {verdict:<10}  {d.pid:>7}  {d.exe or '?'}  "
        f"{_mask_names(d.mask).text}  {where}  by {_rule_name(d)}{tail}"
    )


class LogFile:
    """The ``--log`` file: lines appended a batch at a time, reopened on SIGHUP."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lines: list[str] = []
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, line: str) -> None:
        self._lines.append(line)

    def flush(self) -> None:
        if not self._lines or self._fd < 0:
            return
        lines, self._lines = self._lines, []
        lines.append("")
        # Names the kernel gave as bytes go out as the same bytes (text lines).
        data = memoryview("\n".join(lines).encode("utf-8", "surrogateescape"))
        while data:
            try:
                data = data[os.write(self._fd, data) :]
            except InterruptedError:
                continue

    def reopen(self) -> None:
        """Flush, then open the file by its name again (after a log rotation moved it)."""
        self.flush()
        fd = self._open()
        old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def stamp() -> float:
    """The time stamped on a batch's lines."""
    return time.time()
