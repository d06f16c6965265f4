"""The model catalog: AIR ids mapped to prices, limits and upstream routes (deploy/models.toml)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_ENV_REF = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand `${VAR}` and `${VAR:-default}` references, so one catalog serves dev and prod."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        found = env.get(match["name"])
        if found:
            return found
        if match["default"] is not None:
            return match["default"]
        raise ValueError(f"environment variable {match['name']} is not set")

    return _ENV_REF.sub(substitute, value)


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    output: float = Field(ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Cost in USD of one call; cached prompt tokens use the cached-input price if known."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = (
            (prompt_tokens - cached) * self.input
            + cached * cached_rate
            + completion_tokens * self.output
        )
        return round(total / 1_000_000, 10)


AdapterName = Literal["openai-chat", "openai-responses", "segmind", "runware"]
ThinkingLevel = Literal["off", "low", "medium", "high"]

# Whether an adapter's upstream API continues a conversation that ends with an assistant
# message (a prefill), when the route does not say (docs/providers.md gives the reasons).
PREFILL_BY_ADAPTER: dict[str, bool] = {
    "openai-chat": True,
    "openai-responses": False,
    "segmind": False,
    "runware": True,
}


class Route(BaseModel):
    """One way to reach a model: an upstream API, where it lives, and how to authenticate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    adapter: AdapterName
    base_url: str
    model: str = Field(min_length=1)
    api_key_env: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    timeout_s: float = Field(default=120.0, gt=0)
    weight: float = Field(default=1.0, gt=0)
    price: Price | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    # How thinkingLevel is sent on Chat Completions: OpenAI's `reasoning_effort`,
    # OpenRouter's `reasoning` object, or not at all.
    reasoning_style: Literal["openai", "openrouter", "none"] = "openai"
    # Image URLs from clients: fetched by taskwire (through the outbound guard) and sent
    # inline, or passed to the provider as URLs.
    image_urls: Literal["fetch", "pass"] = "fetch"
    # Whether this route takes a conversation ending with an assistant message (a prefill);
    # unset, the adapter's default (PREFILL_BY_ADAPTER).
    assistant_prefill: bool | None = None

    @property
    def allows_prefill(self) -> bool:
        if self.assistant_prefill is not None:
            return self.assistant_prefill
        return PREFILL_BY_ADAPTER[self.adapter]

    def cost_rank(self) -> float:
        """A route's price for ordering cheapest-first (input plus output per million);
        a route without a price sorts last."""
        if self.price is None:
            return float("inf")
        return self.price.input + self.price.output

    @field_validator("base_url")
    @classmethod
    def _expand(cls, value: str) -> str:
        expanded = expand_env(value).rstrip("/")
        if not expanded.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be http(s), got {expanded!r}")
        return expanded

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The route's key from the environment, or None when the route is not configured."""
        env = os.environ if environ is None else environ
        return env.get(self.api_key_env) or None


class Capabilities(BaseModel):
    """What a model can do, as GET /v1/models shows it (unset: nothing beyond text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_input: bool = False
    tools: bool = False
    structured_output: bool = False
    thinking_levels: tuple[ThinkingLevel, ...] = ()


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    air: str
    name: str
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    price: Price
    capabilities: Capabilities = Field(default_factory=Capabilities)
    routing: Literal["ordered", "cheapest"] = "ordered"
    routes: tuple[Route, ...] = Field(min_length=1)

    @property
    def allows_prefill(self) -> bool:
        """Some route of the model continues a conversation ending with an assistant message."""
        return any(route.allows_prefill for route in self.routes)


class Catalog:
    """The models taskwire serves, keyed by AIR id."""

    def __init__(self, models: Mapping[str, ModelSpec]):
        self._models = dict(models)

    @classmethod
    def load(cls, path: Path) -> Catalog:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
        models = {
            air: ModelSpec.model_validate({"air": air, **spec})
            for air, spec in raw.get("models", {}).items()
        }
        if not models:
            raise ValueError(f"{path} defines no models")
        return cls(models)

    def get(self, air: str) -> ModelSpec | None:
        return self._models.get(air)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def ids(self) -> list[str]:
        return sorted(self._models)
