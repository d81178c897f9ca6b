"""The address guard of webhook delivery (server-side request forgery): an endpoint may not reach
the hub's own host or network unless ``webhooks.allow_private_targets`` is set.

A target is checked after DNS resolution, and the request then goes to the address that was
checked (the name is kept in ``Host`` and in TLS's server name), so a name that resolves
differently the second time cannot slip through. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """A webhook URL whose host is, or resolves to, an address the guard refuses."""


def refused_because(address: Address) -> str | None:
    """Why ``address`` may not be a webhook target, or None when it may: every address that is not
    globally reachable is refused (an IPv4-mapped IPv6 address as its IPv4 address), and multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for reason, hit in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("non-global", not address.is_global),  # shared (100.64.0.0/10), documentation, benchmarking ...
    ):
        if hit:
            return reason
    return None


def check_url(url: str, allow_private: bool) -> httpx.URL:
    """A URL an endpoint may have: http(s) with a host; a literal address or ``localhost`` is checked
    at once (names are checked again when they resolve). :class:`ValueError` says what is wrong."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"url {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"url {url!r}: an endpoint URL is http:// or https:// with a host")
    if parsed.userinfo:
        raise ValueError(f"url {url!r}: credentials in the URL are not allowed (sign with the secret instead)")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(f"url {url!r}: port {parsed.port} is not between 1 and 65535")
    host = parsed.host.removesuffix(".")
    if _numeric_host(host):
        raise ValueError(f"url {url!r}: {host} is an address in a numeric form; write an IPv4 address as a.b.c.d")
    if not allow_private:
        if host == "localhost" or host.endswith(".localhost"):
            raise ValueError(f"url {url!r}: {host} is loopback ({_SETTING})")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return parsed
        reason = refused_because(address)
        if reason is not None:
            raise ValueError(f"url {url!r}: {host} is a {reason} address ({_SETTING})")
    return parsed


def _numeric_host(host: str) -> bool:
    """Whether ``host`` is an IPv4 address written other than as ``a.b.c.d`` (``2130706433``,
    ``0x7f.1``, ``127.1``): a host whose last label is a number is an address to URL parsers and
    to ``getaddrinfo``, in forms the guard would otherwise only meet when it resolves."""
    if ":" in host:
        return False  # IPv6, checked as an address
    last = host.rsplit(".", 1)[-1]
    if not (last.isdigit() or re.fullmatch(r"0[xX][0-9a-fA-F]*", last)):
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


_SETTING = "set webhooks.allow_private_targets [IOTHUB_WEBHOOKS__ALLOW_PRIVATE_TARGETS] to allow it"


async def resolve(url: httpx.URL, allow_private: bool) -> str:
    """The address to connect to for ``url``: the first that DNS gives, once every address it gives
    has passed the guard; :class:`TargetRefused` otherwise."""
    host = url.host
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, url.port or 443, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as exc:
            raise TargetRefused(f"{host} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise TargetRefused(f"{host} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = refused_because(address)
            if reason is not None:
                raise TargetRefused(f"{host} resolves to {address}, a {reason} address ({_SETTING})")
    return str(addresses[0])
