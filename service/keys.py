"""`python -m service.keys create|list|revoke|rotate|set-limits`: API keys at run time.

Talks to Redis (TASKWIRE_REDIS_URL, TASKWIRE_KEY_PREFIX) through core/apikeys.py; every API
process picks a change up within about a second. A new key is printed once, on stdout, and
never stored or logged: Redis keeps its SHA-256 only. `add_commands` registers the commands
on any argparse sub-parser (a future `taskwire keys ...`), `main` runs them alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import ValidationError
from redis.asyncio import Redis

from core.apikeys import (
    ApiKeyStore,
    KeyConflict,
    KeyNotFound,
    NewKey,
    is_owner_id,
)
from core.keys import Keys
from core.limits import TENANT_FIELDS
from core.settings import KeyLimits, Settings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "12h", "30d" or "2w"."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not found:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 12h, 30d)")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def moment(text: str) -> float:
    """Epoch seconds from an ISO 8601 time (UTC unless it names its offset)."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def add_commands(commands: Any) -> None:
    """Register create, list, revoke, rotate and set-limits on an argparse sub-parser."""
    create = commands.add_parser("create", help="make a new key (printed once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--owner", help="add the key to this existing owner (16 hex digits) instead of a new one"
    )
    _expiry_options(create)
    _limit_options(create)
    create.add_argument("--json", action="store_true", help="print JSON")

    listing = commands.add_parser("list", help="managed keys (never the keys themselves)")
    listing.add_argument("--owner", help="only this owner's keys")
    listing.add_argument("--json", action="store_true", help="print JSON")

    revoke = commands.add_parser("revoke", help="refuse keys from now on")
    revoke.add_argument("key_ids", nargs="+", metavar="KEY_ID", help="as `list` shows it")
    revoke.add_argument("--json", action="store_true", help="print JSON")

    rotate = commands.add_parser(
        "rotate", help="a new key for the same owner; the old one works for a grace period"
    )
    rotate.add_argument("key_id", metavar="KEY_ID")
    rotate.add_argument(
        "--grace",
        type=duration,
        default=3600.0,
        help="how long the old key keeps working (default 1h; 0: refused at once)",
    )
    rotate.add_argument("--name", help="the new key's name (default: the old one's)")
    _expiry_options(rotate)
    rotate.add_argument("--json", action="store_true", help="print JSON")

    limits = commands.add_parser("set-limits", help="an owner's limits (with no option: show them)")
    limits.add_argument("target", metavar="OWNER_OR_KEY_ID")
    _limit_options(limits)
    limits.add_argument(
        "--reset",
        default="",
        help="comma-separated limits to put back to the defaults (e.g. rps,burst), or all",
    )
    limits.add_argument("--json", action="store_true", help="print JSON")


def _expiry_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--expires-in", type=duration, help="e.g. 90d, 12h")
    group.add_argument("--expires-at", type=moment, help="ISO 8601, e.g. 2026-01-31T00:00:00Z")


def _limit_options(parser: argparse.ArgumentParser) -> None:
    for name in TENANT_FIELDS:
        kind = float if KeyLimits.model_fields[name].annotation in (float, float | None) else int
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"limit_{name}", type=kind)


def build_parser(prog: str = "python -m service.keys") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args, Settings()))
    except (KeyNotFound, KeyConflict) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        print(f"error: {_first_error(exc)}", file=sys.stderr)
        return 2


