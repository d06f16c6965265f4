"""Shared pieces of the benchmarks: the stack under test, statistics and table printing."""

from __future__ import annotations

import json
import statistics
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from devenv.stack import Stack, StackConfig

MODEL = "openai:gpt@5.4-mini"
API_KEY = "tw-bench-key"
SIM_KEY = "sim-bench-key"


def start_stack(
    workers: int = 1, env: dict[str, str] | None = None, keys: list[str] | None = None
) -> Stack:
    root = Path(tempfile.mkdtemp(prefix="taskwire-bench-"))
    stack = Stack(
        StackConfig(root=root, api_keys=keys or [API_KEY], sim_api_key=SIM_KEY, env=env or {})
    )
    return stack.start(workers=workers)


def text_task(prompt: str, **fields: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
    }
    task.update(fields)
    return task


def direct_body(prompt: str, seed: int | None = None) -> dict[str, Any]:
    """What the worker sends upstream for `text_task(prompt)`: the direct path's request."""
    body: dict[str, Any] = {
        "model": "gpt-5.4-mini",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "max_completion_tokens": 4096,
        "temperature": 1.0,
        "top_p": 0.95,
    }
    if seed is not None:
        body["seed"] = seed
    return body


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def log_events(path: Path | None, event: str) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    found = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == event:
            found.append(line)
    return found


def log_time(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable on a terminal)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
