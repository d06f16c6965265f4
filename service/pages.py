"""The playground page and the model list it (and OpenAI-style clients) reads."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from service.api import Owner, json_response
from service.state import State

router = APIRouter()
_PLAYGROUND = (Path(__file__).parent / "static" / "playground.html").read_text()


@router.get("/playground", response_class=HTMLResponse)
async def playground() -> HTMLResponse:
    """A page to try taskwire in a browser: streams an answer and shows re-attaching."""
    return HTMLResponse(_PLAYGROUND, headers={"Cache-Control": "no-cache"})


@router.get("/v1/models")
async def models(_owner: Owner, state: State) -> Response:
    """The models this server serves, in OpenAI's list format."""
    data = [
        {
            "id": model.air,
            "object": "model",
            "owned_by": model.air.split(":", 1)[0],
            "name": model.name,
            "context_window": model.context_window,
            "max_output_tokens": model.max_output_tokens,
            "pricing": model.price.model_dump(exclude_none=True),
            "capabilities": {
                "imageInput": model.capabilities.image_input,
                "tools": model.capabilities.tools,
                "structuredOutput": model.capabilities.structured_output,
                "thinkingLevels": list(model.capabilities.thinking_levels),
                "assistantPrefill": model.allows_prefill,
            },
        }
        for model in state.catalog
    ]
    return json_response({"object": "list", "data": data}, 200)
