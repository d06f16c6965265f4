"""The outbound guard over every address form, with a stub resolver, and DNS rebinding."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator

import httpx
import pytest

from core.http_guard import GuardedClient
from core.outbound import (
    OutboundPolicy,
    OutboundRefused,
    OutboundUnresolvable,
    check_url,
    embedded_ipv4,
    parse_ip_literal,
)
from tests.receiver import Receiver, running_receiver

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"

# What a stub DNS answers for names in the table.
DNS = {
    "public.test": [PUBLIC_V4],
    "public6.test": [PUBLIC_V6],
    "dual.test": [PUBLIC_V4, PUBLIC_V6],
    "loopback.test": ["127.0.0.1"],
    "mixed.test": [PUBLIC_V4, "10.1.2.3"],  # one bad answer spoils the name
    "metadata.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:127.0.0.1"],
}


async def stub_resolver(host: str) -> list[str]:
    if host not in DNS:
        raise OSError(f"no such host {host}")
    return DNS[host]


ALLOWED = [
    f"http://{PUBLIC_V4}/hook",
    f"https://[{PUBLIC_V6}]:8443/hook",
    "https://public.test/hook",
    "http://public6.test/hook",
    "http://dual.test/x?y=1",
    "http://user:pw@public.test/hook",  # credentials do not change where it goes
    "http://127.0.0.1@public.test/",  # "127.0.0.1" is the user name here
    "http://[64:ff9b::5db8:d822]/",  # NAT64 of a public address
    "http://[2002:5db8:d822::1]/",  # 6to4 of a public address
]

REFUSED = {
    # loopback, in every spelling
    "http://127.0.0.1/": "loopback",
    "http://127.1/": "loopback",
    "http://2130706433/": "loopback",
    "http://0x7f000001/": "loopback",
    "http://0177.0.0.1/": "not a valid URL",  # httpx refuses 0-prefixed dotted quads
    "http://0x7f.1/": "loopback",
    "http://[::1]/": "loopback",
    "http://[::ffff:127.0.0.1]/": "loopback",
    "http://[::ffff:7f00:1]/": "loopback",
    "http://user@127.0.0.1/": "loopback",
    "http://public.test@127.0.0.1/": "loopback",
    "http://loopback.test/": "loopback",
    "http://mapped.test/": "loopback",
    # private, link-local, metadata
    "http://10.0.0.1/": "private",
    "http://172.16.5.4/": "private",
    "http://192.168.0.10/": "private",
    "http://mixed.test/": "private",
    "http://169.254.169.254/latest/meta-data": "link-local",
    "http://metadata.test/": "link-local",
    "http://[fe80::1]/": "link-local",
    # carrier-grade NAT, multicast, reserved, unspecified, unique-local
    "http://100.64.0.1/": "carrier-grade NAT",
    "http://100.127.255.254/": "carrier-grade NAT",
    "http://224.0.0.1/": "multicast",
    "http://[ff02::1]/": "multicast",
    "http://240.0.0.1/": "reserved",
    "http://0.0.0.0/": "unspecified",
    "http://[::]/": "unspecified",
    "http://[fd12:3456::1]/": "unique-local",
    "http://[fec0::1]/": "site-local",
    "http://[feff:ffff::1]/": "site-local",
    # IPv4 embedded in IPv6, unwrapped
    "http://[64:ff9b::a00:1]/": "carries 10.0.0.1",
    "http://[64:ff9b::7f00:1]/": "carries 127.0.0.1",
    "http://[2002:7f00:1::1]/": "carries 127.0.0.1",
    "http://[2002:a9fe:a9fe::1]/": "carries 169.254.169.254",
    "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/": "carries 10.0.0.1",  # Teredo
    "http://[::127.0.0.1]/": "carries 127.0.0.1",  # IPv4-compatible
    # not http(s), or no host
    "ftp://public.test/": "only http and https",
    "file:///etc/passwd": "only http and https",
    "gopher://public.test/": "only http and https",
    "http:///path": "no host",
    # what httpx (the client) cannot represent is refused, not read some other way
    "http://0127.0.0.1/hook": "not a valid URL",  # inet_aton: 87.0.0.1; httpx: invalid
    "http://xn--127-0.0.0.1/hook": "not a valid URL",  # a bad IDNA A-label
    "http://[v1.fe80::a]/x.png": "not a valid URL",  # an IPvFuture literal
    "http://[fe80::1%25eth0]/": "zone",
    "http://%31%32%37.0.0.1/": "not a valid host name",
    "http://public.test:65536/": "port 65536",
    "http://public.test:0/": "port 0",
    "http:public.test": "no host",
}


@pytest.mark.parametrize("url", ALLOWED)
async def test_allowed(url: str) -> None:
    target = await check_url(url, OutboundPolicy(), stub_resolver)
    assert all(ipaddress.ip_address(a).is_global for a in map(str, target.addresses))


@pytest.mark.parametrize(("url", "reason"), list(REFUSED.items()))
async def test_refused(url: str, reason: str) -> None:
    with pytest.raises(OutboundRefused, match=reason):
        await check_url(url, OutboundPolicy(), stub_resolver)


@pytest.mark.parametrize(
    "url",
    [
        "http://Public.TEST/hook",
        "http://bücher.test/hook",
        "http://user@public.test:8080/",
        "http://1.2.3.4\\@public.test/",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/",
        "http://2130706433/",
    ],
)
async def test_the_host_checked_is_the_host_httpx_dials(url: str) -> None:
    """One parser: the guard resolves exactly the host httpx will hand to connect_tcp."""
    seen: list[str] = []

    async def recording(host: str) -> list[str]:
        seen.append(host)
        return [PUBLIC_V4]

    policy = OutboundPolicy(["127.0.0.0/8"])
    target = await check_url(url, policy, recording)
    dialed = httpx.URL(url).raw_host.decode("ascii")
    assert target.host == dialed.lower()
    assert seen in ([], [target.host])  # literals are not looked up


@pytest.mark.parametrize(
    "url", ["http://0127.0.0.1/hook", "http://xn--127-0.0.0.1/hook", "http://[v1.fe80::a]/"]
)
async def test_the_client_refuses_what_it_cannot_parse(url: str) -> None:
    """Delivery and image fetches see a refusal, not httpx's InvalidURL or IDNAError."""
    client = GuardedClient(OutboundPolicy(), resolver=stub_resolver)
    with pytest.raises(OutboundRefused, match="not a valid URL"):
        await client.request("POST", url, content=b"{}")
    await client.aclose()


