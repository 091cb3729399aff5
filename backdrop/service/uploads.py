"""Where an accepted job's uploads wait for their worker.

An upload up to ``BACKDROP_INLINE_UPLOAD_MAX_BYTES`` is kept in Redis next to the job record (one
round trip each way, expiring with the record) while the uploads waiting there stay under
``BACKDROP_INLINE_UPLOADS_MAX_MB`` in all; a larger one, or one over that budget, goes to the object
store under ``inputs/``. For a photo this saves three object-store requests per job (put, get, delete):
on a 2.25 MP photo, about a tenth of the job's CPU between the API, the worker and the store. The job
record stores the locator this class returns, so a worker reads from the right place without guessing.

The budget is a byte counter beside the uploads, moved by the same scripts that store and delete them.
Each upload's size and expiry time are noted too, so one that expires unread (its job never ran within
the job TTL) gives its bytes back the next time an upload is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import redis

from backdrop.service.jobs import guard_redis
from backdrop.service.redis_client import connect_redis
from backdrop.service.storage import ObjectNotFound, Storage
from backdrop.settings import Settings

INLINE_SCHEME = "redis:"
INLINE_PREFIX = "backdrop:upload:"
INLINE_BYTES = "backdrop:upload-bytes"  # bytes of the uploads waiting in Redis
INLINE_SIZES = "backdrop:upload-sizes"  # hash: upload key -> its size
INLINE_EXPIRY = "backdrop:upload-expiry"  # sorted set: upload key by the time it expires
INLINE_KEYS = [INLINE_BYTES, INLINE_SIZES, INLINE_EXPIRY]
OBJECT_PREFIX = "inputs/"

# Shared by both scripts: KEYS[1..3] are INLINE_KEYS. ``forget(key)`` drops an upload's bookkeeping and
# gives its bytes back; ``expired()`` does so for uploads whose time ran out unread (a few per call).
_BOOKKEEPING = """
local function forget(key)
  local size = tonumber(redis.call('HGET', KEYS[2], key) or '0')
  redis.call('HDEL', KEYS[2], key)
  redis.call('ZREM', KEYS[3], key)
  if size > 0 and redis.call('DECRBY', KEYS[1], size) < 0 then redis.call('SET', KEYS[1], 0) end
end
local function expired(now)
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 64)) do
    redis.call('DEL', key)
    forget(key)
  end
end
"""

# KEYS: INLINE_KEYS, then the upload; ARGV: data, ttl, budget. Stores the upload if the budget allows.
_PUT_INLINE = (
    _BOOKKEEPING
    + """
local now = tonumber(redis.call('TIME')[1])
expired(now)
local size = string.len(ARGV[1])
if redis.call('INCRBY', KEYS[1], size) > tonumber(ARGV[3]) then
  redis.call('DECRBY', KEYS[1], size)
  return 0
end
redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[2], KEYS[4], size)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), KEYS[4])
return 1
"""
)

# KEYS: INLINE_KEYS, then uploads. Deletes them and gives their bytes back to the budget.
_DELETE_INLINE = (
    _BOOKKEEPING
    + """
for i = 4, #KEYS do
  redis.call('DEL', KEYS[i])
  forget(KEYS[i])
end
return 1
"""
)


def background_name(job_id: str) -> str:
    """The name a photo job's background image is stored under (its photo's is the job id)."""
    return f"{job_id}-background"


def inline_keys(job_id: str) -> list[str]:
    """The Redis keys of a photo job's uploads, where they are kept inline: a worker reads them in the round
    trip that starts the job (``JobStore.start(read_also=...)``) and hands them to :meth:`Uploads.get`."""
    return [INLINE_PREFIX + job_id, INLINE_PREFIX + background_name(job_id)]


class Uploads:
    def __init__(
        self,
        storage: Storage,
        client: redis.Redis,
        *,
        inline_max_bytes: int,
        inline_budget_bytes: int,
        ttl_s: int,
    ) -> None:
        self._storage = storage
        self._redis = client  # returns bytes (decode_responses off)
        self._inline_max_bytes = inline_max_bytes
        self._inline_budget_bytes = inline_budget_bytes
        self._ttl_s = ttl_s
        self._put_inline = client.register_script(_PUT_INLINE)
        self._delete_inline = client.register_script(_DELETE_INLINE)

    @classmethod
    def connect(cls, settings: Settings, storage: Storage) -> Uploads:
        return cls(
            storage,
            connect_redis(settings, decode_responses=False),
            inline_max_bytes=settings.inline_upload_max_bytes,
            inline_budget_bytes=settings.inline_uploads_max_mb * 1024 * 1024,
            ttl_s=settings.job_ttl_s,
        )

    def put(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name`` (unique per upload); returns its locator for the job record."""
        if len(data) <= self._inline_max_bytes:
            key = INLINE_PREFIX + name
            args = [data, self._ttl_s, self._inline_budget_bytes]
            if guard_redis(lambda: self._put_inline(keys=[*INLINE_KEYS, key], args=args)):
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

    def get(self, locator: str, read: Mapping[str, bytes | None] | None = None) -> bytes:
        """The upload's bytes; :class:`ObjectNotFound` once it was deleted or expired. ``read``: Redis keys'
        values read already (``inline_keys``), so an inline upload among them costs no round trip."""
        if locator.startswith(INLINE_SCHEME):
            key = locator.removeprefix(INLINE_SCHEME)
            data = read[key] if read and key in read else guard_redis(lambda: self._redis.get(key))
            if data is None:
                raise ObjectNotFound(f"no upload {locator}")
            return bytes(data)
        return self._storage.get(locator)

    def delete(self, *locators: str) -> None:
        inline = [locator.removeprefix(INLINE_SCHEME) for locator in locators if locator.startswith(INLINE_SCHEME)]
        objects = [locator for locator in locators if not locator.startswith(INLINE_SCHEME)]
        if inline:
            guard_redis(lambda: self._delete_inline(keys=[*INLINE_KEYS, *inline]))
        if objects:
            self._storage.delete(*objects)