async def run(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    """Run one parsed command against the Redis the settings name."""
    stream = out or sys.stdout
    redis = Redis.from_url(settings.redis_url)
    store = ApiKeyStore(redis, Keys(settings.key_prefix, settings.queue_name))
    try:
        command = args.command
        if command == "create":
            return await _create(store, args, stream)
        if command == "list":
            return await _list(store, args, stream)
        if command == "revoke":
            return await _revoke(store, args, stream)
        if command == "rotate":
            return await _rotate(store, args, stream)
        return await _set_limits(store, args, settings, stream)
    finally:
        await redis.aclose()


def _expires(args: argparse.Namespace) -> float | None:
    if args.expires_at is not None:
        return float(args.expires_at)
    if args.expires_in is not None:
        return datetime.now(UTC).timestamp() + float(args.expires_in)
    return None


def _limit_values(args: argparse.Namespace) -> dict[str, float]:
    values = {
        name: getattr(args, f"limit_{name}")
        for name in TENANT_FIELDS
        if getattr(args, f"limit_{name}", None) is not None
    }
    KeyLimits(**values)  # the same bounds as TASKWIRE_KEY_LIMITS (ValidationError)
    return values


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "value"
    return f"{where.replace('_', '-')}: {error.get('msg', 'invalid')}"


def _print_new(new: NewKey, stream: TextIO, as_json: bool, extra: dict[str, Any]) -> None:
    if as_json:
        print(json.dumps({"apiKey": new.api_key, **new.record.public(), **extra}), file=stream)
        return
    print("New API key (shown this once; taskwire keeps only its SHA-256):", file=stream)
    print(new.api_key, file=stream)
    _print_record(new.record.public(), stream)
    for name, value in extra.items():
        print(f"  {name:<10} {value}", file=stream)


def _print_record(public: dict[str, object], stream: TextIO) -> None:
    for name in ("keyId", "owner", "name", "status", "created", "expires", "revoked", "replacedBy"):
        value = public.get(name)
        if value is not None or name == "expires":
            print(f"  {name:<10} {value if value is not None else 'never'}", file=stream)


async def _create(store: ApiKeyStore, args: argparse.Namespace, stream: TextIO) -> int:
    values = _limit_values(args)
    new = await store.create(args.name, expires=_expires(args), owner=args.owner)
    extra: dict[str, Any] = {}
    if values:
        extra["limits"] = await store.set_limits(new.record.owner, values)
    _print_new(new, stream, args.json, extra)
    return 0


async def _list(store: ApiKeyStore, args: argparse.Namespace, stream: TextIO) -> int:
    records = [r for r in await store.list() if args.owner in (None, r.owner)]
    rows = [record.public() for record in records]
    if args.json:
        print(json.dumps(rows), file=stream)
        return 0
    columns = ("keyId", "owner", "name", "status", "created", "expires")
    table = [[str(row[c] if row[c] is not None else "-") for c in columns] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in table)]) for i, c in enumerate(columns)]
    for line in [list(columns), *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)), file=stream)
    return 0


async def _revoke(store: ApiKeyStore, args: argparse.Namespace, stream: TextIO) -> int:
    done = [await store.revoke(key_id) for key_id in args.key_ids]
    if args.json:
        print(json.dumps([record.public() for record in done]), file=stream)
    else:
        for record in done:
            print(f"revoked {record.key_id} (owner {record.owner}, {record.name!r})", file=stream)
    return 0


async def _rotate(store: ApiKeyStore, args: argparse.Namespace, stream: TextIO) -> int:
    new, old = await store.rotate(
        args.key_id, grace_s=args.grace, name=args.name, expires=_expires(args)
    )
    valid_until = "revoked now" if old.revoked is not None else old.public()["expires"]
    _print_new(new, stream, args.json, {"replaces": old.key_id, "oldValidUntil": valid_until})
    return 0


async def _set_limits(
    store: ApiKeyStore, args: argparse.Namespace, settings: Settings, stream: TextIO
) -> int:
    owner = args.target if is_owner_id(args.target) else (await store.resolve(args.target)).owner
    values = _limit_values(args)
    reset = [part.strip().replace("-", "_") for part in args.reset.split(",") if part.strip()]
    if reset == ["all"]:
        reset = list(TENANT_FIELDS)
    if values or reset:
        limits = await store.set_limits(owner, values, reset)
        if owner in _settings_owners(settings):
            print(
                f"warning: TASKWIRE_KEY_LIMITS names owner {owner}; an API process that starts "
                "with it writes those limits over these",
                file=sys.stderr,
            )
    else:
        limits = await store.limits(owner)
    if args.json:
        print(json.dumps({"owner": owner, "limits": limits}), file=stream)
    else:
        print(f"owner {owner}", file=stream)
        for name in TENANT_FIELDS:
            shown = limits.get(name)
            print(f"  {name:<18} {_shown(shown) if shown is not None else 'default'}", file=stream)
    return 0


def _shown(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _settings_owners(settings: Settings) -> set[str]:
    from service.limits import override_owners

    try:
        return set(override_owners(settings))
    except ValueError:
        return set()


if __name__ == "__main__":
    sys.exit(main())
