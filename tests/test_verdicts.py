"""Verdicts and their encoding, without a kernel: what is written, what is refused."""

from __future__ import annotations

import errno

import pytest

from afanotify import ALLOW, DENY, AuditRule, Fanotify, FanotifyData, InitFlag, Response, Verdict
from afanotify.flags import Event, deny_errno
from afanotify.permission import check_timeout, encode_verdict, to_verdict

CONTENT = int(InitFlag.CLASS_CONTENT)
PRE = int(InitFlag.CLASS_PRE_CONTENT)
AUDIT = int(InitFlag.ENABLE_AUDIT)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, ALLOW),
        (False, DENY),
        (Response.ALLOW, ALLOW),
        (Response.DENY, DENY),
        (Response.DENY | Response.AUDIT, Verdict(False, None, True)),
        (deny_errno(errno.EIO), Verdict(False, errno.EIO)),
        (Verdict.deny(errno.EBUSY), Verdict(False, errno.EBUSY)),
    ],
)
def test_to_verdict(value: object, expected: Verdict) -> None:
    assert to_verdict(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (None, TypeError, "bool, Verdict or Response"),
        ("allow", TypeError, "bool, Verdict or Response"),
        (0, ValueError, "exactly one of ALLOW and DENY"),
        (Response.ALLOW | Response.DENY, ValueError, "exactly one"),
        (Response.ALLOW | (errno.EIO << 24), ValueError, "only DENY"),
        (Response.DENY | Response.INFO, ValueError, "AuditRule"),
        (0x4000, ValueError, "bits"),
    ],
)
def test_to_verdict_rejects(value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        to_verdict(value)


@pytest.mark.parametrize(
    ("verdict", "flags", "response", "rule"),
    [
        (ALLOW, CONTENT, Response.ALLOW, None),
        (DENY, CONTENT, Response.DENY, None),
        (Verdict.deny(errno.EIO), PRE, Response.DENY | (errno.EIO << 24), None),
        (Verdict.deny(errno.EPERM), PRE, Response.DENY | (errno.EPERM << 24), None),
        (Verdict.allow(audit=True), CONTENT | AUDIT, Response.ALLOW | Response.AUDIT, None),
        (
            Verdict.deny(audit_rule=AuditRule(3, 1, 0)),
            PRE | AUDIT,
            Response.DENY | Response.AUDIT,
            AuditRule(3, 1, 0),
        ),
    ],
)
def test_encode(verdict: Verdict, flags: int, response: int, rule: AuditRule | None) -> None:
    assert encode_verdict(verdict, flags) == (int(response), rule)


@pytest.mark.parametrize(
    ("verdict", "flags", "match"),
    [
        (Verdict.deny(errno.EIO), CONTENT, "CLASS_PRE_CONTENT"),
        (Verdict(True, errno.EIO), PRE, "only meaningful when denying"),
        (Verdict.deny(errno.ENOENT), PRE, "EPERM, EIO"),
        (Verdict.deny(True), PRE, "cannot be returned"),  # type: ignore[arg-type]
        (Verdict.allow(audit=True), CONTENT, "ENABLE_AUDIT"),
        (Verdict.deny(audit_rule=AuditRule(1)), PRE, "ENABLE_AUDIT"),
        (Verdict.deny(audit_rule=AuditRule(-1)), PRE | AUDIT, "rule_number"),
        (Verdict.deny(audit_rule=AuditRule(1, 2**32)), PRE | AUDIT, "subj_trust"),
    ],
)
def test_encode_rejects_before_writing(verdict: Verdict, flags: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_verdict(verdict, flags)


def test_verdict_helpers_and_repr() -> None:
    assert Verdict.allow() is ALLOW and Verdict.deny() is DENY
    assert repr(Verdict.deny(errno.EIO, audit=True)) == "Verdict(deny, errno=5, audit)"
    assert repr(ALLOW) == "Verdict(allow)"


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (float("inf"), ValueError),
     (float("nan"), ValueError), (True, TypeError), ("5", TypeError), (None, TypeError)],
)
def test_permission_timeout_is_checked(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="permission_timeout"):
        check_timeout(value)
    with pytest.raises(error, match="permission_timeout"):
        Fanotify(permission_timeout=value)  # type: ignore[arg-type]


def test_answering_what_cannot_be_answered() -> None:
    note = FanotifyData(fd=-1, pid=1, ev_types=int(Event.OPEN))
    with pytest.raises(ValueError, match="not a permission event"):
        note.allow_nowait()
    synthetic = FanotifyData(fd=5, pid=1, ev_types=int(Event.OPEN_PERM))
    with pytest.raises(ValueError, match="not read by a Fanotify group"):
        synthetic.deny_nowait()
