import pytest

from backdrop.settings import Settings, SettingsError


def test_defaults_and_environment():
    settings = Settings.from_env(
        {
            "BACKDROP_MAX_IMAGE_PIXELS": "1000",
            "BACKDROP_MODEL_MIRRORS": "/a:/b",
            "BACKDROP_QUEUE_ROUTES": "deeplab=gpu",
            "BACKDROP_CONFIRM_TARGETS": "no",
            "PORT": "9000",
            "XDG_CACHE_HOME": "/cache",
        }
    )
    assert settings.max_image_pixels == 1000
    assert [str(p) for p in settings.model_mirrors] == ["/a", "/b"]
    assert settings.queue_for("deeplab") == "gpu" and settings.queue_for("selfie") == "backdrop"
    assert settings.confirm_targets is False and settings.port == 9000
    assert str(settings.model_dir) == "/cache/backdrop/models"


@pytest.mark.parametrize(
    "env",
    [
        {"BACKDROP_THREADS": "0"},
        {"BACKDROP_MAX_IMAGE_BYTES": "lots"},
        {"BACKDROP_CONFIRM_TARGETS": "maybe"},
        {"BACKDROP_QUEUE_ROUTES": "deeplab"},
        {"BACKDROP_TASK_SOFT_TIME_LIMIT_S": "100", "BACKDROP_TASK_TIME_LIMIT_S": "90"},
        {"BACKDROP_VISIBILITY_TIMEOUT_S": "60"},
        {"BACKDROP_STORAGE_RETRIES": "8", "BACKDROP_STORAGE_RETRY_BACKOFF_S": "1"},
        {"BACKDROP_API_KEYS": "short"},
    ],
)
def test_bad_values_name_the_variable(env):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert any(name in caught.value.message for name in env)


def test_sentinels_are_parsed_and_reach_every_redis_client():
    from redis.sentinel import SentinelConnectionPool

    from backdrop.service.redis_client import broker, connect_redis

    settings = Settings.from_env(
        {
            "BACKDROP_REDIS_URL": "redis://:s3cret@unused:6379/2",
            "BACKDROP_REDIS_SENTINELS": "10.0.0.5:26380, sentinel-b",
            "BACKDROP_REDIS_SENTINEL_MASTER": "main",
        }
    )
    assert settings.redis_sentinels == (("10.0.0.5", 26380), ("sentinel-b", 26379))
    url, options = broker(settings)
    assert url == "sentinel://:s3cret@10.0.0.5:26380/2;sentinel://:s3cret@sentinel-b:26379/2"
    assert options["master_name"] == "main" and options["sentinel_kwargs"]["password"] == "s3cret"
    client = connect_redis(settings)  # nothing is contacted until the first command
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "main"
    assert pool.connection_kwargs["password"] == "s3cret" and pool.connection_kwargs["db"] == 2
    plain = Settings.from_env({"BACKDROP_REDIS_URL": "redis://:pw@10.0.0.9:6380/1"})
    assert broker(plain) == ("redis://:pw@10.0.0.9:6380/1", {})
    with pytest.raises(SettingsError, match="BACKDROP_REDIS_SENTINELS"):
        Settings.from_env({"BACKDROP_REDIS_SENTINELS": "host:port"})


def test_the_sentinel_broker_survives_a_channel_whose_connection_closed():
    """Celery uses the failover-safe Sentinel transport: a closing channel whose connection is already
    closed, asked for a pool (to give back its unacknowledged messages), fails with a connection error,
    which kombu ignores while the consumer reconnects, not with the AttributeError that ended the worker."""
    import redis

    from backdrop.service.queue import make_celery
    from backdrop.service.redis_client import (
        BrokerTransport,
        FailoverSafeSentinelChannel,
        FailoverSafeSentinelTransport,
    )

    settings = Settings.from_env(
        {"BACKDROP_REDIS_URL": "redis://:pw@unused:6379/0", "BACKDROP_REDIS_SENTINELS": "10.0.0.5:26380"}
    )
    connection = make_celery(settings).connection_for_write()  # nothing is contacted yet
    assert isinstance(connection.transport, FailoverSafeSentinelTransport)
    assert redis.ConnectionError in connection.connection_errors or any(
        issubclass(redis.ConnectionError, error) for error in connection.connection_errors
    )

    class Closed:
        client = None  # what kombu leaves on a transport whose connection was closed

    channel = FailoverSafeSentinelChannel.__new__(FailoverSafeSentinelChannel)
    channel.connection = Closed()  # type: ignore[assignment]
    with pytest.raises(redis.ConnectionError):
        channel._get_pool()
    plain = make_celery(Settings.from_env({"BACKDROP_REDIS_URL": "redis://x/0"})).connection_for_write()
    assert type(plain.transport) is BrokerTransport  # one server: the plain transport, with the reused client
