"""The results file of `taskwire run`: one JSON line per input line, appended as each
finishes, and read back on a re-run so finished lines are kept and skipped."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cli.convert import Line


@dataclass(slots=True)
class Written:
    """What an existing results file already holds: its lines' taskUUIDs and keys."""

    task_uuids: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    lines: int = 0
    dropped_partial: bool = False  # a last line cut short by a crash was removed

    def has(self, line: Line | None, key: str) -> bool:
        if line is not None and line.task_uuid in self.task_uuids:
            return True
        return key in self.keys


def output_key(entry: dict[str, Any]) -> str | None:
    if isinstance(entry.get("custom_id"), str):
        return str(entry["custom_id"])
    if isinstance(entry.get("line"), int):
        return f"line:{entry['line']}"
    return None


def read_written(path: Path) -> Written:
    """The lines already in `path` (none if it does not exist). A last line without its
    newline (the run was killed while writing it) is cut off, so appending goes on from a
    whole line; its task is simply collected again."""
    written = Written()
    if not path.exists():
        return written
    with path.open("rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
            written.dropped_partial = True
    for raw in data[:end].splitlines():
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        written.lines += 1
        if isinstance(entry.get("taskUUID"), str):
            written.task_uuids.add(entry["taskUUID"])
        key = output_key(entry)
        if key is not None:
            written.keys.add(key)
    return written


def result_entry(line: Line, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The output line of a finished task: its key, taskUUID, overall status and items."""
    errors = sum(1 for item in items if item.get("status") == "error")
    status = "success" if errors == 0 else "error" if errors == len(items) else "partial"
    entry: dict[str, Any] = {}
    if line.custom_id is not None:
        entry["custom_id"] = line.custom_id
    entry.update({"line": line.number, "taskUUID": line.task_uuid, "status": status})
    entry["results"] = sorted(items, key=lambda item: int(item.get("resultIndex", 0)))
    return entry


def error_entry(
    number: int, custom_id: str | None, task_uuid: str | None, code: str, message: str
) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if custom_id is not None:
        entry["custom_id"] = custom_id
    entry["line"] = number
    if task_uuid is not None:
        entry["taskUUID"] = task_uuid
    entry.update({"status": "error", "error": {"code": code, "message": message}})
    return entry


class ResultWriter:
    """Appends whole lines and flushes each, so a killed run loses at most the line being
    written (which read_written then cuts off)."""

    def __init__(self, target: IO[str]):
        self.target = target

    @classmethod
    def append_to(cls, path: Path) -> ResultWriter:
        return cls(path.open("a", encoding="utf-8"))

    def write(self, entry: dict[str, Any]) -> None:
        self.target.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.target.flush()

    def close(self) -> None:
        self.target.flush()
        if hasattr(self.target, "fileno"):
            with contextlib.suppress(OSError, ValueError):
                os.fsync(self.target.fileno())
        self.target.close()
