"""Celery's broker transport against a real server: kombu's Redis transport with one ``redis.Redis`` object
per connection pool (not one per publish and acknowledgement), and messages still go round: published,
delivered, held as unacknowledged, acknowledged."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from backdrop.service.localstack import free_port, start_redis
from backdrop.service.queue import enqueue, make_celery
from backdrop.service.redis_client import BrokerTransport
from backdrop.settings import Settings


@pytest.fixture()
def server(tmp_path: Path):
    port = free_port()
    process = start_redis(tmp_path / "redis", port, tmp_path)
    try:
        yield port
    finally:
        process.stop()


def test_messages_go_round_on_one_client_per_pool(server):
    port = server
    settings = Settings.from_env({"BACKDROP_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    app = make_celery(settings)
    store = redis.Redis(port=port)
    for number in range(3):
        enqueue(app, f"job-{number}", "backdrop")
    assert store.llen("backdrop") == 3

    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, BrokerTransport)
        channel = connection.default_channel
        client = channel._create_client()
        assert channel._create_client() is client
        queue = connection.SimpleQueue("backdrop")
        received = []
        for _ in range(3):
            message = queue.get(timeout=5)
            assert store.hlen("unacked") == 1  # held until acknowledged, through the same client
            received.append(message.headers["id"])
            message.ack()
            assert store.hlen("unacked") == 0 and store.zcard("unacked_index") == 0
        assert sorted(received) == ["job-0", "job-1", "job-2"]
        assert channel._create_client() is client

        channel._pool = None  # what a reconnection does: a new pool gets a client of its own
        assert channel._create_client() is not client
        queue.close()
