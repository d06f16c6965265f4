"""httpx's client without a cookie jar, for the clients one process shares across tenants.

httpx keeps every `Set-Cookie` a server sends and sends it back on later requests to that
host, through whichever request comes next: one tenant's webhook receiver could hand a
cookie to another tenant's request to the same host, and an upstream's load-balancer
cookies would ride along on every provider call. taskwire's upstream calls, webhook
deliveries and image fetches never need cookies, so their clients keep none, and no response
pays for parsing them (about 5% of a worker's CPU under sync load, by py-spy).
"""

from __future__ import annotations

from typing import Any

import httpx


class _NoCookies(httpx.Cookies):
    """A jar that is always empty: nothing is taken from responses or added to requests."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        raise TypeError("this client keeps no cookies")


_NO_COOKIES = _NoCookies()


class CookielessClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` that neither keeps nor sends cookies."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise TypeError("this client keeps no cookies")
