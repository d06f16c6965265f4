"""The model catalog: the shipped file, prices and environment expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.catalog import Catalog, Price, expand_env
from core.settings import PROJECT_ROOT


def test_shipped_catalog_has_gpt_5_4_mini_with_reference_prices() -> None:
    catalog = Catalog.load(PROJECT_ROOT / "deploy" / "models.toml")
    model = catalog.get("openai:gpt@5.4-mini")
    assert model is not None
    # Vivgrid's page: $0.75 input, $0.08 cached input, $4.50 output (OpenAI's rates)
    assert model.price == Price(input=0.75, cached_input=0.08, output=4.50)
    assert model.context_window == 400_000
    assert model.max_output_tokens == 128_000
    names = [route.name for route in model.routes]
    assert names[:4] == ["sim-chat", "sim-responses", "sim-segmind", "sim-runware"]
    assert {"ourtoken", "vivgrid", "openrouter", "segmind"} <= set(names)
    adapters = {route.name: route.adapter for route in model.routes}
    assert adapters["ourtoken"] == "openai-responses"
    assert adapters["segmind"] == "segmind"
    assert adapters["vivgrid"] == adapters["openrouter"] == "openai-chat"
    ourtoken = next(r for r in model.routes if r.name == "ourtoken")
    assert ourtoken.price == Price(input=0.15, output=0.90)  # 20% of the official price
    openrouter = next(r for r in model.routes if r.name == "openrouter")
    assert openrouter.model == "openai/gpt-5.4-mini"
    assert openrouter.headers["X-Title"] == "taskwire"


def test_cost_uses_cached_input_price() -> None:
    price = Price(input=0.75, cached_input=0.075, output=4.50)
    assert price.cost(1_000_000, 0) == pytest.approx(0.75)
    assert price.cost(0, 1_000_000) == pytest.approx(4.50)
    assert price.cost(1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.075)
    assert price.cost(1000, 500, cached_tokens=400) == pytest.approx(
        (600 * 0.75 + 400 * 0.075 + 500 * 4.50) / 1e6
    )
    # without a cached price, cached tokens cost the input price
    assert Price(input=1, output=2).cost(100, 0, cached_tokens=100) == pytest.approx(1e-4)


def test_env_expansion() -> None:
    env = {"A": "x"}
    assert expand_env("${A}/v1", env) == "x/v1"
    assert expand_env("${B:-http://d}/v1", env) == "http://d/v1"
    with pytest.raises(ValueError, match="B is not set"):
        expand_env("${B}", env)


def test_invalid_catalogs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[models."a:b@1"]\nname="x"\ncontext_window=1\nmax_output_tokens=1\n'
        "price={input=1,output=1}\nroutes=[]\n"
    )
    with pytest.raises(ValueError, match="routes"):
        Catalog.load(path)
    path.write_text("")
    with pytest.raises(ValueError, match="no models"):
        Catalog.load(path)


def test_shipped_catalog_states_capabilities_and_prefill_per_route() -> None:
    catalog = Catalog.load(PROJECT_ROOT / "deploy" / "models.toml")
    model = catalog.get("openai:gpt@5.4-mini")
    assert model is not None
    capabilities = model.capabilities
    assert capabilities.image_input and capabilities.tools and capabilities.structured_output
    assert capabilities.thinking_levels == ("off", "low", "medium", "high")
    prefill = {route.name: route.allows_prefill for route in model.routes}
    assert prefill["vivgrid"] and prefill["openrouter"] and prefill["runware"]
    assert not prefill["ourtoken"] and not prefill["segmind"]
    assert model.allows_prefill


def test_a_route_may_override_its_adapters_prefill_default(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        """
[models."m:x@1"]
name = "X"
context_window = 1000
max_output_tokens = 100
price = { input = 1, output = 2 }

[[models."m:x@1".routes]]
name = "chat"
adapter = "openai-chat"
base_url = "http://127.0.0.1:1/v1"
model = "x"
api_key_env = "X_KEY"
assistant_prefill = false
"""
    )
    model = Catalog.load(path).get("m:x@1")
    assert model is not None
    assert not model.routes[0].allows_prefill and not model.allows_prefill
    assert model.capabilities.thinking_levels == () and not model.capabilities.tools
