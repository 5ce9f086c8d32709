"""Which webhook targets the notifier refuses (SSRF): schemes, IP literals, names by what they resolve to."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from services.common.targets import PinnedResolver, TargetPolicy, TargetRefused, forbidden, static_results
from services.notifier.sender import WebhookClient, _error_of, _printable
from services.notifier.settings import NotifierSettings

STRICT = TargetPolicy()


class TableResolver(AbstractResolver):
    """Names resolved from a fixed table, as a DNS server under someone else's control would answer."""

    def __init__(self, table: Mapping[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return static_results(host, port, self.table[host])

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("192.0.2.10", "private"),  # documentation range
    ],
)
def test_non_public_addresses_are_refused_with_their_kind(address: str, kind: str) -> None:
    why = forbidden(ipaddress.ip_address(address))
    assert why is not None
    assert kind in why


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "100.63.255.255", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # http without allow_http
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "https:///nohost",
        "https://127.0.0.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]:8443/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://10.0.0.7/x",
        "https://2130706433/x",  # 127.0.0.1 as one number
        "https://0x7f.1/x",
    ],
)
def test_urls_that_are_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(TargetRefused):
        STRICT.check_url(url)


def test_allowed_urls() -> None:
    assert str(STRICT.check_url("https://hooks.example.com/reelstream?x=1")) == (
        "https://hooks.example.com/reelstream?x=1"
    )
    assert STRICT.check_url("https://93.184.215.14:8443/x").port == 8443
    dev = TargetPolicy(allow_http=True, allow_private=True)
    assert dev.check_url("http://127.0.0.1:8080/hook").host == "127.0.0.1"


async def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    inner = TableResolver({"internal.example": ["10.0.0.5"], "meta.example": ["169.254.169.254"]})
    resolver = PinnedResolver(STRICT, inner)
    for name in ("internal.example", "meta.example"):
        with pytest.raises(TargetRefused, match=name):
            await resolver.resolve(name, 443)


async def test_a_name_with_any_private_address_is_refused_as_a_whole() -> None:
    resolver = PinnedResolver(STRICT, TableResolver({"mixed.example": ["93.184.215.14", "127.0.0.1"]}))
    with pytest.raises(TargetRefused, match="loopback"):
        await resolver.resolve("mixed.example", 443)


async def test_the_checked_addresses_are_the_ones_returned_to_connect_to() -> None:
    inner = TableResolver({"hooks.example": ["93.184.215.14", "2606:4700::1111"]})
    resolved = await PinnedResolver(STRICT, inner).resolve("hooks.example", 443)
    assert [r["host"] for r in resolved] == ["93.184.215.14", "2606:4700::1111"]
    assert inner.calls == ["hooks.example"]  # resolved once


async def test_private_targets_pass_only_when_allowed() -> None:
    inner = TableResolver({"localhost": ["127.0.0.1"]})
    assert await PinnedResolver(TargetPolicy(allow_private=True), inner).resolve("localhost", 80)


async def test_the_client_refuses_a_name_resolving_to_a_private_address_without_connecting() -> None:
    settings = NotifierSettings(allow_http=False, allow_private_targets=False)
    inner = TableResolver({"internal.example": ["10.0.0.5"]})
    async with WebhookClient(settings, inner) as client:
        with pytest.raises(TargetRefused, match=r"10\.0\.0\.5 is a private address"):
            await client.post("https://internal.example/hook", b"{}", {})


def test_production_refuses_the_development_switches() -> None:
    with pytest.raises(ValueError, match="development only"):
        NotifierSettings(
            environment="production", allow_http=True, database_url="postgresql+asyncpg://u:p@db/x",
            s3_access_key="a", s3_secret_key="b",
        )  # fmt: skip


def test_an_answer_with_control_characters_is_logged_printable() -> None:
    """What a receiver answers ends up in the delivery log, which Postgres must accept (no NUL)."""
    assert _printable(_error_of(500, b"bad\x00thing\n")) == "HTTP 500: bad\ufffdthing"
    assert len(_printable("x" * 5000)) == 2000
