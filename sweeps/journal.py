"""The journal file's integrity: a torn last record set aside before anything is appended, a
record that cannot be read in the middle of the file refused by line number.

Optuna appends each batch of records as one write ending in a newline. A write cut short (a
full disk, a crash, a file-size limit, a network file system) leaves a last line without its
newline. Optuna's reader skips such a line, taking it for another process's append in
progress, but its next append lands right after it: the two become one undecodable line
mid-file, and from then on every reader fails. So a command that appends first looks at the
tail, under the lock Optuna's own appends take, where no append can be in progress.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna

from harness.errors import UserError


def set_aside_torn_tail(path: Path) -> str | None:
    """Move a torn last record out of the journal into a file beside it, under the journal's
    lock, and return what was done in a sentence for the user (None when the tail is whole).
    With no room to keep the fragment, the journal is cut back to its last whole record all
    the same. A journal with a bad record before its last line is refused, untouched. The
    caller says it: on its own line before a command starts, inside the one error line when
    a full disk ends the command."""
    if not path.is_file():
        return None
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))  # what JournalFileBackend appends under
    lock.acquire()
    try:
        content = path.read_bytes()
        whole = content.rfind(b"\n") + 1
        refuse_if_unreadable(path, content[:whole])
        fragment = content[whole:]
        if not fragment:
            return None
        aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            with open(aside, "ab") as handle:
                handle.write(fragment)
            kept = f"are set aside in {aside}"
        except OSError as error:  # a full disk: the fragment was never a record; the journal comes first
            aside.unlink(missing_ok=True)
            kept = f"could not be kept ({error.strerror})"
        with open(path, "r+b") as handle:
            handle.truncate(whole)
    finally:
        lock.release()
    return (f"{path}: its last record was cut short (by a crash, a full disk or a size limit); its "
            f"{len(fragment)} bytes {kept} and every complete record is kept")


def refuse_if_unreadable(path: Path, content: bytes | None = None) -> None:
    """One line naming the first complete line of the journal that is not a record."""
    if content is None:
        content = path.read_bytes()
        content = content[:content.rfind(b"\n") + 1]  # a torn tail alone is readable
    for number, line in enumerate(content.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError as error:  # bad JSON or bad UTF-8
            reason = str(error).split(":")[0]
        else:
            if isinstance(record, dict) and "op_code" in record:
                continue
            reason = "not an Optuna journal record"
        raise UserError(f"{path}, line {number}: {reason}. The journal is damaged there and is left as it "
                        "is; keep a copy before mending it by hand, or give the sweep another --storage")
