"""Webhooks, the parts both sides share: which callback URLs may be called, and how a delivery is signed.

Signatures follow the Standard Webhooks specification (https://www.standardwebhooks.com/): headers
``webhook-id`` (the same for every attempt of one delivery), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the secret
(the base64 after ``whsec_``), once per configured secret, separated by spaces, so a receiver that knows
either the old or the new secret verifies it while secrets rotate. The delivery itself (HTTP, retries)
is the workers' (``worker/webhooks.py``); the API only checks the URL when a job names one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from backdrop.errors import BackdropError, ParameterError
from backdrop.settings import Network, decode_secret

MAX_URL_LENGTH = 2048
# Addresses of cloud metadata services that are not link-local (those are refused as link-local anyway).
METADATA_ADDRESSES = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}


class CallbackRefused(BackdropError):
    """A callback URL Backdrop will not call (``invalid_callback_url``)."""

    code = "invalid_callback_url"


@dataclass(frozen=True)
class Target:
    """Where a callback goes: the URL's parts, and the address checked (and to be connected to)."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def signature(secrets: tuple[str, ...], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64>`` for each secret, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()).decode()
        for secret in secrets
    )


def refused_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed_networks: tuple[Network, ...] = ()
) -> str | None:
    """Why an address may not be called (None: it may). Public addresses may; any other (loopback,
    private, link-local, a cloud metadata service) only where one of ``allowed_networks`` contains it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address.version == network.version and address in network for network in allowed_networks):
        return None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for reason, flag in (
        ("a loopback address", address.is_loopback),
        ("an unspecified address", address.is_unspecified),
        ("a link-local address (cloud metadata among them)", address.is_link_local),
        ("a private address", address.is_private),
        ("a multicast address", address.is_multicast),
        ("a reserved address", address.is_reserved),
    ):
        if flag:
            return reason
    if not address.is_global:
        return "not a public address"
    return None


def resolve_callback(url: str, *, allowed_networks: tuple[Network, ...] = ()) -> Target:
    """Check a callback URL and resolve its host: http(s) only, no credentials in it, and every address
    the host resolves to public or in one of ``allowed_networks`` (BACKDROP_WEBHOOK_ALLOWED_NETWORKS:
    receivers inside a deployment; ``make run`` lists loopback). The
    delivery connects to the address checked here, so a name that resolves elsewhere a moment later
    (DNS rebinding) changes nothing. Raises :class:`CallbackRefused`."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"the callback_url is over {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("the callback_url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise CallbackRefused("the callback_url must not carry credentials; sign-in by the webhook signature")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CallbackRefused("the callback_url's port is not a number from 1 to 65535") from None
    try:
        found = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise CallbackRefused(f"the callback_url's host {parts.hostname!r} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in found]
    for address in addresses:
        reason = refused_address(address, allowed_networks)
        if reason is not None:
            raise CallbackRefused(
                f"the callback_url's host resolves to {address}, {reason} not in BACKDROP_WEBHOOK_ALLOWED_NETWORKS"
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path, str(addresses[0]))


def checked_callback_url(url: str, *, allowed_networks: tuple[Network, ...] = ()) -> str:
    """The URL, if :func:`resolve_callback` accepts it; as a job parameter's error otherwise."""
    try:
        resolve_callback(url, allowed_networks=allowed_networks)
    except CallbackRefused as exc:
        raise ParameterError("callback_url", exc.message, code="invalid_callback_url") from None
    return url
