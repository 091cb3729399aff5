"""Where an accepted job's uploads wait for their worker.

An upload up to ``BACKDROP_INLINE_UPLOAD_MAX_BYTES`` is kept in Redis next to the job record (one
round trip each way, expiring with the record); a larger one goes to the object store under
``inputs/``. For a small photo this saves three object-store requests per job (put, get, delete), which
would otherwise cost more than the 3 ms selfie model. The job record stores the locator this class
returns, so a worker reads from the right place without guessing.

Redis memory for uploads is bounded by how many jobs wait times the inline limit: set
``BACKDROP_MAX_QUEUE_DEPTH`` (or a lower limit, or ``0`` to keep every upload in the object store).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import redis

from backdrop.service.jobs import connect_redis, guard_redis
from backdrop.service.storage import ObjectNotFound, Storage
from backdrop.settings import Settings

INLINE_SCHEME = "redis:"
INLINE_PREFIX = "backdrop:upload:"
OBJECT_PREFIX = "inputs/"


class Uploads:
    def __init__(self, storage: Storage, client: redis.Redis, *, inline_max_bytes: int, ttl_s: int) -> None:
        self._storage = storage
        self._redis = client  # returns bytes (decode_responses off)
        self._inline_max_bytes = inline_max_bytes
        self._ttl_s = ttl_s

    @classmethod
    def connect(cls, settings: Settings, storage: Storage) -> Uploads:
        return cls(
            storage,
            connect_redis(settings.redis_url, decode_responses=False),
            inline_max_bytes=settings.inline_upload_max_bytes,
            ttl_s=settings.job_ttl_s,
        )

    def put(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name`` (unique per upload); returns its locator for the job record."""
        if len(data) <= self._inline_max_bytes:
            key = INLINE_PREFIX + name
            guard_redis(lambda: self._redis.set(key, data, ex=self._ttl_s))
            return INLINE_SCHEME + key
        key = OBJECT_PREFIX + name
        self._storage.put(key, data, "application/octet-stream")
        return key

    def put_file(self, name: str, source: BinaryIO) -> str:
        """Store a large upload (a video) from a file, in parts; always in the object store."""
        key = OBJECT_PREFIX + name
        self._storage.put_file(key, source, "application/octet-stream")
        return key

    def get_file(self, locator: str, destination: Path) -> None:
        """Write the upload to ``destination`` (a video: in parts, from the object store)."""
        if locator.startswith(INLINE_SCHEME):
            destination.write_bytes(self.get(locator))
        else:
            self._storage.get_file(locator, destination)

    def get(self, locator: str) -> bytes:
        """The upload's bytes; :class:`ObjectNotFound` once it was deleted or expired."""
        if locator.startswith(INLINE_SCHEME):
            data = guard_redis(lambda: self._redis.get(locator.removeprefix(INLINE_SCHEME)))
            if data is None:
                raise ObjectNotFound(f"no upload {locator}")
            return bytes(data)
        return self._storage.get(locator)

    def delete(self, *locators: str) -> None:
        inline = [locator.removeprefix(INLINE_SCHEME) for locator in locators if locator.startswith(INLINE_SCHEME)]
        objects = [locator for locator in locators if not locator.startswith(INLINE_SCHEME)]
        if inline:
            guard_redis(lambda: self._redis.delete(*inline))
        if objects:
            self._storage.delete(*objects)
