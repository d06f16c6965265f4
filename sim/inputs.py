"""Reading message content the way providers do: text parts and image parts."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from sim.generation import BadRequest, ImageInput

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.S)


def image_from_url(url: str) -> ImageInput:
    """An image part's URL: a base64 data URI (decoded and checked) or an http(s) URL."""
    match = _DATA_URI.match(url)
    if match:
        try:
            raw = base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("image data URI is not valid base64", "image_url") from None
        if not match["mime"].startswith("image/"):
            raise BadRequest(f"unsupported image type {match['mime']}", "image_url")
        return ImageInput("data", match["mime"], len(raw))
    if url.startswith(("http://", "https://")):
        return ImageInput("url", None, None, url)
    raise BadRequest("image_url must be an http(s) URL or a base64 data URI", "image_url")


def read_content(content: Any, texts: list[str], images: list[ImageInput]) -> None:
    """Collect text and images from a message's `content` (a string or a list of parts)."""
    if isinstance(content, str):
        texts.append(content)
        return
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            raise BadRequest("content parts must be objects", "messages")
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise BadRequest("image_url needs a url", "messages")
            images.append(image_from_url(url))
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise BadRequest("input_image needs image_url", "input")
            images.append(image_from_url(url))
        else:
            raise BadRequest(f"unsupported content part type {kind!r}", "messages")
