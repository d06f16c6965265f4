"""Turns a task's stored image references into what a route takes: inline data URIs, or
URLs passed through when the route is configured to (`image_urls = "pass"`). An uploaded
image goes to such a route as its signed, expiring imageURL when the API's public base URL
is configured (the upstream must be able to reach it), else inline.

URLs are fetched through the guarded client's per-key and per-host limits (core/http_guard.py:
FetchLimits), so one key's image hosts that never answer do not delay another key's
results; a fetch waiting for its turn waits on the limit, within the fetch deadline."""

from __future__ import annotations

import httpx

from core.catalog import Route
from core.http_guard import BodyTooLarge, GuardedClient, NoTurn
from core.images import (
    ImageError,
    ImageStore,
    StoredImage,
    check_bytes,
    classify,
    data_uri,
    extension,
)
from core.outbound import OutboundRefused
from core.tokens import ImageTokens


class ImageResolver:
    def __init__(
        self,
        store: ImageStore,
        client: GuardedClient,
        max_bytes: int,
        *,
        tokens: ImageTokens | None = None,
        public_base_url: str | None = None,
    ):
        self._store = store
        self._client = client
        self._max_bytes = max_bytes
        self._tokens = tokens
        self._public_base_url = public_base_url
        self._signs_urls = tokens is not None and public_base_url is not None

    async def for_route(
        self, owner: str, refs: list[str], route: Route, memo: dict[str, str]
    ) -> tuple[str, ...]:
        """Each reference as a URL the route can use. `memo` keeps what was already built for
        this result (a fallback to another route does not fetch again)."""
        resolved = []
        for ref in refs:
            kind = classify(ref)
            if kind == "url" and route.image_urls == "pass":
                resolved.append(ref)
                continue
            if kind == "uuid" and route.image_urls == "pass" and self._signs_urls:
                key = f"{ref}#url"
                if key not in memo:
                    memo[key] = await self._signed_url(owner, ref)
                resolved.append(memo[key])
                continue
            if ref not in memo:
                memo[ref] = await self._inline(owner, ref)
            resolved.append(memo[ref])
        return tuple(resolved)

    async def _uploaded(self, owner: str, ref: str) -> StoredImage:
        stored = await self._store.get(ref)
        if stored is None or stored.owner != owner:
            raise ImageError(f"image {ref} is gone (uploads are kept for the retention period)")
        return stored

    async def _signed_url(self, owner: str, ref: str) -> str:
        assert self._tokens is not None and self._public_base_url is not None
        stored = await self._uploaded(owner, ref)
        return self._tokens.image_url(self._public_base_url, owner, ref, extension(stored.mime))

    async def _inline(self, owner: str, ref: str) -> str:
        if classify(ref) == "uuid":
            stored = await self._uploaded(owner, ref)
            return await data_uri(stored.data, stored.mime)
        try:
            response = await self._client.request(
                "GET", ref, max_body_bytes=self._max_bytes, fail_if_larger=True, tenant=owner
            )
        except OutboundRefused as exc:
            raise ImageError(f"the image URL is not allowed: {exc}") from None
        except NoTurn:
            raise ImageError(
                "the image URL could not be fetched in time: too many image fetches of this "
                "key, or to this host, were in flight"
            ) from None
        except BodyTooLarge:
            raise ImageError(
                f"the image at the URL is larger than {self._max_bytes} bytes"
            ) from None
        except (TimeoutError, OSError, httpx.HTTPError) as exc:
            raise ImageError(f"the image URL could not be fetched ({type(exc).__name__})") from None
        if response.status != 200:
            raise ImageError(f"the image URL answered HTTP {response.status}")
        mime = await check_bytes(response.body, self._max_bytes)
        return await data_uri(response.body, mime)
