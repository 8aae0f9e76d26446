"""Permission verdicts: what a handler may return, and the response word it becomes.

Pure values and checks, no I/O: :class:`Verdict` (with :data:`ALLOW` and
:data:`DENY`), :class:`AuditRule`, :func:`to_verdict` for a handler's return
value, and :func:`encode_verdict`, which checks a verdict against the group's
flags before anything is written.  Re-exported by :mod:`afanotify.permission`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

from . import _ffi
from .events import FanotifyData
from .flags import CLASS_BITS, DENY_ERRNOS, InitFlag, Response

__all__ = [
    "ALLOW",
    "DENY",
    "AuditRule",
    "PermissionHandler",
    "Verdict",
    "VerdictLike",
    "encode_verdict",
    "to_verdict",
]

_ALLOW = int(Response.ALLOW)
_DENY = int(Response.DENY)
_AUDIT = int(Response.AUDIT)
_ERRNO_SHIFT = int(_ffi.lib.FAN_ERRNO_SHIFT)
_ERRNO_MASK = int(_ffi.lib.FAN_ERRNO_MASK)
_KNOWN_RESPONSE_BITS = _ALLOW | _DENY | _AUDIT | (_ERRNO_MASK << _ERRNO_SHIFT)
_U32 = 0xFFFFFFFF


class AuditRule(NamedTuple):
    """A FAN_INFO audit-rule record sent with a response (Linux 6.3).

    The audit subsystem logs it with the decision.  Trust values are
    0 (no), 1 (yes) or 2 (unknown).
    """

    #: The number of the policy rule that decided.
    rule_number: int
    #: Whether the subject (the process) is trusted: 0, 1 or 2.
    subj_trust: int = 2
    #: Whether the object (the file) is trusted: 0, 1 or 2.
    obj_trust: int = 2


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision for one permission event.

    ``Verdict.allow()`` and ``Verdict.deny(errno=errno.EIO)`` build the usual
    ones; :data:`ALLOW` and :data:`DENY` are ready-made.  A handler registered
    with :meth:`Fanotify.on_permission` may return a Verdict, a bool, or a
    :class:`~afanotify.Response` value.
    """

    #: True to let the operation proceed.
    allowed: bool
    #: With a denial: the errno the process sees instead of EPERM
    #: (FAN_DENY_ERRNO; PRE_CONTENT groups only).
    errno: int | None = None
    #: Ask the kernel to write an audit record (FAN_AUDIT; needs InitFlag.ENABLE_AUDIT).
    audit: bool = False
    #: An audit-rule record to send with the response (FAN_INFO); implies ``audit``.
    audit_rule: AuditRule | None = None

    @staticmethod
    def allow(*, audit: bool = False, audit_rule: AuditRule | None = None) -> Verdict:
        """A verdict that lets the operation proceed."""
        if not audit and audit_rule is None:
            return ALLOW
        return Verdict(True, None, audit, audit_rule)

    @staticmethod
    def deny(
        errno: int | None = None, *, audit: bool = False, audit_rule: AuditRule | None = None
    ) -> Verdict:
        """A verdict that refuses the operation (EPERM, or ``errno``)."""
        if errno is None and not audit and audit_rule is None:
            return DENY
        return Verdict(False, errno, audit, audit_rule)

    def __repr__(self) -> str:
        parts = ["allow" if self.allowed else "deny"]
        if self.errno is not None:
            parts.append(f"errno={self.errno}")
        if self.audit:
            parts.append("audit")
        if self.audit_rule is not None:
            parts.append(f"rule={self.audit_rule.rule_number}")
        return f"Verdict({', '.join(parts)})"


#: Let the operation proceed.
ALLOW = Verdict(True)
#: Refuse the operation with EPERM.
DENY = Verdict(False)

#: What a permission handler may return.
VerdictLike = Union[Verdict, bool, Response, int]  # noqa: UP007 (runtime alias on 3.10)
#: A permission handler: called with the event, returns (or resolves to) a verdict.
PermissionHandler = Callable[[FanotifyData], Union[VerdictLike, Awaitable[Any], None]]  # noqa: UP007


def to_verdict(value: object) -> Verdict:
    """Turn a handler's return value into a :class:`Verdict`.

    ``True``/``False`` allow/deny; a Verdict is kept; an int is read as
    ``Response`` bits (ALLOW or DENY, optionally AUDIT and FAN_DENY_ERRNO bits).

    :raises TypeError: for anything else (``None`` included: return a verdict)
    :raises ValueError: for an int that is not a valid response
    """
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return ALLOW if value else DENY
    if isinstance(value, int):
        return _from_response_bits(int(value))
    raise TypeError(
        f"a permission verdict must be a bool, Verdict or Response, not {type(value).__name__}"
    )


def _from_response_bits(value: int) -> Verdict:
    if value & ~_KNOWN_RESPONSE_BITS or value < 0:
        raise ValueError(
            f"response {value:#x} has bits this library does not write "
            "(use Verdict(..., audit_rule=AuditRule(...)) for FAN_INFO)"
        )
    access = value & (_ALLOW | _DENY)
    if access not in (_ALLOW, _DENY):
        raise ValueError(f"response {value:#x} must contain exactly one of ALLOW and DENY")
    err = (value >> _ERRNO_SHIFT) & _ERRNO_MASK
    if err and access == _ALLOW:
        raise ValueError(f"response {value:#x} carries an errno but allows: only DENY may")
    return Verdict(access == _ALLOW, err or None, bool(value & _AUDIT))


def encode_verdict(verdict: Verdict, group_flags: int) -> tuple[int, AuditRule | None]:
    """The ``response`` word (and audit record) to write for ``verdict``.

    Checks the combination against the group's flags first, so that nothing
    invalid is written (the kernel would reject it with EINVAL and the process
    would keep waiting).

    :raises ValueError: naming the problem and the fix
    """
    response = _ALLOW if verdict.allowed else _DENY
    if verdict.errno is not None:
        if verdict.allowed:
            raise ValueError("errno is only meaningful when denying: use Verdict.deny(errno=...)")
        if group_flags & CLASS_BITS != InitFlag.CLASS_PRE_CONTENT:
            raise ValueError(
                "deny(errno=...) needs a group created with InitFlag.CLASS_PRE_CONTENT "
                "(FAN_DENY_ERRNO, Linux 6.14); other groups can only deny with EPERM"
            )
        if isinstance(verdict.errno, bool) or verdict.errno not in DENY_ERRNOS:
            raise ValueError(
                f"errno {verdict.errno!r} cannot be returned by a permission response; "
                "use one of EPERM, EIO, EBUSY, ETXTBSY, EAGAIN, ENOSPC, EDQUOT"
            )
        response |= (verdict.errno & _ERRNO_MASK) << _ERRNO_SHIFT
    rule = verdict.audit_rule
    if verdict.audit or rule is not None:
        if not group_flags & InitFlag.ENABLE_AUDIT:
            raise ValueError(
                "audit needs a group created with InitFlag.ENABLE_AUDIT (FAN_AUDIT)"
            )
        response |= _AUDIT
    if rule is not None:
        if not isinstance(rule, AuditRule):
            raise TypeError(f"audit_rule must be an AuditRule, not {type(rule).__name__}")
        for name, v in zip(rule._fields, rule, strict=True):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _U32:
                raise ValueError(f"audit_rule.{name} must be an int in 0..2**32-1, got {v!r}")
    return response, rule
