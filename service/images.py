"""What the API does with images: `imageUpload` (stored, with a signed `imageURL`), and
checking a task's `inputs.images`.

An upload from a URL is fetched here, in the API process, through the guarded client's
per-key and per-host limits (core/http_guard.py: FetchLimits): one key's image hosts that
never answer hold only that key's few slots, so another key's upload is not queued behind
them. Waiting for a turn counts within the fetch deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from core.errors import InvalidRequest
from core.http_guard import BodyTooLarge, GuardedClient, NoTurn
from core.images import ImageError, ImageStore, check_bytes, classify, decode, extension
from core.outbound import OutboundPolicy, OutboundRefused, OutboundUnresolvable, check_url
from core.protocol import ImageUploadTask
from core.tokens import ImageTokens


class Images:
    """What the API does with images, for one process."""

    def __init__(
        self,
        store: ImageStore,
        client: GuardedClient,
        policy: OutboundPolicy,
        max_bytes: int,
        resolve_timeout_s: float,
        tokens: ImageTokens,
    ):
        self.store = store
        self.tokens = tokens
        self._client = client
        self._policy = policy
        self._max_bytes = max_bytes
        self._resolve_timeout_s = resolve_timeout_s

    async def upload(self, owner: str, task: ImageUploadTask, base_url: str) -> dict[str, Any]:
        """Store the image; its `imageURL` is signed for `owner` and lives as long as the
        upload. `base_url` is the API's public base (see service/origin.py)."""
        value = task.image
        try:
            kind = classify(value)
            if kind == "uuid":
                raise ImageError(
                    "give the image itself (URL, data URI or base64), not an imageUUID"
                )
            raw, mime = await (
                self._fetch(owner, value) if kind == "url" else decode(value, self._max_bytes)
            )
        except (ImageError, OutboundRefused) as exc:
            raise InvalidRequest(f"image: {exc}.", code="invalidImage", parameter="image") from None
        image_uuid = await self.store.put(owner, raw, mime)
        return {
            "taskType": "imageUpload",
            "taskUUID": task.taskUUID,
            "imageUUID": image_uuid,
            "imageURL": self.tokens.image_url(base_url, owner, image_uuid, extension(mime)),
        }

    async def _fetch(self, owner: str, url: str) -> tuple[bytes, str]:
        try:
            response = await self._client.request(
                "GET", url, max_body_bytes=self._max_bytes, fail_if_larger=True, tenant=owner
            )
        except NoTurn:
            raise ImageError(
                "could not fetch it in time: too many image fetches of this key, or to this "
                "host, are in flight; try again later"
            ) from None
        except BodyTooLarge:
            raise ImageError(f"the image is larger than {self._max_bytes} bytes") from None
        except (TimeoutError, OSError, httpx.HTTPError) as exc:
            raise ImageError(f"could not fetch it ({type(exc).__name__})") from None
        if response.status != 200:
            raise ImageError(f"the URL answered HTTP {response.status}")
        return response.body, await check_bytes(response.body, self._max_bytes)

    async def references(self, owner: str, images: list[str]) -> list[str]:
        """A task's images as stored references: imageUUIDs (inline images are stored as
        uploads, so task records stay small) and checked URLs. InvalidRequest names the
        offending entry."""
        return list(
            await asyncio.gather(
                *(self._reference(owner, index, value) for index, value in enumerate(images))
            )
        )

    async def _reference(self, owner: str, index: int, value: str) -> str:
        parameter = f"inputs.images.{index}"
        kind = classify(value)
        try:
            if kind == "uuid":
                if not await self.store.exists_for(owner, value):
                    raise ImageError(
                        "no such imageUUID for this key (upload it with "
                        "imageUpload; uploads expire)"
                    )
                return value
            if kind == "url":
                try:
                    async with asyncio.timeout(self._resolve_timeout_s):
                        await check_url(value, self._policy)
                except (OutboundUnresolvable, TimeoutError):
                    pass  # checked again when fetched
                return value
            raw, mime = await decode(value, self._max_bytes)
        except (ImageError, OutboundRefused) as exc:
            raise InvalidRequest(
                f"{parameter}: {exc}.", code="invalidImages", parameter=parameter
            ) from None
        return await self.store.put(owner, raw, mime)
