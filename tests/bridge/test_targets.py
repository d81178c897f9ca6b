"""The address guard of webhook delivery: what an endpoint URL may be at add, and what a host may
resolve to at delivery."""

from __future__ import annotations

import ipaddress
import re

import httpx
import pytest

from iothub.bridge.targets import TargetRefused, check_url, refused_because, resolve


@pytest.mark.parametrize(
    "address", ["100.100.100.200", "100.64.0.1", "::ffff:100.100.100.200", "192.0.2.1", "224.0.0.1", "ff02::1"]
)
async def test_the_guard_refuses_every_non_global_address(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ValueError, match=f"{re.escape(address)} is a [a-z-]+ address"):
        check_url(f"http://{host}/hook", allow_private=False)
    with pytest.raises(TargetRefused, match=re.escape(address)):
        await resolve(httpx.URL(f"http://{host}/hook"), allow_private=False)
    allowed = await resolve(httpx.URL(f"http://{host}/hook"), allow_private=True)
    assert ipaddress.ip_address(allowed) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com:99999/", "port 99999 is not between 1 and 65535"),
        ("http://example.com:0/", "port 0 is not between 1 and 65535"),
        ("http://2130706433/", "2130706433 is an address in a numeric form; write an IPv4 address as a.b.c.d"),
        ("http://0x7f.1/", "0x7f.1 is an address in a numeric form"),
        ("http://127.1/hook", "127.1 is an address in a numeric form"),
        ("https://0x7f000001:8443/", "0x7f000001 is an address in a numeric form"),
        ("http://example.123/", "example.123 is an address in a numeric form"),
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_invalid_ports_and_numeric_hosts_are_refused_at_add(url: str, message: str, allow_private: bool) -> None:
    with pytest.raises(ValueError, match=f"^url {re.escape(repr(url))}: {re.escape(message)}"):
        check_url(url, allow_private)


def test_a_literal_address_with_a_trailing_dot_is_checked_as_the_address() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1 is a loopback address"):
        check_url("http://127.0.0.1./hook", allow_private=False)
    for fine in (
        "http://123.example/hook",
        "https://93.184.215.14:8443/",
        "http://example.com:65535/",
        "http://8.8.8.8./",
    ):
        assert check_url(fine, allow_private=False) == httpx.URL(fine)


async def test_the_guard_lets_a_global_address_through() -> None:
    assert refused_because(ipaddress.ip_address("93.184.215.14")) is None
    assert await resolve(httpx.URL("https://93.184.215.14/hook"), allow_private=False) == "93.184.215.14"
