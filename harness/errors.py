"""Mistakes a user can make, and stores that cannot be written; every command turns them into
one line (exit code 2 for a mistake, 1 for a store) instead of a traceback."""

from __future__ import annotations

import errno
import sqlite3

# What a store that cannot be written raises: a full disk or quota, a file-size limit, a
# failing or read-only device.
STORE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}
# SQLite's words for the same (it reports them as sqlite3.OperationalError, without errno).
SQLITE_STORE_MESSAGES = ("database or disk is full", "disk I/O error", "readonly database")


class UserError(Exception):
    """A problem the user can fix: a bad flag value, file or parameter."""


class DataError(UserError):
    """A data file that is missing, unreadable or not MNIST-shaped."""


class ParamsError(UserError):
    """A params dict (or JSON file) that is not a point of the search space."""


class StoreUnwritable(Exception):
    """A store (journal, database, artifacts) could not be written; the message names it."""


def store_failure(error: BaseException, database: str = "an SQLite database") -> str | None:
    """What went wrong, in a few words naming the file where the system says (SQLite does not:
    ``database`` names it), when ``error`` or an error behind it (MLflow and SQLAlchemy wrap
    them) is a store that cannot be written; None for any other error."""
    pending, seen, sqlite_reason = [error], set(), None
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORE_ERRNOS:
            where = current.filename2 or current.filename  # a copy's destination, else the file
            return f"{where}: {current.strerror}" if where else current.strerror
        if isinstance(current, sqlite3.OperationalError) and any(m in str(current) for m in SQLITE_STORE_MESSAGES):
            sqlite_reason = f"{database}: {str(current).splitlines()[0]}"
        pending += [current.__cause__, current.__context__]
    return sqlite_reason