async def test_unresolvable_is_its_own_verdict() -> None:
    with pytest.raises(OutboundUnresolvable):
        await check_url("http://nowhere.test/", OutboundPolicy(), stub_resolver)


async def test_allow_list_opens_exactly_its_ranges() -> None:
    policy = OutboundPolicy(["127.0.0.0/8"])
    await check_url("http://127.0.0.1:9/", policy, stub_resolver)
    await check_url("http://[::ffff:127.0.0.1]/", policy, stub_resolver)
    with pytest.raises(OutboundRefused):
        await check_url("http://10.0.0.1/", policy, stub_resolver)
    with pytest.raises(OutboundRefused):
        await check_url("http://[::1]/", policy, stub_resolver)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.com", None),
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
        ("08.1.1.1", None),
    ],
)
def test_literal_spellings(text: str, expected: str | None) -> None:
    parsed = parse_ip_literal(text)
    assert (str(parsed) if parsed else None) == expected


def test_embedded_ipv4_forms() -> None:
    cases = {
        "::ffff:1.2.3.4": "1.2.3.4",
        "64:ff9b::102:304": "1.2.3.4",
        "2002:102:304::": "1.2.3.4",
        "2001:0:4136:e378:8000:63bf:fefd:fcfb": "1.2.3.4",
        "2606:2800:220:1::1": None,
    }
    for text, inner in cases.items():
        found = embedded_ipv4(ipaddress.ip_address(text))
        assert (str(found) if found else None) == inner, text


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


async def test_rebinding_cannot_reach_loopback(receiver: Receiver) -> None:
    """First answer public, second loopback: the connection goes to the address checked,
    and no second lookup is made; the loopback receiver hears nothing."""
    answers = [[PUBLIC_V4], ["127.0.0.1"]]
    lookups: list[str] = []
    dialed: list[tuple[str, int]] = []

    async def rebinding(host: str) -> list[str]:
        lookups.append(host)
        return answers[min(len(lookups) - 1, 1)]

    client = GuardedClient(
        OutboundPolicy(),
        resolver=rebinding,
        deadline_s=1.0,
        on_dial=lambda ip, port: dialed.append((ip, port)),
    )
    url = f"http://rebind.test:{receiver.port}/hook"
    # Whether the public address answers (it cannot from an offline machine) does not matter:
    # what matters is where the connection went.
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        await client.request("POST", url, content=b"{}")
    await client.aclose()
    assert lookups == ["rebind.test"]
    assert dialed == [(PUBLIC_V4, receiver.port)]
    assert receiver.received == []


async def test_forbidden_at_delivery_time_makes_no_connection(receiver: Receiver) -> None:
    dialed: list[tuple[str, int]] = []

    async def loopback(host: str) -> list[str]:
        return ["127.0.0.1"]

    client = GuardedClient(
        OutboundPolicy(), resolver=loopback, on_dial=lambda ip, port: dialed.append((ip, port))
    )
    with pytest.raises(OutboundRefused, match="loopback"):
        await client.request("POST", f"http://sneaky.test:{receiver.port}/", content=b"{}")
    await client.aclose()
    assert dialed == []
    assert receiver.received == []


async def test_response_bodies_are_read_up_to_the_cap(receiver: Receiver) -> None:
    client = GuardedClient(OutboundPolicy(["127.0.0.0/8"]))
    response = await client.request(
        "POST", receiver.answer("/big"), content=b"{}", max_body_bytes=100
    )
    await client.aclose()
    assert response.status == 200
    assert len(response.body) == 100
    assert response.truncated


async def test_proxies_in_the_environment_are_ignored(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    client = GuardedClient(OutboundPolicy(["127.0.0.0/8"]))
    response = await client.request("POST", receiver.answer("/direct"), content=b"{}")
    await client.aclose()
    assert response.status == 200
    assert len(receiver.requests("/direct")) == 1
