"""`taskwire run`: a JSONL file of tasks through the service, results appended as they finish.

How it goes: every line becomes an async task with a taskUUID derived from the line, so a
re-run names the same tasks and the service's idempotency keeps anything from running
twice. Tasks are sent in chunks (up to 100 per POST, a few POSTs at a time); tasks refused
for a limit (429/503) are sent again after Retry-After. Unfinished tasks are polled with
batches of getResponse tasks (up to 100 per POST), more slowly while nothing finishes.
A finished task's line is appended to the output at once; a re-run reads the output first
and skips every line already there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from cli.client import RETRYABLE_CODES, Backoff, Client
from cli.convert import Line, LineError, LineReader
from cli.output import ResultWriter, Written, error_entry, result_entry

MAX_TASKS_PER_POST = 100
MAX_BYTES_PER_POST = 4_000_000


@dataclass
class RunOptions:
    input: Path | None  # None: standard input
    output: Path | None  # None: standard output (no resume)
    namespace: str
    concurrency: int = 4
    chunk: int = MAX_TASKS_PER_POST
    webhook: str | None = None
    wait: bool = True
    max_in_flight: int = 5000
    poll_min_s: float = 0.25
    poll_max_s: float = 5.0
    model_map: dict[str, str] = field(default_factory=dict)
    progress: bool | None = None  # None: when stderr is a terminal


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0  # already in the output
    done: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    submitted: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.done + sum(self.failed.values())

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.finished / elapsed if elapsed > 0 else 0.0
        failed = sum(self.failed.values())
        by_code = ", ".join(f"{code} {n}" for code, n in self.failed.most_common())
        parts = [
            f"done {self.done}",
            f"failed {failed}" + (f" ({by_code})" if by_code else ""),
        ]
        if self.skipped:
            parts.append(f"already in output {self.skipped}")
        left = self.total - self.skipped - self.finished
        if left > 0:
            parts.append(f"not finished {left}")
        parts.append(f"elapsed {elapsed:.1f} s")
        parts.append(f"{rate:.1f} tasks/s")
        return ", ".join(parts)


class Runner:
    def __init__(self, client: Client, options: RunOptions, writer: ResultWriter, err: TextIO):
        self.client = client
        self.options = options
        self.writer = writer
        self.err = err
        self.summary = Summary()
        self.to_send: deque[Line] = deque()
        self.pending: dict[str, Line] = {}  # submitted, not final: taskUUID -> line
        self.in_flight = asyncio.Semaphore(options.max_in_flight)
        self.sending_done = asyncio.Event()
        self.bar: Any = None  # a tqdm bar, when shown

    # --- input

    def load(self, lines: Iterable[str], written: Written) -> None:
        reader = LineReader(self.options.namespace, self.options.model_map)
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            self.summary.total += 1
            try:
                line: Line | None = reader.read(number, text)
                error = None
            except LineError as exc:
                line, error = None, exc
            key = line.key if line is not None else f"line:{number}"
            if written.has(line, key):
                self.summary.skipped += 1
                continue
            if error is not None:
                self._fail_entry(error_entry(number, None, None, error.code, error.message))
                continue
            assert line is not None
            task = dict(line.task)
            task["deliveryMethod"] = "async"
            if self.options.webhook:
                task["webhookURL"] = self.options.webhook
            self.to_send.append(Line(line.number, line.custom_id, line.task_uuid, task))

    # --- output

    def _finish(self, line: Line, items: list[dict[str, Any]]) -> None:
        self.pending.pop(line.task_uuid, None)
        entry = result_entry(line, items)
        self.writer.write(entry)
        if entry["status"] == "success":
            self.summary.done += 1
        else:
            codes = [i.get("error", {}).get("code", "error") for i in items if i.get("error")]
            self.summary.failed[codes[0] if codes else "error"] += 1
        self.in_flight.release()
        self._tick()

    def _fail(self, line: Line, code: str, message: str, in_flight: bool = True) -> None:
        self.pending.pop(line.task_uuid, None)
        self._fail_entry(error_entry(line.number, line.custom_id, line.task_uuid, code, message))
        if in_flight:
            self.in_flight.release()

    def _fail_entry(self, entry: dict[str, Any]) -> None:
        self.writer.write(entry)
        self.summary.failed[entry["error"]["code"]] += 1
        self._tick()

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            failed = sum(self.summary.failed.values())
            if failed:
                self.bar.set_postfix(failed=failed, refresh=False)

    # --- submitting

    async def _sender(self) -> None:
        while self.to_send:
            chunk: list[Line] = []
            size = 0
            while self.to_send and len(chunk) < self.options.chunk:
                cost = len(json.dumps(self.to_send[0].task, ensure_ascii=False)) + 1
                if chunk and size + cost > MAX_BYTES_PER_POST:
                    break
                # A chunk takes in-flight places as it is built, so polling stays bounded;
                # it is sent as it is rather than wait for places while holding some.
                if chunk and self.in_flight.locked():
                    break
                await self.in_flight.acquire()
                if not self.to_send:
                    self.in_flight.release()
                    break
                chunk.append(self.to_send.popleft())
                size += cost
            if chunk:
                await self._submit(chunk)

    async def _submit(self, chunk: list[Line]) -> None:
        backoff = Backoff()
        while chunk:
            reply = await self.client.post([line.task for line in chunk])
            by_uuid = {line.task_uuid.lower(): line for line in chunk}
            if reply.status == 413 and len(chunk) > 1:
                half = len(chunk) // 2
                await self._submit(chunk[:half])
                chunk = chunk[half:]
                continue
            items: dict[str, list[dict[str, Any]]] = {}
            for item in reply.data:
                uuid = str(item.get("taskUUID", "")).lower()
                if uuid in by_uuid:
                    items.setdefault(uuid, []).append(item)
            again: list[Line] = []
            unscoped = [e for e in reply.errors if not e.get("taskUUID")]
            for error in reply.errors:
                line = by_uuid.get(str(error.get("taskUUID", "")).lower())
                if line is None:
                    continue
                if error.get("code") in RETRYABLE_CODES:
                    again.append(line)
                else:
                    self._fail(line, str(error.get("code")), _message(error))
                by_uuid.pop(line.task_uuid.lower())
            for uuid, line in by_uuid.items():
                found = items.get(uuid)
                if found is None:
                    if unscoped:
                        code = str(unscoped[0].get("code", "error"))
                        self._fail(line, code, _message(unscoped[0]))
                    else:
                        again.append(line)  # not answered: send it again
                    continue
                self.summary.submitted += 1
                if all(item.get("status") != "processing" for item in found) and any(
                    "resultIndex" in item for item in found
                ):
                    self._finish(line, found)  # sent before and already finished
                elif not self.options.wait:
                    self.pending.pop(line.task_uuid, None)
                    self.in_flight.release()
                else:
                    self.pending[line.task_uuid] = line
            chunk = again
            if chunk:
                await asyncio.sleep(backoff.next_wait(reply.retry_after))

    # --- collecting

    async def _poller(self) -> None:
        interval = self.options.poll_min_s
        while True:
            if not self.pending:
                if self.sending_done.is_set():
                    return
                await asyncio.sleep(self.options.poll_min_s)
                continue
            await asyncio.sleep(interval)
            uuids = list(self.pending)
            step = MAX_TASKS_PER_POST
            chunks = [uuids[i : i + step] for i in range(0, len(uuids), step)]
            gate = asyncio.Semaphore(self.options.concurrency)

            async def poll(part: list[str], gate: asyncio.Semaphore = gate) -> int:
                async with gate:
                    return await self._poll(part)

            finished = sum(await asyncio.gather(*(poll(part) for part in chunks)))
            if finished:
                interval = self.options.poll_min_s
            else:
                interval = min(self.options.poll_max_s, interval * 1.5)

    async def _poll(self, uuids: list[str]) -> int:
        reply = await self.client.post(
            [{"taskType": "getResponse", "taskUUID": uuid} for uuid in uuids]
        )
        lines = {uuid.lower(): self.pending[uuid] for uuid in uuids if uuid in self.pending}
        items: dict[str, list[dict[str, Any]]] = {}
        for item in reply.data:
            items.setdefault(str(item.get("taskUUID", "")).lower(), []).append(item)
        finished = 0
        for error in reply.errors:
            line = lines.pop(str(error.get("taskUUID", "")).lower(), None)
            if line is not None and error.get("code") == "taskFailedOrNotFound":
                self._fail(line, "taskFailedOrNotFound", _message(error))
                finished += 1
        for uuid, line in lines.items():
            found = items.get(uuid)
            if found and all(item.get("status") != "processing" for item in found):
                self._finish(line, found)
                finished += 1
        return finished

    # --- the whole run

    async def run(self) -> Summary:
        show = self.options.progress
        if show is None:
            show = self.err.isatty()
        if show:
            self.bar = tqdm(
                total=self.summary.total - self.summary.skipped,
                initial=self.summary.finished,
                file=self.err,
                unit="task",
                dynamic_ncols=True,
                smoothing=0.1,
            )
        poller = asyncio.create_task(self._poller()) if self.options.wait else None
        try:
            senders = [self._sender() for _ in range(self.options.concurrency)]
            await asyncio.gather(*senders)
            self.sending_done.set()
            if poller is not None:
                await poller
        finally:
            if poller is not None and not poller.done():
                poller.cancel()
            if self.bar is not None:
                self.bar.close()
        return self.summary


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("message", ""))
    if error.get("code") == "conflictTaskUUID":
        message += (
            " (this line's taskUUID names a task sent earlier with a different body: run with "
            "the same flags as before, or another --namespace to send the file as new tasks)"
        )
    return message
