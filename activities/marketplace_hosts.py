"""Which hosts a placement's `marketplaceServicesEndpoint` may name.

The seller calls that URL back with its marketplace credentials, so the URL is an attacker's choice
unless it is checked: a placement naming `http://169.254.169.254/...` or an internal host would
make the seller POST there with its app key and token. A host must match MARKETPLACE_ALLOWED_HOSTS
(host names; `*.example.com` matches any subdomain of example.com, not example.com itself; by
default VTEX's domains, config.py's DEFAULT_MARKETPLACE_HOSTS). Loopback, private, link-local,
metadata and other non-public addresses are refused unless the host is listed exactly (not through
a `*.`), both as an address in the URL and as what the name resolves to when a call is sent; the
call then goes to the address that was checked, not to whatever the name resolves to a moment later
(DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx


def _is_public(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_global


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# What a DNS name is made of once IDNA-encoded (underscores appear in real records).
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def _unsendable(url: str) -> str | None:
    """Why httpx or the resolver would fail on `url` at every attempt; None if they would not.

    Caught here, at placement, because a call that fails the same way each time is retried forever
    and the order never ends.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as err:  # idna's errors are ValueErrors
        return f"is not a valid URL ({err})"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return f"port {parsed.port} is not between 1 and 65535"
    # IDNA-encoded (httpx does it for non-ASCII names), as it is resolved.
    host = parsed.raw_host.decode("ascii").removesuffix(".")
    if _is_address(host):
        return None
    if len(host) > 253:
        return f"host name is {len(host)} characters long, over 253"
    if any(not 1 <= len(label) <= 63 for label in host.split(".")):
        return f"host {host[:100]} has an empty label or one over 63 characters"
    if not _HOST_NAME.fullmatch(host):
        return f"host {host[:100]!r} has characters no DNS name has"
    return None


@dataclass(frozen=True)
class SendCheck:
    """What `HostPolicy.check_when_sending` found: why not to send, or where to connect."""

    refusal: str | None = None
    # The public addresses the name resolved to, to connect to instead of the name: resolved again
    # by the HTTP client, the name could answer another address. Empty when the host is listed
    # exactly (trusted as it resolves).
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostPolicy:
    """MARKETPLACE_ALLOWED_HOSTS, parsed."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> HostPolicy:
        """`a.example.com, *.vtex.com` -> the policy."""
        names = [name.strip().lower().rstrip(".") for name in text.split(",") if name.strip()]
        return cls(
            exact=frozenset(name for name in names if not name.startswith("*.")),
            suffixes=tuple(name[1:] for name in names if name.startswith("*.")),
        )

    def describe(self) -> str:
        """The list as configured, for messages."""
        return ", ".join(sorted(self.exact) + [f"*{suffix}" for suffix in self.suffixes])

    def refusal(self, url: str) -> str | None:
        """Why `url` may not be called, from the URL alone; None if it may."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower().rstrip(".")
        except ValueError:  # e.g. an unclosed `[`
            return "must be an http(s) URL"
        if parts.scheme not in ("http", "https") or not host:
            return "must be an http(s) URL"
        # What parsers disagree on (whose host is `a@b`, or `a\@b`?) is refused, not guessed.
        if "@" in parts.netloc or "\\" in url or any(ord(c) <= 32 or ord(c) == 127 for c in url):
            return "must have no user info, backslash, space or control character"
        unsendable = _unsendable(url)
        if unsendable:
            return unsendable
        if host in self.exact:
            return None
        if not host.endswith(self.suffixes):
            return (
                f"host {host} is not an allowed marketplace host ({self.describe()}); "
                "set MARKETPLACE_ALLOWED_HOSTS to add it"
            )
        # A name under an allowed domain (an address cannot end with one): what it resolves to is
        # checked when a call is sent.
        return None

    async def check_when_sending(self, url: str) -> SendCheck:
        """`refusal`, plus what the host name resolves to now: only public addresses.

        Raises ConnectionError when the name does not resolve (worth another try).
        """
        refused = self.refusal(url)
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        if refused or host in self.exact:
            return SendCheck(refusal=refused)
        name = httpx.URL(url).raw_host.decode("ascii")
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                name, None, type=socket.SOCK_STREAM
            )
        except OSError as err:
            raise ConnectionError(f"cannot resolve {host}: {err}") from err
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in found))
        private = sorted(address for address in addresses if not _is_public(address))
        if private:
            return SendCheck(
                refusal=f"host {host} resolves to non-public addresses ({', '.join(private)})"
            )
        return SendCheck(addresses=addresses)
