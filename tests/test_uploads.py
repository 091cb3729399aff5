"""Uploads: small ones in Redis beside the job record, larger ones in the object store (real servers)."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from backdrop.service.jobs import BrokerUnavailable
from backdrop.service.storage import ObjectNotFound, StorageUnavailable, open_storage
from backdrop.service.uploads import INLINE_BYTES, INLINE_SCHEME, OBJECT_PREFIX, Uploads
from backdrop.settings import Settings, SettingsError

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(stack) -> Settings:
    return replace(Settings.from_env(stack.env), inline_upload_max_bytes=1000, job_ttl_s=600)


def test_small_uploads_stay_in_redis_with_the_job_ttl(settings):
    uploads = Uploads.connect(settings, open_storage(settings))
    name = uuid.uuid4().hex
    locator = uploads.put(name, b"x" * 1000)
    assert locator.startswith(INLINE_SCHEME)
    assert uploads.get(locator) == b"x" * 1000
    ttl = uploads._redis.ttl(locator.removeprefix(INLINE_SCHEME))
    assert 0 < ttl <= 600
    with pytest.raises(ObjectNotFound):
        open_storage(settings).get(OBJECT_PREFIX + name)
    uploads.delete(locator)
    with pytest.raises(ObjectNotFound):
        uploads.get(locator)


def test_larger_uploads_go_to_the_object_store(settings):
    storage = open_storage(settings)
    uploads = Uploads.connect(settings, storage)
    small, large = uuid.uuid4().hex, uuid.uuid4().hex
    small_locator = uploads.put(small, b"s")
    large_locator = uploads.put(large, b"y" * 1001)
    assert large_locator == OBJECT_PREFIX + large
    assert storage.get(large_locator) == b"y" * 1001 == uploads.get(large_locator)
    uploads.delete(small_locator, large_locator)  # one call, both places
    for locator in (small_locator, large_locator):
        with pytest.raises(ObjectNotFound):
            uploads.get(locator)


def test_uploads_over_the_redis_budget_go_to_the_object_store_and_deleting_frees_it(settings):
    probe = Uploads.connect(settings, open_storage(settings))
    used = int(probe._redis.get(INLINE_BYTES) or 0)  # other tests' uploads may wait in this Redis
    budget_mb = used // 2**20 + 2
    room = budget_mb * 2**20 - used  # between 1 and 2 MiB left
    size = int(room * 0.6)
    uploads = Uploads.connect(
        replace(settings, inline_upload_max_bytes=size, inline_uploads_max_mb=budget_mb), open_storage(settings)
    )
    first, second, third = (uuid.uuid4().hex for _ in range(3))
    a = uploads.put(first, b"a" * size)
    b = uploads.put(second, b"b" * size)  # over the budget with the first one
    assert a.startswith(INLINE_SCHEME) and b == OBJECT_PREFIX + second
    uploads.delete(a, b)
    assert int(uploads._redis.get(INLINE_BYTES)) == used
    c = uploads.put(third, b"c" * size)  # the first one's bytes are back
    assert c.startswith(INLINE_SCHEME)
    uploads.delete(c)


def test_an_upload_that_expires_unread_gives_its_bytes_back(settings):
    import time

    from backdrop.service.uploads import INLINE_EXPIRY, INLINE_SIZES

    uploads = Uploads.connect(replace(settings, job_ttl_s=1), open_storage(settings))
    counter = uploads._redis
    before = int(counter.get(INLINE_BYTES) or 0)
    forgotten = uploads.put(uuid.uuid4().hex, b"f" * 900)  # its job never runs
    key = forgotten.removeprefix(INLINE_SCHEME)
    assert int(counter.get(INLINE_BYTES)) == before + 900
    time.sleep(2.1)
    assert counter.get(key) is None  # Redis let it expire
    later = uploads.put(uuid.uuid4().hex, b"l" * 10)  # the next upload settles the account
    assert int(counter.get(INLINE_BYTES)) == before + 10
    assert counter.hget(INLINE_SIZES, key) is None and counter.zscore(INLINE_EXPIRY, key) is None
    uploads.delete(later)
    assert int(counter.get(INLINE_BYTES)) == before


def test_inline_limit_zero_keeps_every_upload_in_the_object_store(settings):
    uploads = Uploads.connect(replace(settings, inline_upload_max_bytes=0), open_storage(settings))
    name = uuid.uuid4().hex
    assert uploads.put(name, b"z") == OBJECT_PREFIX + name
    uploads.delete(OBJECT_PREFIX + name)


def test_unreachable_redis_is_broker_unavailable(settings):
    from backdrop.service.localstack import free_port

    dead = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    uploads = Uploads.connect(dead, open_storage(settings))
    with pytest.raises(BrokerUnavailable):
        uploads.put(uuid.uuid4().hex, b"small")


def test_inline_limit_setting():
    assert Settings.from_env({"BACKDROP_INLINE_UPLOAD_MAX_BYTES": "0"}).inline_upload_max_bytes == 0
    assert Settings.from_env({}).inline_upload_max_bytes == 8 * 1024 * 1024
    with pytest.raises(SettingsError):
        Settings.from_env({"BACKDROP_INLINE_UPLOAD_MAX_BYTES": "-1"})


def test_a_put_is_one_plain_request_stores_bytes_and_type_and_a_refusal_says_why(settings):
    """Puts go as presigned PUTs on the client's own connections: one request, the body sent at once (no
    continue handshake), no checksum of it (each was a measured cost per job); what S3 keeps is what was
    sent, and a refusal (here: a wrong secret) is StorageUnavailable naming S3's own error code."""
    storage = open_storage(settings)
    sent = []
    send = storage._http.send  # type: ignore[attr-defined]
    storage._http.send = lambda request: sent.append(request) or send(request)  # type: ignore[attr-defined]
    key = f"results/{uuid.uuid4().hex}.webp"
    body = bytes(range(256)) * 300
    storage.put(key, body, "image/webp")
    puts = [request for request in sent if request.method == "PUT"]  # the bucket's check comes first
    assert len(puts) == 1
    headers = {name.lower() for name in puts[0].headers}
    assert "expect" not in headers and not any(name.startswith("x-amz-checksum") for name in headers)
    assert "x-amz-signature=" in puts[0].url.lower()
    assert storage.get(key) == body
    head = storage._client.head_object(Bucket=settings.s3_bucket, Key=key)  # type: ignore[attr-defined]
    assert head["ContentType"] == "image/webp" and head["ContentLength"] == len(body)
    storage.delete(key)
    wrong = open_storage(replace(settings, s3_secret_key="not-the-secret"))
    wrong._bucket_checked = True  # type: ignore[attr-defined]  # straight to the put
    with pytest.raises(StorageUnavailable, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        wrong.put(key, body, "image/webp")
    with pytest.raises(ObjectNotFound):
        storage.get(key)


def counting_sends(connection) -> list:
    """What ``connection`` sends from now on (one entry per write to its socket)."""
    sent: list = []
    send = connection.send_packed_command

    def counted(command, *args, **kwargs):
        sent.append(command)
        return send(command, *args, **kwargs)

    connection.send_packed_command = counted
    return sent


def test_a_worker_reads_an_inline_upload_in_the_round_trip_that_starts_its_job(settings):
    """``JobStore.start(read_also=inline_keys(job))``: the start script and the uploads' GETs go as one
    pipeline, without redis-py's SCRIPT EXISTS first; after the server lost its scripts, once more apart."""
    import time

    from backdrop.params import JobParams, MediaKind
    from backdrop.service.jobs import JobRecord, JobStatus, JobStore
    from backdrop.service.uploads import inline_keys

    uploads = Uploads.connect(settings, open_storage(settings))
    jobs = JobStore.connect(settings.redis_url, ttl_s=600)
    photo = bytes(range(256)) * 3  # not UTF-8: read undecoded on the job store's decoding client
    for flush_scripts in (True, False):  # the first start loads the script again
        job_id = uuid.uuid4().hex
        locator = uploads.put(job_id, photo)
        params = JobParams.parse({}, MediaKind.IMAGE)
        jobs.create(JobRecord(job_id, JobStatus.QUEUED, params, time.time(), input_key=locator))
        if flush_scripts:
            jobs.redis.script_flush()
        connection = jobs.redis.connection_pool.get_connection()
        jobs.redis.connection_pool.release(connection)  # the one the next command takes
        sent = counting_sends(connection)
        try:
            decision = jobs.start(job_id, "w:1", 3, read_also=inline_keys(job_id))
        finally:
            del connection.send_packed_command
        assert decision.action == "run" and decision.record.input_key == locator
        assert decision.read == {inline_keys(job_id)[0]: photo, inline_keys(job_id)[1]: None}
        assert uploads.get(locator, decision.read) == photo
        # One pipeline; without the script: that, the script by its hash, its load, again, the reads.
        assert len(sent) == (5 if flush_scripts else 1)
        uploads.delete(locator)
        with pytest.raises(ObjectNotFound):  # a read that found nothing is not read again
            uploads.get(locator, {inline_keys(job_id)[0]: None})
