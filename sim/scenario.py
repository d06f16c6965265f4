"""What one simulated request should do: timing, length and faults, read from the prompt.

Tests drive any upstream behaviour through the whole stack by writing directives into the
prompt, e.g. `[[sim:status=429,retry_after=1,fail=2]]` (fail twice with 429, then succeed),
`[[sim:hang]]`, `[[sim:drop_after=5]]`, `[[sim:tokens=200,tps=50,ttft=100]]`.

| directive        | effect                                                                  |
|------------------|-------------------------------------------------------------------------|
| tokens=N         | answer length in tokens (before max_tokens)                             |
| ttft=MS          | delay before the first token                                            |
| tps=N            | tokens per second after the first (0 = as fast as possible)            |
| status=C         | answer HTTP C with an error body instead of a completion                |
| retry_after=S    | with status: send `Retry-After: S`                                      |
| fail=K           | only the first K requests with this prompt get the fault (any of them)  |
| hang             | never answer (until the client gives up)                                |
| hang_after=N     | stream N tokens, then go silent forever                                 |
| drop_after=N     | stream N tokens, then drop the connection                               |
| reasoning=N      | emit N reasoning tokens before the answer                               |
| cached=N         | report N prompt tokens as served from the provider's cache              |
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

_DIRECTIVE = re.compile(r"\[\[sim:([^\]]*)\]\]")


@dataclass(frozen=True, slots=True)
class Scenario:
    tokens: int = 24
    ttft_ms: float = 0.0
    tps: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    fail: int | None = None
    hang: bool = False
    hang_after: int | None = None
    drop_after: int | None = None
    reasoning: int = 0
    cached: int = 0
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def faulty(self) -> bool:
        return (
            self.status is not None
            or self.hang
            or self.hang_after is not None
            or self.drop_after is not None
        )

    def well_behaved(self) -> Scenario:
        """This scenario without its faults (timing and length kept)."""
        return replace(self, status=None, hang=False, hang_after=None, drop_after=None)

    def with_directives(self, text: str) -> Scenario:
        """This scenario overridden by every `[[sim:...]]` directive found in `text`."""
        scenario = self
        for match in _DIRECTIVE.finditer(text):
            for part in match.group(1).split(","):
                name, _, value = part.strip().partition("=")
                scenario = scenario._apply(name.strip(), value.strip())
        return scenario

    def _apply(self, name: str, value: str) -> Scenario:
        numeric = {
            "tokens": ("tokens", int),
            "ttft": ("ttft_ms", float),
            "tps": ("tps", float),
            "status": ("status", int),
            "fail": ("fail", int),
            "hang_after": ("hang_after", int),
            "drop_after": ("drop_after", int),
            "reasoning": ("reasoning", int),
            "cached": ("cached", int),
        }
        if name in numeric:
            attr, kind = numeric[name]
            return replace(self, **{attr: kind(value)})
        if name == "retry_after":
            return replace(self, retry_after=value)
        if name == "hang":
            return replace(self, hang=True)
        return replace(self, flags=self.flags | {name})
