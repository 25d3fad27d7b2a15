"""The study journal's integrity: find a torn or damaged record, and repair a torn tail without losing a byte.

Optuna's journal file (``JournalFileBackend``) is one JSON object per line,
each appended with a single write and an fsync. A crash or a full disk in the
middle of that write leaves a *torn* final record: a last line without its
newline, or one that is not JSON. Optuna skips such a last line when it reads,
so the record's effect (often a trial's final COMPLETE) is silently missing;
and the next writer appends straight onto the partial line, gluing a good
record to the torn one, after which Optuna cannot read the journal at all.

``scan`` reads the bytes and says which case a journal is in:

* clean: every line a complete record, newline-terminated;
* a torn or damaged *tail*: the damage runs to the end of the file (a torn
  last record, garbage appended): ``repair`` keeps every complete record and
  moves the damaged bytes, untouched, into ``study.journal.damaged-<k>``;
* a *glued* record: a torn record with a complete one appended onto the same
  line (what resuming on a torn journal did before this module): the writer of
  the appended records had read the journal without the torn one, so removing
  the torn bytes restores what it saw; ``repair`` keeps a full copy of the
  journal as it was in the sidecar;
* a damaged record in the *middle* (an unparseable line followed by further
  records): no repair can be trusted, ``scan`` raises a one-line UserError
  naming the byte offset and the fix, and nothing is written.

Knows no Optuna: a record is a JSON object with an ``op_code``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from dynsearch.errors import UserError, warn
from dynsearch.run.rundir import RunDir, write_durable


def notice(message: str) -> None:
    """One line on stderr: what was found and done (a repair is never silent)."""
    warn(message)


def _record(line: bytes) -> bool:
    try:
        value = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return isinstance(value, dict) and "op_code" in value


def _glued_at(line: bytes) -> int | None:
    """Where a complete record starts inside a damaged line (torn bytes before it), or None."""
    start = line.find(b"{", 1)
    while start != -1:
        if _record(line[start:]):
            return start
        start = line.find(b"{", start + 1)
    return None


@dataclass
class Scan:
    """What ``scan`` found in a journal's bytes."""

    data: bytes
    records: int = 0  # complete records kept
    keep: int = 0  # bytes up to the end of the last complete record (the rest is the damaged tail)
    add_newline: bool = False  # the last complete record lacks its newline (the only damage)
    glued: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of torn bytes before a record

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def tail(self) -> bytes:
        return self.data[self.keep:]

    @property
    def clean(self) -> bool:
        return not (self.tail or self.add_newline or self.glued)

    @property
    def in_flight(self) -> bool:
        """The only damage is an unterminated last line: what an append in progress looks like."""
        return not self.glued and not self.add_newline and b"\n" not in self.tail

    def repaired(self) -> bytes:
        """The journal with every complete record, newline-terminated, and no damaged byte."""
        out, at = [], 0
        for offset, length in self.glued:
            out.append(self.data[at:offset])
            at = offset + length
        out.append(self.data[at:self.keep])
        return b"".join(out) + (b"\n" if self.add_newline else b"")

    def damage(self) -> str:
        """The damage in words, for a notice."""
        parts = []
        if self.glued:
            where = ", ".join(f"byte {offset}" for offset, _ in self.glued)
            parts.append(f"{len(self.glued)} torn record(s) with later records appended onto them (at {where})")
        if self.tail:
            parts.append(f"a torn or damaged last record ({len(self.tail)} bytes at byte {self.keep}"
                         ", from a crash or a full disk mid-write, or bytes appended)")
        if self.add_newline and not self.tail:
            parts.append("a last record without its newline")
        return " and ".join(parts)


def scan(run: RunDir, data: bytes | None = None) -> Scan:
    """Classify the journal's bytes (see the module docstring); a UserError for a damaged middle record."""
    if data is None:
        data = run.study_path.read_bytes()
    result = Scan(data)
    lines = data.split(b"\n")
    offset = 0
    damaged_at: int | None = None  # offset of the first damaged line not yet known to be a tail
    damaged_line = 0
    for number, line in enumerate(lines, start=1):
        terminated = number < len(lines)
        end = offset + len(line) + (1 if terminated else 0)
        if not line and not terminated:
            break  # the file ends with a newline
        if _record(line):
            if damaged_at is not None:
                raise _middle_damage(run, damaged_at, damaged_line)
            result.records += 1
            result.keep = end
            result.add_newline = not terminated
        elif damaged_at is None:
            glued = _glued_at(line) if terminated else None
            if glued is not None:
                result.glued.append((offset, glued))
                result.records += 1
                result.keep = end
            else:
                damaged_at, damaged_line = offset, number
        offset = end
    return result


def _middle_damage(run: RunDir, offset: int, line: int) -> UserError:
    return UserError(
        f"{run.study_path}: the record at byte {offset} (line {line}) is damaged and complete records follow it, "
        f"so it cannot be repaired safely; nothing was changed. Restore {run.study_path.name} from a backup, "
        f"or start over with 'dynsearch search ... --out {run.path} --new' (the old search is kept)"
    )


def repair(run: RunDir, found: Scan) -> str:
    """Rewrite the journal with every complete record, the damaged bytes moved aside first; return what was done.

    Call it holding the run directory's lock (no writer is active). The damaged
    bytes (for a glued record: the whole journal as it was) go to a new
    ``study.journal.damaged-<k>``, written and fsync'd before the journal is
    replaced (a temporary file, fsync, rename): a crash at any point loses nothing.
    """
    path = run.study_path
    moved = found.data if found.glued else found.tail
    sidecar = None
    if moved:
        while True:
            sidecar = run.new_damaged_journal_path()
            try:
                write_durable(sidecar, moved, exclusive=True)
                break
            except FileExistsError:
                continue
    if path.read_bytes() != found.data:  # someone wrote meanwhile: never replace what was not scanned
        raise UserError(f"{path}: changed while it was being repaired; run the command again")
    run.write_journal(found.repaired())
    what = f"{path}: {found.damage()}; kept the {found.records} complete records"
    if sidecar is not None:
        copy = "a copy of the journal as it was" if found.glued else f"the {len(moved)} damaged bytes"
        what += f", moved {copy} to {sidecar} (nothing deleted)"
    else:
        what += ", added the missing newline"
    return what
