"""Which URLs a client may make us call: a webhook URL (the notifier) or an input image's URL (the api).
Both come from a client and both callers run inside the cluster, so without these rules any client could
make them call internal services or the cloud metadata endpoint (SSRF).

- https only (http where `allow_http`, for local development);
- every address the host resolves to must be public: no loopback, private, link-local (169.254.169.254),
  CGNAT (100.64/10), unique-local (fc00::/7), multicast, unspecified or reserved address, nor an IPv6 form
  of one (IPv4-mapped, NAT64, 6to4) unless `allow_private_targets`;
- the name is resolved once, by `PinnedResolver` on the client's connector, and the connection goes to
  exactly the addresses checked: a name that resolves to a public address for the check and to a private
  one for the connection (DNS rebinding) cannot slip through. TLS still verifies the certificate for the
  name (SNI and Host are the URL's).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
# Checked in this order, so a refusal names the most telling reason.
_KINDS: Final[tuple[tuple[str, Callable[[IPAddress], bool]], ...]] = (
    ("unspecified", lambda ip: ip.is_unspecified),
    ("loopback", lambda ip: ip.is_loopback),
    ("link-local", lambda ip: ip.is_link_local),
    ("multicast", lambda ip: ip.is_multicast),
    ("CGNAT", lambda ip: ip.version == 4 and ip in CGNAT),
    ("reserved", lambda ip: ip.is_reserved),
    ("private", lambda ip: ip.is_private),
    ("site-local", lambda ip: isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
)


class TargetRefused(Exception):
    """The webhook URL may not be called; retrying cannot change that."""


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), or None."""
    if ip.version != 6:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address a webhook may go to, or None when it is."""
    inner = embedded_ipv4(ip)
    if inner is not None and (why := forbidden(inner)) is not None:
        return f"{why} (as {ip})"
    for kind, test in _KINDS:
        if test(ip):
            return f"{ip} is a {kind} address"
    if not ip.is_global and inner is None:
        return f"{ip} is not a public address"
    return None


def parse_ip(host: str) -> IPAddress | None:
    """The address of an IP-literal host (brackets and zone stripped), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    allow_http: bool = False
    allow_private: bool = False

    def check_url(self, raw: str) -> URL:
        """The URL to call; raises `TargetRefused` for a scheme, host or IP literal that is not allowed.

        A host name is checked later, by `PinnedResolver`, against the addresses it resolves to.
        """
        try:
            url = URL(raw)
        except (ValueError, TypeError) as e:
            raise TargetRefused(f"not a URL: {e}") from e
        schemes = ("https", "http") if self.allow_http else ("https",)
        if url.scheme not in schemes:
            raise TargetRefused(
                f"scheme {url.scheme or '(none)'!r} is not allowed (allowed: {', '.join(schemes)})"
            )
        if not url.host:
            raise TargetRefused("the URL has no host")
        ip = parse_ip(url.host)
        if ip is not None:
            self.check_address(ip)
        elif url.raw_host is not None and _numeric_ipv4_form(url.raw_host):
            raise TargetRefused(f"host {url.raw_host!r} is a numeric address in a non-canonical form")
        return url

    def check_address(self, ip: IPAddress) -> None:
        if self.allow_private:
            return
        if (why := forbidden(ip)) is not None:
            raise TargetRefused(why)


def _numeric_ipv4_form(host: str) -> bool:
    """Legacy IPv4 spellings (2130706433, 0x7f.1, 127.1) that a resolver maps onto an address."""
    parts = host.rstrip(".").split(".")
    return all(part and (part.isdigit() or part.lower().startswith("0x")) for part in parts)


class PinnedResolver(AbstractResolver):
    """Resolves through `inner` once and returns only checked addresses: the connector connects to those
    and to nothing else. A name with any forbidden address is refused as a whole (a name that mixes
    public and private addresses is not one to trust)."""

    def __init__(self, policy: TargetPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await self._inner.resolve(host, port, family)
        if not resolved:
            raise OSError(f"{host} resolved to no address")
        for result in resolved:
            ip = parse_ip(result["host"])
            if ip is None:
                raise TargetRefused(f"{host} resolved to {result['host']!r}, not an address")
            try:
                self._policy.check_address(ip)
            except TargetRefused as e:
                raise TargetRefused(f"{host} resolves to a refused address: {e}") from None
        return resolved

    async def close(self) -> None:
        await self._inner.close()


def static_results(host: str, port: int, addresses: Iterable[str]) -> list[ResolveResult]:
    """Resolver results for fixed addresses (a resolver of a fixed table, as tests use)."""
    return [
        {
            "hostname": host,
            "host": address,
            "port": port,
            "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST,
        }
        for address in addresses
    ]
