"""`taskwire`: the command-line client (run, get, ls, ask).

Each subcommand is a `Command`: a name, a function adding its arguments, and an async
function running it. Adding one is adding a Command to COMMANDS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.client import Client, Fatal
from cli.output import ResultWriter, Written, read_written
from cli.run import MAX_TASKS_PER_POST, Runner, RunOptions

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "openai:gpt@5.4-mini"

# exit statuses
OK, TASKS_FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Client], Awaitable[int]]


# --- run


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="JSONL file of tasks ('-' for standard input)")
    p.add_argument(
        "-o",
        "--output",
        help="results JSONL file, appended to; a re-run skips lines already there "
        "(default: standard output, no resume)",
    )
    p.add_argument(
        "--namespace",
        help="names the run's taskUUIDs (default: the input file's name); use another to "
        "send the same lines again as new tasks",
    )
    p.add_argument("--concurrency", type=int, default=4, help="POSTs at a time (default 4)")
    p.add_argument(
        "--chunk",
        type=int,
        default=MAX_TASKS_PER_POST,
        help=f"tasks per POST (default and most {MAX_TASKS_PER_POST})",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=5000,
        help="tasks submitted and not finished at most (default 5000)",
    )
    p.add_argument("--webhook", metavar="URL", help="set webhookURL on every task")
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="submit and exit; run again without it to collect the results",
    )
    p.add_argument(
        "--model-map",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="use model TO where a line names FROM (repeatable)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


async def _run(args: argparse.Namespace, client: Client) -> int:
    if args.chunk < 1 or args.chunk > MAX_TASKS_PER_POST:
        raise SystemExit(f"--chunk must be 1 to {MAX_TASKS_PER_POST}")
    model_map = {}
    for pair in args.model_map:
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            raise SystemExit(f"--model-map takes FROM=TO, not {pair!r}")
        model_map[source] = target
    source_path = None if args.input == "-" else Path(args.input)
    output = Path(args.output) if args.output and args.output != "-" else None
    namespace = args.namespace or (source_path.name if source_path else "stdin")
    options = RunOptions(
        input=source_path,
        output=output,
        namespace=namespace,
        concurrency=max(1, args.concurrency),
        chunk=args.chunk,
        webhook=args.webhook,
        wait=args.wait,
        max_in_flight=max(args.chunk, args.max_in_flight),
        model_map=model_map,
        progress=args.progress,
    )
    written = read_written(output) if output is not None else Written()
    writer = ResultWriter.append_to(output) if output is not None else ResultWriter(sys.stdout)
    runner = Runner(client, options, writer, sys.stderr)
    try:
        if source_path is None:
            runner.load(sys.stdin, written)
        else:
            with source_path.open(encoding="utf-8") as f:
                runner.load(f, written)
        if written.lines:
            print(
                f"{output}: {written.lines} lines already there, {runner.summary.skipped} "
                "input lines skipped",
                file=sys.stderr,
            )
        try:
            await runner.run()
        except (asyncio.CancelledError, KeyboardInterrupt):
            print("interrupted: run the same command again to resume", file=sys.stderr)
            raise
        finally:
            print(runner.summary.text(), file=sys.stderr)
    finally:
        if output is not None:
            writer.close()
    if not args.wait:
        print(
            f"submitted {runner.summary.submitted}; run again without --no-wait to collect",
            file=sys.stderr,
        )
    return TASKS_FAILED if runner.summary.failed else OK


# --- get


def _get_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task_uuid", nargs="+", help="taskUUIDs")


async def _get(args: argparse.Namespace, client: Client) -> int:
    reply = await client.post(
        [{"taskType": "getResponse", "taskUUID": uuid} for uuid in args.task_uuid]
    )
    _print_json(reply.data)
    for error in reply.errors:
        print(
            f"{error.get('taskUUID', '')}: {error.get('code')}: {error.get('message')}",
            file=sys.stderr,
        )
    return TASKS_FAILED if reply.errors else OK


# --- ls


def _ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--status", choices=["processing", "success", "error", "partial"], help="only these"
    )
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--all", action="store_true", help="every task (follows every page)")
    p.add_argument("--json", action="store_true", help="one JSON entry a line")
    p.add_argument("--text", action="store_true", help="include result text (with --json)")


async def _ls(args: argparse.Namespace, client: Client) -> int:
    shown = 0
    cursor: str | None = None
    while args.all or shown < args.limit:
        want = 100 if args.all else min(100, args.limit - shown)
        params: dict[str, Any] = {"limit": want}
        if cursor:
            params["cursor"] = cursor
        if args.status:
            params["status"] = args.status
        if args.text:
            params["include"] = "text"
        reply = await client.get("/v1/tasks", params)
        if reply.status != 200:
            for error in reply.errors:
                print(f"{error.get('code')}: {error.get('message')}", file=sys.stderr)
            return USAGE
        for entry in reply.data:
            if args.json:
                print(json.dumps(entry, ensure_ascii=False))
            else:
                print(
                    f"{entry['taskUUID']}  {entry['status']:<10}  {entry['createdAt']}  "
                    f"{entry.get('model')}  {entry.get('numberResults')}"
                )
            shown += 1
        cursor = reply.body.get("nextCursor")
        if not cursor:
            break
    return OK


# --- ask


def _ask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the user message")
    p.add_argument("--model", default=os.environ.get("TASKWIRE_MODEL", DEFAULT_MODEL))
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--stream", action="store_true", help="print the text as it arrives")


async def _ask(args: argparse.Namespace, client: Client) -> int:
    import uuid

    task: dict[str, Any] = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "deliveryMethod": "stream" if args.stream else "sync",
    }
    settings: dict[str, Any] = {}
    if args.system:
        settings["systemPrompt"] = args.system
    if args.max_tokens is not None:
        settings["maxTokens"] = args.max_tokens
    if args.temperature is not None:
        settings["temperature"] = args.temperature
    if settings:
        task["settings"] = settings
    if not args.stream:
        reply = await client.post([task])
        for item in reply.data:
            if item.get("status") == "success":
                print(item.get("text", ""))
            elif item.get("status") == "processing":
                print(f"still running: taskwire get {task['taskUUID']}", file=sys.stderr)
        return _print_errors(reply.errors + [i["error"] for i in reply.data if "error" in i])
    status = OK
    async for event in client.stream(task):
        if "errors" in event:
            status = _print_errors(event["errors"])
            continue
        text = event.get("delta", {}).get("text")
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
        if "finishReason" in event:
            sys.stdout.write("\n")
            sys.stdout.flush()
    return status


def _print_errors(errors: list[dict[str, Any]]) -> int:
    for error in errors:
        print(f"{error.get('code')}: {error.get('message')}", file=sys.stderr)
    return TASKS_FAILED if errors else OK


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


COMMANDS: list[Command] = [
    Command("run", "run a JSONL file of tasks, results to a JSONL file", _run_arguments, _run),
    Command("get", "print a task's getResponse items as JSON", _get_arguments, _get),
    Command("ls", "list this key's tasks, newest first", _ls_arguments, _ls),
    Command("ask", "one prompt; --stream prints tokens as they arrive", _ask_arguments, _ask),
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskwire", description="taskwire command-line client")
    p.add_argument(
        "--base-url",
        default=os.environ.get("TASKWIRE_BASE_URL", DEFAULT_BASE_URL),
        help=f"the API (env TASKWIRE_BASE_URL, default {DEFAULT_BASE_URL})",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("TASKWIRE_API_KEY"),
        help="API key (env TASKWIRE_API_KEY)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(child)
        child.set_defaults(handler=command.run)
    return p


async def _main(args: argparse.Namespace) -> int:
    client = Client(args.base_url, args.api_key)
    try:
        handler: Callable[[argparse.Namespace, Client], Awaitable[int]] = args.handler
        return await handler(args, client)
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.api_key:
        print("taskwire: an API key is needed (--api-key or TASKWIRE_API_KEY)", file=sys.stderr)
        return USAGE
    try:
        return asyncio.run(_main(args))
    except Fatal as exc:
        print(f"taskwire: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
