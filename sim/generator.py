"""Deterministic simulated model output: the same seed and prompt always give the same tokens."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

_WORDS = (
    "the quick brown fox jumps over lazy dogs while careful engineers measure every "
    "request and each queue keeps its promise to deliver results on time with tokens "
    "streaming through redis workers that never lose a task because restarts are "
    "bounded and webhooks retry until receivers answer so clients can trust the system"
).split()

_REASONING = (
    "first consider what the user asks then weigh the options check the constraints and "
    "settle on a short clear answer"
).split()


def _rng(seed: int | None, *parts: str) -> random.Random:
    if seed is None:
        return random.Random()
    digest = hashlib.sha256("\x1f".join((str(seed), *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def answer_tokens(seed: int | None, prompt: str, choice: int, count: int) -> list[str]:
    """`count` tokens of answer text; each token is a word with its leading space."""
    rng = _rng(seed, prompt, str(choice))
    words = [rng.choice(_WORDS) for _ in range(count)]
    if words:
        words[0] = words[0].capitalize()
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def reasoning_tokens(seed: int | None, prompt: str, choice: int, count: int) -> list[str]:
    rng = _rng(seed, "reasoning", prompt, str(choice))
    return [(" " if i else "") + rng.choice(_REASONING) for i in range(count)]


def count_prompt_tokens(texts: Sequence[str]) -> int:
    """A stable stand-in for a tokenizer: whitespace-separated words, at least one per text."""
    return sum(max(1, len(text.split())) for text in texts)


def apply_stop(tokens: list[str], stop: Sequence[str]) -> tuple[list[str], bool]:
    """Cut the answer before the first stop sequence; True when one was hit."""
    if not stop:
        return tokens, False
    text = ""
    for i, token in enumerate(tokens):
        candidate = text + token
        hits = [candidate.find(s) for s in stop if s and s in candidate]
        if hits:
            cut = min(hits)
            kept = tokens[:i]
            remainder = candidate[len(text) : cut] if cut > len(text) else ""
            if remainder:
                kept.append(remainder)
            elif cut < len(text):
                # the stop sequence began inside earlier tokens: rebuild from the joined text
                joined = text[:cut]
                return ([joined] if joined else []), True
            return kept, True
        text = candidate
    return tokens, False
