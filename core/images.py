"""Images: recognising them by content, decoding the forms clients send, and keeping uploads.

Clients give images as an `imageUUID` (from `imageUpload`), an http(s) URL, a data URI or
bare base64. Only jpeg, png, webp, bmp and gif are accepted, told apart by their bytes, not
by a name or a declared type. Decoding runs in a thread: a large image must not stall the
event loop of the process handling it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from core.keys import Keys

_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class ImageError(Exception):
    """An image input that cannot be used; the message says why."""


def sniff(data: bytes) -> str | None:
    """The image type of `data` by its magic bytes, or None if it is not one we accept."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM" and len(data) >= 26:
        return "image/bmp"
    return None


def extension(mime: str) -> str:
    return {
        "image/jpeg": "jpg",
        "image/png": "png",
        "image/gif": "gif",
        "image/webp": "webp",
        "image/bmp": "bmp",
    }[mime]


def classify(value: str) -> str:
    """What an image string is: "uuid", "url", "data-uri" or "base64"."""
    text = value.strip()
    if _UUID.fullmatch(text):
        return "uuid"
    if text.startswith(("http://", "https://")):
        return "url"
    if text.startswith("data:"):
        return "data-uri"
    return "base64"


def _decode(value: str, max_bytes: int) -> tuple[bytes, str]:
    text = value.strip()
    if text.startswith("data:"):
        match = _DATA_URI.match(text)
        if match is None or not match["b64"]:
            raise ImageError("a data URI must be base64-encoded (data:image/png;base64,...)")
        text = match["data"]
    if len(text) > (max_bytes * 4) // 3 + 8:
        raise ImageError(f"the image is larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("not valid base64") from None
    return raw, _checked(raw, max_bytes)


def _checked(raw: bytes, max_bytes: int) -> str:
    if len(raw) > max_bytes:
        raise ImageError(f"the image is larger than {max_bytes} bytes")
    mime = sniff(raw)
    if mime is None:
        raise ImageError("not a jpeg, png, webp, bmp or gif image (checked by content)")
    return mime


async def decode(value: str, max_bytes: int) -> tuple[bytes, str]:
    """Bytes and type of a data URI or bare base64 image; ImageError if unusable."""
    return await asyncio.to_thread(_decode, value, max_bytes)


async def check_bytes(raw: bytes, max_bytes: int) -> str:
    """The type of fetched image bytes; ImageError if unusable."""
    return await asyncio.to_thread(_checked, raw, max_bytes)


async def data_uri(raw: bytes, mime: str) -> str:
    encoded = await asyncio.to_thread(base64.b64encode, raw)
    return f"data:{mime};base64,{encoded.decode()}"


@dataclass(frozen=True, slots=True)
class StoredImage:
    owner: str
    mime: str
    data: bytes


class ImageStore:
    """Uploaded images in Redis, for the retention period."""

    def __init__(self, redis: Redis, keys: Keys, retention_s: int):
        self._redis = redis
        self._keys = keys
        self._retention_s = retention_s

    async def put(self, owner: str, data: bytes, mime: str) -> str:
        image_uuid = str(uuid.uuid4())
        key = self._keys.image(image_uuid)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"owner": owner, "mime": mime, "data": data})
            pipe.expire(key, self._retention_s)
            await pipe.execute()
        return image_uuid

    async def get(self, image_uuid: str) -> StoredImage | None:
        owner, mime, data = await self._redis.hmget(  # type: ignore[misc]
            self._keys.image(image_uuid), ["owner", "mime", "data"]
        )
        if owner is None or mime is None or data is None:
            return None
        return StoredImage(owner.decode(), mime.decode(), bytes(data))

    async def exists_for(self, owner: str, image_uuid: str) -> bool:
        stored_owner = await self._redis.hget(self._keys.image(image_uuid), "owner")  # type: ignore[misc]
        return stored_owner is not None and stored_owner.decode() == owner
