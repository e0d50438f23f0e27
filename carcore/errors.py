"""Errors raised by carcore (and the root of every carmulti error).

Error tree::

    Exception
    └── CarError                 root of ALL project errors (carcore and carmulti)
        ├── MergeConflictError   Overlay.merge_to_parent(policy="first_committer_wins")
        ├── LogCorruptedError    EventLog.open() found damage followed by valid records
        └── MultiError           (lives in carmulti.errors; subclasses CarError)

Catch :class:`CarError` to handle anything the project raises on purpose.
Argument errors keep their conventional built-in types (``TypeError``,
``ValueError``, ``IndexError``, ``OverflowError``, ``FileExistsError``,
``FileNotFoundError``) so that ordinary Python code handles them as expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["CarError", "LogCorruptedError", "MergeConflictError"]


class CarError(Exception):
    """Root of all errors raised on purpose by carcore and carmulti."""


class MergeConflictError(CarError):
    """An overlay could not be merged because its parent changed underneath it.

    Raised by ``Overlay.merge_to_parent(policy="first_committer_wins")`` when,
    for at least one key the overlay read or wrote, the parent's version of the
    key differs from the version recorded when the overlay first touched it.
    Nothing was applied; the overlay keeps its local changes.

    Args:
        keys: The conflicting keys (any iterable of str); stored sorted.
        overlay: The name of the overlay whose merge was refused.

    Attributes:
        keys (list[str]): The conflicting keys, sorted.
        overlay (str): The overlay's name.
    """

    def __init__(self, keys: Iterable[str], overlay: str) -> None:
        self.keys: list[str] = sorted(keys)
        self.overlay: str = overlay
        shown = ", ".join(repr(k) for k in self.keys)
        super().__init__(
            f"merge conflict in overlay {overlay!r}: key(s) {shown} changed in the parent "
            f"after the overlay read or wrote them; nothing was applied. Re-run the agent on "
            f"fresh state, or merge with policy='last_writer_wins'"
        )

    def __reduce__(self) -> tuple[type[MergeConflictError], tuple[list[str], str]]:
        return (type(self), (self.keys, self.overlay))


class LogCorruptedError(CarError):
    """An event journal is damaged in the middle (valid records follow the damage).

    Raised by ``EventLog.open(path)``.  A damaged *tail* (a torn last write) is
    repaired automatically; damage followed by at least one valid record is
    never skipped silently and raises this error instead.

    Args:
        path: The journal file.
        offset: Byte offset of the first bad record.
        reason: What is wrong with the record at ``offset``.

    Attributes:
        path (str): The journal file.
        offset (int): Byte offset of the first bad record; every record before it is intact.
        reason (str): Human-readable description of the damage.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        self.path: str = os.fspath(path)
        self.offset: int = int(offset)
        self.reason: str = reason
        super().__init__(
            f"event journal {self.path!r} is corrupted at byte offset {self.offset}: {reason}. "
            f"The records before offset {self.offset} are intact, but valid records follow the "
            f"damage, so it is not a torn tail and nothing was repaired automatically. If losing "
            f"everything from the offset on is acceptable, copy the file and truncate the copy at "
            f"byte {self.offset} by hand (e.g. `truncate -s {self.offset} COPY`), then "
            f"EventLog.open() the copy"
        )

    def __reduce__(self) -> tuple[type[LogCorruptedError], tuple[str, int, str]]:
        return (type(self), (self.path, self.offset, self.reason))
