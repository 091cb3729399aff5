"""Connections to Redis: one server (``BACKDROP_REDIS_URL``), or, with ``BACKDROP_REDIS_SENTINELS``, the
primary that Redis Sentinel names at the moment (after a failover, the next connection finds the new
one). Every part of the service connects here, and Celery's broker is configured the same way."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

import redis
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.redis import SentinelChannel, SentinelTransport
from kombu.transport.redis import Transport as RedisTransport
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from backdrop.settings import Settings

SENTINEL_TIMEOUT_S = 1.0
# Celery's broker_transport: kombu's Redis transports with the fixes below (the redis:// and sentinel:// URLs
# name kombu's own).
REDIS_TRANSPORT = f"{__name__}:BrokerTransport"
SENTINEL_TRANSPORT = f"{__name__}:FailoverSafeSentinelTransport"


def _credentials(url: str) -> tuple[str | None, str | None, int]:
    """Username, password and database from a ``redis://`` URL."""
    parsed = urlparse(url)
    database = parsed.path.strip("/")
    username = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password else None
    return username, password, int(database) if database.isdigit() else 0


def connect_redis(settings: Settings, *, decode_responses: bool = True, **options: Any) -> redis.Redis:
    """A client for the service's Redis: short timeouts, and a pooled connection that broke (a restart, a
    failover) retried once on a fresh one. A timeout is not retried: a server that did not answer in
    time (a cut link, a dead host) would only cost another timeout before the caller's ``503``.
    ``options`` override the connection's (e.g. no read timeout for a subscription)."""
    connection: dict[str, Any] = {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 3.0,
        "health_check_interval": 15,
        "decode_responses": decode_responses,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1, supported_errors=(redis.ConnectionError,)),
        **options,
    }
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **connection)
    username, password, database = _credentials(settings.redis_url)
    sentinel = Sentinel(
        list(settings.redis_sentinels),
        sentinel_kwargs=_sentinel_auth(username, password),
    )
    return sentinel.master_for(
        settings.redis_sentinel_master, username=username, password=password, db=database, **connection
    )


def _sentinel_auth(username: str | None, password: str | None) -> dict[str, Any]:
    """How to ask the sentinels: short timeouts and no retries (the next sentinel is the retry; redis-py's
    default would back off for seconds on a dead one), with the servers' credentials (``requirepass`` on
    every node)."""
    auth: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
    }
    if password:
        auth["password"] = password
    if username:
        auth["username"] = username
    return auth


class ReusedClientChannel(RedisChannel):
    """kombu's Redis channel, but one ``redis.Redis`` object per connection pool instead of a new one for
    every acknowledgement and every delivery's unacknowledged-index update (and some publishes). Building one
    copies redis-py's table of response callbacks: about 90 us of CPU, paid twice per job in a worker's
    main process (docs/speed.md). The object holds no connection of its own
    (it borrows from the pool per command), so sharing it is what kombu's per-call objects already do."""

    _reused_client: tuple[Any, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool  # a new pool after a reconnection gets a new client
        reused = self._reused_client
        if reused is None or reused[0] is not pool:
            reused = self._reused_client = (pool, super()._create_client())
        return reused[1]


class BrokerTransport(RedisTransport):
    Channel = ReusedClientChannel


class FailoverSafeSentinelChannel(ReusedClientChannel, SentinelChannel):
    """kombu's Sentinel channel, but a channel whose connection was closed fails as a connection error
    when asked for a new connection pool. kombu reads the closed connection's address (None) and raises
    AttributeError; Celery counts that as unrecoverable and the worker exits. It happened in a failover
    (the primary killed): the consumer closed its connection, the closing channel went to give back its
    unacknowledged message and asked for a pool. As a connection error it is ignored like the others
    while the consumer reconnects; the message stays in Redis's unacknowledged set and is delivered again
    after the visibility timeout (and the job's lease hands it on sooner)."""

    def _get_pool(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the channel's broker connection is closed")
        return super()._get_pool(asynchronous)


class FailoverSafeSentinelTransport(SentinelTransport):
    Channel = FailoverSafeSentinelChannel


def broker(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and the transport options it needs besides the common ones (with Sentinel, the
    transport class is :data:`SENTINEL_TRANSPORT`)."""
    if not settings.redis_sentinels:
        return settings.redis_url, {}
    username, password, database = _credentials(settings.redis_url)
    auth = f"{username or ''}:{password}@" if password else ""
    url = ";".join(f"sentinel://{auth}{host}:{port}/{database}" for host, port in settings.redis_sentinels)
    return url, {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": _sentinel_auth(username, password)}
