"""The error a person should read, behind Ray's wrappers."""

from __future__ import annotations


def innermost(exc: BaseException, kinds: tuple[type, ...] = (BaseException,)) -> BaseException | None:
    """The innermost exception of one of `kinds` in `exc`'s cause chain (Ray's `cause`, or
    `__cause__`). Ray's own wrapper is an instance of the cause's class whose text is a traceback,
    so the innermost match is the one with the user's message."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds):
            found = exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return found


def summary(exc: BaseException) -> str:
    """`Type: first line of the message` of the innermost cause (Ray appends retry advice to it)."""
    cause = innermost(exc) or exc
    lines = str(cause).splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
