"""A crash-safe, resumable run folder: ``config.json`` plus an append-only JSONL of records.

Owns the contract that benchmark runs and data-generation runs share: the config is written first
and checked on resume (only fields in ``resumable`` may change); each record is appended as one
full line, flushed and fsynced; a torn last line from a crash is dropped on resume; duplicate ids
mean two writers and are refused; the finished file is rewritten in input order atomically.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel


class RunError(RuntimeError):
    """A run folder that cannot be (re)used as asked; the message says why and what to do."""


class _HasId(Protocol):
    id: str

    def model_dump_json(self) -> str: ...


ConfigT = TypeVar("ConfigT", bound=BaseModel)
RecordT = TypeVar("RecordT", bound=BaseModel)


class RunFolder(Generic[ConfigT, RecordT]):
    """``config.json`` + ``<records_name>`` of one run; only one process may write to it at a time."""

    def __init__(
        self,
        out_dir: Path,
        config_type: type[ConfigT],
        record_type: type[RecordT],
        *,
        records_name: str = "records.jsonl",
        resumable: frozenset[str] = frozenset(),
        redo: Callable[[RecordT], bool] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.config_type, self.record_type = config_type, record_type
        self.resumable = resumable
        self.redo = redo  # records a resume runs again (an infrastructure failure, not an outcome)
        self.config_path = self.out_dir / "config.json"
        self.records_path = self.out_dir / records_name

    def prepare(self, config: ConfigT) -> dict[str, RecordT]:
        """Write the config (a new run) or check it against the saved one (a resume); return the
        records already finished, by id, after dropping a torn last line."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():
            saved = self.config_type.model_validate_json(self.config_path.read_text(encoding="utf-8"))
            old, new = saved.model_dump(), config.model_dump()
            diff = [
                f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k] and k not in self.resumable
            ]
            if diff:
                raise RunError(
                    f"{self.out_dir} holds a run with a different config ({'; '.join(diff)}); "
                    "use another --out folder, or repeat the saved options to resume it"
                )
        write_atomic(self.config_path, config.model_dump_json(indent=2) + "\n")
        records = self._read()
        if self.redo is not None and any(self.redo(r) for r in records):
            records = [r for r in records if not self.redo(r)]
            write_jsonl(self.records_path, records)  # atomic: the old file or the new, never half
        return {_id(r): r for r in records}

    def _read(self) -> list[RecordT]:
        if not self.records_path.exists():
            return []
        data = self.records_path.read_bytes()
        records: list[RecordT] = []
        pos = good_end = 0
        while (newline := data.find(b"\n", pos)) != -1:  # bytes after the last newline: a torn write
            line = data[pos:newline]
            if line.strip():
                try:
                    records.append(self.record_type.model_validate_json(line))
                except ValueError as exc:
                    if data[newline + 1 :].strip():
                        raise RunError(
                            f"{self.records_path}: corrupt record before the last line ({exc}); "
                            "move the file away to start over"
                        ) from exc
                    break  # a torn last line that happens to end in a newline
            pos = good_end = newline + 1
        if good_end < len(data):
            with self.records_path.open("r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        ids = [_id(r) for r in records]
        if len(set(ids)) != len(ids):
            raise RunError(f"{self.records_path} holds duplicate ids; it was written by two runs at once")
        return records

    def append(self, record: RecordT) -> None:
        """Append one record as one full line, flushed and fsynced before returning.  A write that
        fails (a full disk) leaves no part of the line behind and raises ``RunError``."""
        line = record.model_dump_json().encode("utf-8") + b"\n"
        fd = os.open(self.records_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:  # unbuffered: nothing is left for a close to flush (and fail on) after a failed write
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):  # a torn line would be dropped on resume anyway
                    os.ftruncate(fd, size)
                raise _write_failed(self.records_path, exc) from exc
        finally:
            os.close(fd)

    def finalize(self, records: Sequence[RecordT]) -> None:
        """Rewrite the records file in input order (atomically: a crash leaves the old or the new)."""
        write_jsonl(self.records_path, records)


def _id(record: BaseModel) -> str:
    ident = getattr(record, "id", None)
    if not isinstance(ident, str):
        raise TypeError(f"{type(record).__name__} records need a string 'id' field")
    return ident


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one; a write
    that fails (a full disk) leaves the old one and raises ``RunError``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _write_failed(path, exc) from exc


def _write_failed(path: Path, exc: OSError) -> RunError:
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    return RunError(
        f"could not write {path} ({why}); every record written so far is kept whole: "
        "make room and run the same command again to resume"
    )


def write_jsonl(path: Path, rows: Sequence[BaseModel]) -> None:
    """``rows`` as JSONL, atomically."""
    write_atomic(path, "".join(r.model_dump_json() + "\n" for r in rows))
