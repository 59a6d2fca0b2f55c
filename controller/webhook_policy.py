"""Which webhook URLs the service may call: no request forgery against the farm's own network.

A client names a `webhook_url`; the service later POSTs to it, signed. Without a rule that is a way to make the
service talk to its cloud metadata endpoint (169.254.169.254), a Redis on 10.1.2.3:6379 or the PostgreSQL on
[::1]:5432. So:
- http or https only, a host, no user:password, no fragment;
- every address the host resolves to must be a public (global unicast) address: loopback, private, link-local,
  shared, multicast, reserved and unspecified ones are refused, in any spelling (`0x7f000001`, `::ffff:127.0.0.1`);
- unless SHOTLINE_WEBHOOK_ALLOW names them: a comma-separated list of addresses or networks (`127.0.0.1`,
  `10.0.0.0/8`, `fd00::/8`), e.g. for a receiver inside the farm;
- the check is made when the batch is submitted (a 400 naming `webhook_url`) and again at delivery, on the
  addresses the connection will really use (a resolver that drops nothing silently: any refused address fails the
  delivery), and redirects are not followed. DNS rebinding between the two checks gains nothing.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

RESOLVE_TIMEOUT_SECONDS = 5.0
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookRefused(ValueError):
    """A URL the service will not call, and why (no server detail in the text: it reaches the client)."""


def parse_allow_list(text: str | None) -> tuple[Network, ...]:
    networks = []
    for item in (text or "").split(","):
        item = item.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"SHOTLINE_WEBHOOK_ALLOW: {item!r} is not an address or network") from None
    return tuple(networks)


class WebhookPolicy:
    def __init__(self, allow: tuple[Network, ...] = ()):
        self.allow = allow

    @classmethod
    def from_environment(cls) -> "WebhookPolicy":
        return cls(parse_allow_list(os.environ.get("SHOTLINE_WEBHOOK_ALLOW")))

    def check_address(self, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allow):
            return
        if not ip.is_global or ip.is_multicast:
            raise WebhookRefused(f"resolves to {ip}, a non-public address (loopback, private, link-local or "
                                 "reserved); the service only calls public addresses unless SHOTLINE_WEBHOOK_ALLOW "
                                 "names it")

    @staticmethod
    def split(url: str) -> tuple[str, int]:
        """(host, port) of an acceptable URL's syntax, else WebhookRefused."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise WebhookRefused(f"not a valid URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookRefused("must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("must not carry a user name or password")
        if parts.fragment:
            raise WebhookRefused("must not have a #fragment")
        return parts.hostname, port or (443 if parts.scheme == "https" else 80)

    async def check(self, url: str) -> None:
        """Refuse `url` unless every address it resolves to is allowed (WebhookRefused says why)."""
        host, port = self.split(url)
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                           RESOLVE_TIMEOUT_SECONDS)
        except UnicodeError:  # the IDNA codec's: an empty label (a..b, .example) or one over 63 characters
            raise WebhookRefused(f"the host {host!r} is not a valid host name") from None
        except (OSError, asyncio.TimeoutError):
            raise WebhookRefused(f"the host {host!r} does not resolve") from None
        if not infos:
            raise WebhookRefused(f"the host {host!r} does not resolve")
        for info in infos:
            self.check_address(info[4][0])


class CheckedResolver(AbstractResolver):
    """aiohttp resolver for webhook deliveries: the addresses a connection uses pass the policy, or it fails."""

    def __init__(self, policy: WebhookPolicy):
        self.policy = policy
        self.resolver = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        addresses = await self.resolver.resolve(host, port, family)
        for address in addresses:
            try:
                self.policy.check_address(address["host"])
            except WebhookRefused as refused:
                raise OSError(f"webhook host {host!r} {refused}") from None
        return addresses

    async def close(self) -> None:
        await self.resolver.close()
