"""Job records: the source of truth for a job's state, a Redis hash per job with a TTL.

The API writes the record when a job is accepted; the worker moves it through its states. Transitions
are Lua scripts, so a cancel and a worker's start cannot both win, and a redelivered message never
processes a finished job again. (Celery's own task state cannot tell an unknown id from a queued one.)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

import redis
from kombu.transport.redis import PRIORITY_STEPS as KOMBU_PRIORITY_STEPS
from kombu.transport.redis import Channel as KombuRedisChannel
from redis.client import NEVER_DECODE

from backdrop.errors import BackdropError
from backdrop.params import JobParams, MediaKind
from backdrop.service.redis_client import connect_redis
from backdrop.settings import Settings

KEY_PREFIX = "backdrop:job:"
# Beside a video job's record: frames done per chunk, frames written by each finished chunk, deliveries
# per chunk (all expire with the record).
PROGRESS_SUFFIX = ":progress"
CHUNKS_DONE_SUFFIX = ":chunks"
ATTEMPTS_SUFFIX = ":attempts"
IDEMPOTENCY_PREFIX = "backdrop:idempotency:"
# Sorted sets of job ids by the time they entered a state: they let the sweeper find jobs whose worker
# vanished (running) and jobs whose queue message was lost (queued).
RUNNING_SET = "backdrop:running"
QUEUED_SET = "backdrop:queued"
# Queued jobs whose message was missing at one sweep, by when: re-sent if still missing at a later one.
MISSING_SET = "backdrop:message-missing"
# Leases: a running attempt of a job's part (``run``: an image job, or a video's planning; a chunk's
# index; ``join``) holds ``backdrop:lease:{job}:{part}`` (its fence: the attempt's number) while its
# worker renews it; the set lists them by expiry ("{job}|{part}|{fence}"), so an attempt whose worker was
# cut off or vanished is found when its lease runs out, and the part is handed to another worker.
LEASE_PREFIX = "backdrop:lease:"
LEASES_SET = "backdrop:leases"
RUN_PART = "run"
JOIN_PART = "join"
# Every terminal transition publishes the job's id here (in the same script): the API's waiting
# requests are told at once (``backdrop.service.events``).
ENDED_CHANNEL = "backdrop:job-ended"
# A job that ended with a webhook to deliver publishes its id here too: the workers' webhook threads
# listen here, not to every job's end (each of them would wake, and read the outbox, for every job).
WEBHOOK_CHANNEL = "backdrop:webhook-due"
# Finished jobs with a callback_url whose webhook is not delivered yet, by when the next attempt is due
# (the outbox: a delivery lost with its worker is found here again).
WEBHOOK_DUE_SET = "backdrop:webhooks-due"
# kombu's Redis transport keeps delivered, unacknowledged messages in this hash (by delivery tag).
KOMBU_UNACKED = KombuRedisChannel.unacked_key
KOMBU_UNACKED_INDEX = KombuRedisChannel.unacked_index_key  # delivery tag -> when it was delivered
T = TypeVar("T")


class BrokerUnavailable(BackdropError):
    """Redis (job records and queue) cannot be reached (``broker_unavailable``)."""

    code = "broker_unavailable"


def guard_redis(operation: Callable[[], T]) -> T:
    """Run one Redis call; a server that cannot be reached or cannot take writes is ``BrokerUnavailable``."""
    try:
        return operation()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"job store unreachable: {exc}") from None
    except redis.ResponseError as exc:
        # e.g. MISCONF / LOADING / OOM: the server is up but cannot take writes now.
        raise BrokerUnavailable(f"job store refused the request: {exc}") from None


class IdempotencyConflict(BackdropError):
    code = "idempotency_key_reused"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class ResultObject:
    key: str
    content_type: str
    width: int
    height: int
    bytes: int
    # Photos: where the subject is in the result (top, left, width, height of its non-transparent box).
    foreground: dict[str, int] | None = None
    # Videos only: length, frames written, average frame rate, and whether there is sound.
    duration_s: float | None = None
    frames: int | None = None
    fps: float | None = None
    audio: bool | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: JobStatus
    params: JobParams
    created_at: float
    input_key: str
    background_key: str | None = None
    owner: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    model: str | None = None
    detected: dict[str, float] | None = None
    found: bool | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    result: ResultObject | None = None
    error: dict[str, str] | None = None
    worker: str | None = None
    engine_loads: int | None = None
    attempts: int = 0
    # Videos: what the source is (probe), and how many chunks it is rendered in.
    source: dict[str, Any] | None = None
    chunks: int | None = None
    # Where the job's JSON is POSTed when it ends, and how that delivery goes (``WebhookState``).
    callback_url: str | None = None
    webhook: dict[str, Any] | None = None

    @property
    def is_video(self) -> bool:
        return self.params.kind is MediaKind.VIDEO

    def to_hash(self) -> dict[str, str]:
        values: dict[str, Any] = {
            "id": self.id,
            "kind": self.params.kind.value,  # for the Lua scripts (a running video can be cancelled)
            "status": self.status.value,
            "params": self.params.as_dict(),
            "created_at": self.created_at,
            "input_key": self.input_key,
            "background_key": self.background_key,
            "owner": self.owner,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "model": self.model,
            "detected": self.detected,
            "found": self.found,
            "timings_ms": self.timings_ms,
            "result": self.result.__dict__ if self.result else None,
            "error": self.error,
            "worker": self.worker,
            "engine_loads": self.engine_loads,
            "attempts": self.attempts,
            "source": self.source,
            "chunks": self.chunks,
            "callback_url": self.callback_url,
            "webhook": self.webhook,
        }
        return {k: json.dumps(v) for k, v in values.items() if v is not None}

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> JobRecord:
        values = {k: json.loads(v) for k, v in raw.items()}
        result = values.get("result")
        return cls(
            id=values["id"],
            status=JobStatus(values["status"]),
            params=JobParams.from_dict(values["params"]),
            created_at=values["created_at"],
            input_key=values["input_key"],
            background_key=values.get("background_key"),
            owner=values.get("owner"),
            started_at=values.get("started_at"),
            finished_at=values.get("finished_at"),
            model=values.get("model"),
            detected=values.get("detected"),
            found=values.get("found"),
            timings_ms=values.get("timings_ms") or {},
            result=ResultObject(**result) if result else None,
            error=values.get("error"),
            worker=values.get("worker"),
            engine_loads=values.get("engine_loads"),
            attempts=int(values.get("attempts") or 0),
            source=values.get("source"),
            chunks=values.get("chunks"),
            callback_url=values.get("callback_url"),
            webhook=values.get("webhook"),
        )


# What every terminal transition does besides writing the record: counts it (``ends``: an audit finds a
# job that ended twice), tells the API's waiting requests, and puts a job with a callback_url in the
# webhook outbox and tells the webhook threads (KEYS[1] job, KEYS[#KEYS] outbox; job id, now).
_ENDED = f"""
local function ended(job_key, outbox, job_id, now)
  redis.call('HINCRBY', job_key, 'ends', 1)
  redis.call('PUBLISH', '{ENDED_CHANNEL}', job_id)
  if redis.call('HEXISTS', job_key, 'callback_url') == 1 then
    redis.call('ZADD', outbox, now, job_id)
    redis.call('PUBLISH', '{WEBHOOK_CHANNEL}', job_id)
  end
end
"""

# KEYS[1] job, KEYS[2] queued set, KEYS[3] running set, KEYS[4] webhook outbox; ARGV: now, job id.
# Cancels a queued job, or a running video (its chunk workers see it within a second and stop); returns
# the status it found.
_CANCEL = (
    _ENDED
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
local running_video = status == '"running"' and redis.call('HGET', KEYS[1], 'kind') == '"video"'
if status == '"queued"' or running_video then
  redis.call('HSET', KEYS[1], 'status', '"cancelled"', 'finished_at', ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  ended(KEYS[1], KEYS[4], ARGV[2], ARGV[1])
  if running_video then return 'cancelled_running' end
  return 'cancelled'
end
return status
"""
)

# KEYS[1] job, KEYS[2] its progress hash, KEYS[3] running set; ARGV: chunk, frames done, now, job id, ttl.
# Records a chunk's progress and the job's heartbeat; returns the job's status (a chunk stops when it is
# no longer "running": cancelled, or failed by another chunk).
_PROGRESS = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
if status == '"running"' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4]) end
return status
"""

# KEYS[1] job; ARGV: job id, fence ('': any attempt), field, value, ... Writes fields of a running job
# (it stays running), if it is still that attempt's.
_UPDATE = """
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""

# KEYS[1] chunks-done hash, KEYS[2] attempts per part, KEYS[3] the chunk's lease, KEYS[4] the lease
# set, KEYS[5] job; ARGV: chunk, what it wrote (JSON: frames, key), ttl, fence, member. Returns how many
# chunks are done, or -1 when a later attempt has the chunk or the job no longer runs (this one's output
# is not used).
_CHUNK_DONE = """
if redis.call('HGET', KEYS[5], 'status') ~= '"running"' then return -1 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[4] then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[5])
return redis.call('HLEN', KEYS[1])
"""

# KEYS[1] job, KEYS[2] running set, KEYS[3] queued set, KEYS[4] its lease, KEYS[5] the lease set; ARGV:
# now, worker, max attempts, job id, lease ms. A redelivered message (or a takeover) finds the job
# "running" and runs it again as the next attempt, whose number fences the earlier ones out; a finished or
# cancelled job is never run again. A job to run comes back with its record (no second round trip).
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', 0} end
if status ~= '"queued"' and status ~= '"running"' then return {status, 0} end
redis.call('ZREM', KEYS[3], ARGV[4])
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[3]) then return {'exhausted', attempts} end
redis.call('HSET', KEYS[1], 'status', '"running"', 'worker', ARGV[2], 'fence', attempts)
if status == '"queued"' then redis.call('HSET', KEYS[1], 'started_at', ARGV[1]) end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[4])
redis.call('SET', KEYS[4], attempts, 'PX', ARGV[5])
redis.call('ZREM', KEYS[5], ARGV[4] .. '|run|' .. (attempts - 1))
redis.call('ZADD', KEYS[5], tonumber(ARGV[1]) + tonumber(ARGV[5]) / 1000, ARGV[4] .. '|run|' .. attempts)
return {'run', attempts, redis.call('HGETALL', KEYS[1])}
"""

# KEYS[1] job's attempts per part, KEYS[2] the part's lease, KEYS[3] the lease set; ARGV: part, lease ms,
# now, job id. One more attempt at a video's part (a chunk, the join): its number, and its lease.
_BEGIN_PART = """
local attempt = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SET', KEYS[2], attempt, 'PX', ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[4] .. '|' .. ARGV[1] .. '|' .. (attempt - 1))
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[2]) / 1000, ARGV[4] .. '|' .. ARGV[1] .. '|' .. attempt)
return attempt
"""

# KEYS[1] the lease, KEYS[2] the lease set; ARGV: fence, lease ms, now, member. Renews the lease if it is
# still this attempt's (0: it ran out, or another attempt has the part now).
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[2]) / 1000, ARGV[4])
return 1
"""

# The number of the current attempt at a job's part: the job's fence for the whole job ("run"), else the
# part's count in the job's attempts hash (a video's chunk, its join).
_CURRENT_ATTEMPT = f"""
local function current_attempt(job_key, attempts_key, part)
  if part == '{RUN_PART}' then return redis.call('HGET', job_key, 'fence') end
  return redis.call('HGET', attempts_key, part)
end
"""

# KEYS[1] job, KEYS[2] attempts per part, KEYS[3] the lease, KEYS[4] the lease set; ARGV: job id, part,
# fence, member. Claims an expired attempt for a takeover: only once (whoever removes it from the set),
# once the lease key is gone by Redis's own clock (the set's scores come from the workers' clocks), while
# the job still runs and no later attempt has the part. 1: queue the part again. A member no longer worth
# keeping (a later attempt holds the part, the job ended) leaves the set.
_TAKE_OVER = (
    _CURRENT_ATTEMPT
    + """
local holder = redis.call('GET', KEYS[3])
if holder == ARGV[3] then return 0 end
if redis.call('ZREM', KEYS[4], ARGV[4]) == 0 then return 0 end
if holder then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' then return 0 end
if current_attempt(KEYS[1], KEYS[2], ARGV[2]) ~= ARGV[3] then return 0 end
return 1
"""
)

# KEYS[1] job, KEYS[2] running set, KEYS[3] webhook outbox, KEYS[4] attempts per part, KEYS[5] the
# part's lease, KEYS[6] the lease set; ARGV: job id, now, part, fence ('': not an attempt's, e.g. the
# sweep's), member, field, value, ... Records a terminal state once, only over "running", and only for
# the part's current attempt: a late worker's outcome is refused (0).
_FINISH = (
    _ENDED
    + _CURRENT_ATTEMPT
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '"running"' then return 0 end
if ARGV[4] ~= '' then
  if current_attempt(KEYS[1], KEYS[4], ARGV[3]) ~= ARGV[4] then return 0 end
  redis.call('DEL', KEYS[5])
  redis.call('ZREM', KEYS[6], ARGV[5])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZREM', KEYS[2], ARGV[1])
ended(KEYS[1], KEYS[3], ARGV[1], ARGV[2])
return 1
"""
)

# KEYS: the queues' lists, then kombu's hash of delivered but unacknowledged messages and its index (by
# delivery time); ARGV: a cutoff ('': none), job ids. Returns the ids no message names; with a cutoff, a
# message delivered before it and still unacknowledged does not count (its worker took it and vanished
# before starting the job). One script, so a message cannot move from a list to the hash unseen between
# the two reads (kombu pops it first, then records it: a message in that short window is missed here,
# which is why a job must be missing at two sweeps before it is re-sent).
_WITHOUT_MESSAGE = """
local named = {}
local function scan(message)
  for id in string.gmatch(message, '"id":%s*"(%x+)[%-"]') do named[id] = true end
end
for i = 1, #KEYS - 2 do
  for _, message in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do scan(message) end
end
local delivered = redis.call('HGETALL', KEYS[#KEYS - 1])
for i = 1, #delivered, 2 do
  local since = redis.call('ZSCORE', KEYS[#KEYS], delivered[i])
  if ARGV[1] == '' or not since or tonumber(since) >= tonumber(ARGV[1]) then scan(delivered[i + 1]) end
end
local missing = {}
for i = 2, #ARGV do
  if not named[ARGV[i]] then table.insert(missing, ARGV[i]) end
end
return missing
"""


# KEYS[1] job, KEYS[2] outbox, KEYS[3] delivery lock; ARGV: lock token, webhook JSON, job id, next
# attempt's score ('' when the delivery is over). Records one attempt's outcome, only while holding the
# lock; a delivery that is over leaves the outbox.
_WEBHOOK_ATTEMPT = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'webhook', ARGV[2]) end
if ARGV[4] == '' then redis.call('ZREM', KEYS[2], ARGV[3]) else redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3]) end
redis.call('DEL', KEYS[3])
return 1
"""
WEBHOOK_LOCK_PREFIX = "backdrop:webhook-lock:"

# KEYS[1] delivery lock, KEYS[2] outbox; ARGV: lock token, job id, now. Takes the lock only when the job's
# delivery is due (a process that read the outbox a moment ago must not attempt what another just did).
_WEBHOOK_LOCK = """
local due = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not due or tonumber(due) > tonumber(ARGV[3]) then return 0 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[4]) then return 0 end
return 1
"""


@dataclass(frozen=True)
class StartDecision:
    """``run``: process it (``attempt`` counts deliveries, and fences out the earlier ones); ``exhausted``:
    too many deliveries; otherwise the status that makes the message stale (``missing``, ``succeeded``,
    ``cancelled`` ...)."""

    action: str
    attempt: int
    record: JobRecord | None = None  # with ``run``: the job as it starts
    # The keys ``start(read_also=...)`` named, read in the same round trip: their values as bytes (None: none).
    read: dict[str, bytes | None] = field(default_factory=dict)

    @property
    def lease(self) -> Lease | None:
        """With ``run``: this attempt's lease on the job (held from the start; renew it)."""
        return Lease(self.record.id, RUN_PART, self.attempt) if self.record is not None else None


def lease_key(job_id: str, part: str) -> str:
    return f"{LEASE_PREFIX}{job_id}:{part}"


@dataclass(frozen=True)
class Lease:
    """An attempt at a job's part: which job, which part, and its fence (the attempt's number)."""

    job_id: str
    part: str
    fence: int

    @property
    def member(self) -> str:
        return f"{self.job_id}|{self.part}|{self.fence}"

    @classmethod
    def parse(cls, member: str) -> Lease:
        job_id, part, fence = member.split("|")
        return cls(job_id, part, int(fence))


def result_key(lease: Lease, extension: str) -> str:
    """Where an attempt stores its result: one object per attempt, so a late attempt (fenced out) never
    writes over the object the job links to."""
    return f"{result_prefix(lease.job_id)}{lease.fence}.{extension}"


def result_prefix(job_id: str) -> str:
    return f"results/{job_id}-"


def job_of_result(key: str) -> str:
    """The job a result object belongs to (the inverse of :func:`result_key`)."""
    return key.removeprefix("results/").rsplit("-", 1)[0]


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int, lease_s: float = 30.0) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self.lease_s = lease_s
        self._cancel = client.register_script(_CANCEL)
        self._progress = client.register_script(_PROGRESS)
        self._chunk_done = client.register_script(_CHUNK_DONE)
        self._update = client.register_script(_UPDATE)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._without_message = client.register_script(_WITHOUT_MESSAGE)
        self._webhook_attempt = client.register_script(_WEBHOOK_ATTEMPT)
        self._webhook_lock = client.register_script(_WEBHOOK_LOCK)
        self._begin_part = client.register_script(_BEGIN_PART)
        self._renew = client.register_script(_RENEW)
        self._take_over = client.register_script(_TAKE_OVER)

    @classmethod
    def connect(cls, url: str, *, ttl_s: int, lease_s: float = 30.0) -> JobStore:
        """A store on one Redis server at ``url`` (tools and tests)."""
        return cls(connect_redis(replace(Settings.from_env({}), redis_url=url)), ttl_s=ttl_s, lease_s=lease_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        return cls(connect_redis(settings), ttl_s=settings.job_ttl_s, lease_s=settings.lease_s)

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def ping(self) -> None:
        guard_redis(self._redis.ping)

    def create(self, record: JobRecord) -> None:
        key = KEY_PREFIX + record.id

        def write() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=record.to_hash())
                pipe.expire(key, self._ttl_s)
                if record.status is JobStatus.QUEUED:
                    pipe.zadd(QUEUED_SET, {record.id: record.created_at})
                pipe.execute()

        guard_redis(write)

    def delete(self, job_id: str) -> None:
        guard_redis(lambda: self._redis.delete(KEY_PREFIX + job_id))

    def get(self, job_id: str) -> JobRecord | None:
        raw = guard_redis(lambda: self._redis.hgetall(KEY_PREFIX + job_id))
        return JobRecord.from_hash(raw) if raw else None

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Several records in one round trip (None where one does not exist)."""

        def read() -> list[dict[str, str]]:
            with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hgetall(KEY_PREFIX + job_id)
                return pipe.execute()

        return [JobRecord.from_hash(raw) if raw else None for raw in guard_redis(read)]

    def confirm_replicated(self, job_id: str, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` for a replica to have everything written so far, this job's record and
        its queue message included; returns how many replicas confirmed (0: the replication window is
        open for this job). One more write on this connection first: WAIT covers this connection's writes,
        and the message went in on another connection before it."""

        def confirm() -> int:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.expire(KEY_PREFIX + job_id, self._ttl_s)
                pipe.execute_command("WAIT", 1, timeout_ms)
                return int(pipe.execute()[-1])

        return guard_redis(confirm)

    def terminal_writes(self, job_ids: list[str]) -> list[int]:
        """How many times each job was moved to a terminal state (1 for a job that ended, never more)."""

        def read() -> list[str | None]:
            with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(KEY_PREFIX + job_id, "ends")
                return pipe.execute()

        return [int(value or 0) for value in guard_redis(read)]

    def cancel(self, job_id: str) -> str:
        """``cancelled`` (it was queued), ``cancelled_running`` (a running video), ``missing``, or the
        (quoted) status that prevented it."""
        keys = [KEY_PREFIX + job_id, QUEUED_SET, RUNNING_SET, WEBHOOK_DUE_SET]
        args = [json.dumps(time.time()), job_id]
        return str(guard_redis(lambda: self._cancel(keys=keys, args=args)))

    # Videos: a job's chunks report progress and completion beside its record.

    def report_progress(self, job_id: str, chunk: int, done: int) -> JobStatus | None:
        """Record ``done`` frames of ``chunk`` and the job's heartbeat; returns the job's status (None when
        the record is gone)."""
        keys = [KEY_PREFIX + job_id, KEY_PREFIX + job_id + PROGRESS_SUFFIX, RUNNING_SET]
        args = [chunk, done, time.time(), job_id, self._ttl_s]
        status = str(guard_redis(lambda: self._progress(keys=keys, args=args)))
        return None if status == "missing" else JobStatus(json.loads(status))

    def progress(self, job_id: str) -> int:
        """Frames rendered so far, over all chunks."""
        done = guard_redis(lambda: self._redis.hvals(KEY_PREFIX + job_id + PROGRESS_SUFFIX))
        return sum(int(value) for value in done)

    def chunk_done(self, lease: Lease, frames: int, key: str) -> int:
        """Record that the chunk ``lease.part`` is stored at ``key`` with ``frames`` frames; returns how many
        chunks are done (a chunk counts once), or -1 when a later attempt has the chunk."""
        keys = [
            KEY_PREFIX + lease.job_id + CHUNKS_DONE_SUFFIX,
            KEY_PREFIX + lease.job_id + ATTEMPTS_SUFFIX,
            lease_key(lease.job_id, lease.part),
            LEASES_SET,
            KEY_PREFIX + lease.job_id,
        ]
        args = [lease.part, json.dumps({"frames": frames, "key": key}), self._ttl_s, lease.fence, lease.member]
        return int(guard_redis(lambda: self._chunk_done(keys=keys, args=args)))

    def chunks_done(self, job_id: str) -> dict[int, tuple[int, str]]:
        """Each finished chunk's frames and where its attempt stored it."""
        raw = guard_redis(lambda: self._redis.hgetall(KEY_PREFIX + job_id + CHUNKS_DONE_SUFFIX))
        done = {int(chunk): json.loads(value) for chunk, value in raw.items()}
        return {chunk: (int(value["frames"]), str(value["key"])) for chunk, value in done.items()}

    def begin_part(self, job_id: str, part: str) -> Lease:
        """One more attempt at a video's part (a chunk, the join): its fence and its lease."""
        name = KEY_PREFIX + job_id + ATTEMPTS_SUFFIX
        keys = [name, lease_key(job_id, part), LEASES_SET]
        args = [part, self._lease_ms, time.time(), job_id]

        def begin() -> int:
            attempt = int(self._begin_part(keys=keys, args=args))
            self._redis.expire(name, self._ttl_s)
            return attempt

        return Lease(job_id, part, guard_redis(begin))

    def renew(self, lease: Lease) -> bool:
        """Keep the lease (a heartbeat); False when another attempt has the part now."""
        keys = [lease_key(lease.job_id, lease.part), LEASES_SET]
        args = [lease.fence, self._lease_ms, time.time(), lease.member]
        return bool(guard_redis(lambda: self._renew(keys=keys, args=args)))

    def expired_leases(self, now: float, limit: int = 100) -> list[Lease]:
        """Attempts whose lease ran out before ``now`` (their workers stopped renewing)."""
        found = guard_redis(lambda: self._redis.zrangebyscore(LEASES_SET, "-inf", now, start=0, num=limit))
        return [Lease.parse(member) for member in found]

    def take_over(self, lease: Lease) -> bool:
        """Claim an expired attempt's part for another worker (once: True means queue it again)."""
        keys = [
            KEY_PREFIX + lease.job_id,
            KEY_PREFIX + lease.job_id + ATTEMPTS_SUFFIX,
            lease_key(lease.job_id, lease.part),
            LEASES_SET,
        ]
        args = [lease.job_id, lease.part, lease.fence, lease.member]
        return bool(guard_redis(lambda: self._take_over(keys=keys, args=args)))

    def set_video_plan(self, record: JobRecord, source: dict[str, Any], chunks: int, lease: Lease) -> bool:
        """Note what the source is and how many chunks render it, if the job still runs and ``lease`` (the
        planning attempt) is current; the planning's lease ends (the chunks hold their own)."""
        if not self.update_running(replace(record, source=source, chunks=chunks), fence=lease.fence):
            return False
        guard_redis(lambda: self._redis.delete(lease_key(lease.job_id, lease.part)))
        guard_redis(lambda: self._redis.zrem(LEASES_SET, lease.member))
        return True

    def update_running(self, record: JobRecord, *, fence: int | None = None) -> bool:
        """Write ``record``'s fields if the job is still running (it stays running), and, with ``fence``, if
        that attempt is still the current one."""
        fields = record.to_hash()
        fields.pop("attempts", None)
        fields.pop("status", None)
        fields.pop("webhook", None)
        args: list[str] = [
            record.id,
            "" if fence is None else str(fence),
            *(item for pair in fields.items() for item in pair),
        ]
        return bool(guard_redis(lambda: self._update(keys=[KEY_PREFIX + record.id], args=args)))

    def start(self, job_id: str, worker: str, max_attempts: int, *, read_also: Sequence[str] = ()) -> StartDecision:
        """Start an attempt at ``job_id`` if its message is still the job's to run; ``read_also``: keys whose
        values the attempt will need (the job's uploads in Redis), read in the same round trip."""
        keys = [KEY_PREFIX + job_id, RUNNING_SET, QUEUED_SET, lease_key(job_id, RUN_PART), LEASES_SET]
        args = [json.dumps(time.time()), json.dumps(worker), max_attempts, job_id, self._lease_ms]
        (action, attempt, *fields), values = guard_redis(lambda: self._start_and_read(keys, args, read_also))
        record = None
        if fields:  # HGETALL's flat field, value list
            flat = fields[0]
            record = JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        read = dict(zip(read_also, values, strict=True))
        return StartDecision(action=str(action).strip('"'), attempt=int(attempt), record=record, read=read)

    def _start_and_read(self, keys: list[str], args: list[Any], read_also: Sequence[str]) -> tuple[list, list]:
        """The start script, then GETs of ``read_also`` (undecoded), in one round trip. redis-py's scripts in
        a pipeline ask SCRIPT EXISTS first, a round trip of its own, so the script goes by its hash; once
        after the server lost its scripts (a restart, a failover) the script is loaded and the keys read."""
        if not read_also:
            return self._start(keys=keys, args=args), []

        def read(pipe: redis.client.Pipeline) -> list:
            for key in read_also:
                pipe.execute_command("GET", key, **{NEVER_DECODE: True})
            return pipe.execute()

        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._start.sha, len(keys), *keys, *args)
                answer, *values = read(pipe)
            return answer, values
        except redis.exceptions.NoScriptError:
            answer = self._start(keys=keys, args=args)
            with self._redis.pipeline(transaction=False) as pipe:
                return answer, read(pipe)

    def finish(self, record: JobRecord, lease: Lease | None = None) -> bool:
        """Record ``record``'s terminal state if the job is still running and, with ``lease``, if that
        attempt is still the current one (a worker that was cut off is fenced out); False if not."""
        fields = record.to_hash()
        fields.pop("attempts", None)  # counted by start(); never rewound
        fields.pop("webhook", None)  # the delivery's own state, written by the delivery alone
        part, fence, member = (lease.part, str(lease.fence), lease.member) if lease else (RUN_PART, "", "")
        args: list[str] = [
            record.id, json.dumps(time.time()), part, fence, member,
            *(item for pair in fields.items() for item in pair),
        ]  # fmt: skip
        keys = [
            KEY_PREFIX + record.id, RUNNING_SET, WEBHOOK_DUE_SET, KEY_PREFIX + record.id + ATTEMPTS_SUFFIX,
            lease_key(record.id, part), LEASES_SET,
        ]  # fmt: skip
        return bool(guard_redis(lambda: self._finish(keys=keys, args=args)))

    def running_since_before(self, cutoff: float, *, job_id: str | None = None) -> list[str]:
        """Ids of jobs that started running (videos: last reported progress) before ``cutoff`` (epoch
        seconds) and never finished; with ``job_id``, that job if it is one of them."""
        if job_id is not None:
            score = guard_redis(lambda: self._redis.zscore(RUNNING_SET, job_id))
            return [job_id] if score is not None and score <= cutoff else []
        return list(guard_redis(lambda: self._redis.zrangebyscore(RUNNING_SET, "-inf", cutoff)))

    def forget_running(self, job_id: str) -> None:
        guard_redis(lambda: self._redis.zrem(RUNNING_SET, job_id))

    def queued_since_before(self, cutoff: float) -> list[str]:
        """Ids of jobs accepted before ``cutoff`` (epoch seconds) that no worker has started."""
        return list(guard_redis(lambda: self._redis.zrangebyscore(QUEUED_SET, "-inf", cutoff)))

    def forget_queued(self, job_id: str) -> None:
        def forget() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(QUEUED_SET, job_id)
                pipe.zrem(MISSING_SET, job_id)
                pipe.execute()

        guard_redis(forget)

    def clear_missing(self, job_id: str) -> None:
        guard_redis(lambda: self._redis.zrem(MISSING_SET, job_id))

    def without_message(
        self, job_ids: list[str], queues: list[str], *, delivered_since: float | None = None
    ) -> list[str]:
        """Those of ``job_ids`` that no message in ``queues`` (waiting, or delivered and unacknowledged) names:
        a message's task id is its job's id, or starts with it and a dash (a part of a job, ``enqueue_part``).
        With ``delivered_since``, an unacknowledged message delivered before it does not count.

        Reads kombu's Redis transport layout: a list per queue (and per priority step, unused here) and
        the ``unacked`` hash. Its cost grows with the queue's length."""
        if not job_ids:
            return []
        # kombu's list names: the queue's own for priority 0, "{queue}{sep}{step}" for the other steps.
        suffixes = ["", *(f"{KombuRedisChannel.sep}{step}" for step in KOMBU_PRIORITY_STEPS if step)]
        lists = [queue + suffix for queue in queues for suffix in suffixes]
        keys = [*lists, KOMBU_UNACKED, KOMBU_UNACKED_INDEX]
        args = ["" if delivered_since is None else repr(delivered_since), *job_ids]
        return [str(job_id) for job_id in guard_redis(lambda: self._without_message(keys=keys, args=args))]

    def missing_since(self, job_ids: list[str], now: float) -> dict[str, float]:
        """Note that ``job_ids`` had no message at ``now``, keeping the time each was first found so, and
        forget every other job noted before (its message turned up or it started). Returns the first times."""

        def note() -> list[tuple[str, float]]:
            with self._redis.pipeline(transaction=True) as pipe:
                if job_ids:
                    pipe.zadd(MISSING_SET, dict.fromkeys(job_ids, now), nx=True)
                pipe.zrange(MISSING_SET, 0, -1, withscores=True)
                return pipe.execute()[-1]

        noted = guard_redis(note)
        wanted = set(job_ids)
        found = [job_id for job_id, _ in noted if job_id not in wanted]
        if found:
            guard_redis(lambda: self._redis.zrem(MISSING_SET, *found))
        return {job_id: since for job_id, since in noted if job_id in wanted}

    def queue_depth(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu's Redis transport keeps each queue in a list)."""
        return int(guard_redis(lambda: self._redis.llen(queue)))

    def succeed(self, record: JobRecord, lease: Lease | None = None, **changes: Any) -> bool:
        succeeded = replace(record, status=JobStatus.SUCCEEDED, finished_at=time.time(), error=None, **changes)
        return self.finish(succeeded, lease)

    def fail(self, record: JobRecord, code: str, message: str, lease: Lease | None = None) -> bool:
        error = {"code": code, "message": message}
        return self.finish(replace(record, status=JobStatus.FAILED, finished_at=time.time(), error=error), lease)

    # Webhooks: the outbox of finished jobs whose callback is not delivered yet (``worker.webhooks``).

    def webhooks_due(self, now: float, limit: int = 100) -> list[str]:
        """Jobs whose webhook delivery (first, or next attempt) is due at ``now``."""
        return list(guard_redis(lambda: self._redis.zrangebyscore(WEBHOOK_DUE_SET, "-inf", now, start=0, num=limit)))

    def next_webhook_due(self) -> float | None:
        """When the earliest pending delivery is due (None: nothing pending)."""
        first = guard_redis(lambda: self._redis.zrange(WEBHOOK_DUE_SET, 0, 0, withscores=True))
        return float(first[0][1]) if first else None

    def lock_webhook(self, job_id: str, token: str, ttl_s: float, now: float) -> bool:
        """Take the job's delivery for ``ttl_s`` if it is due at ``now`` (one attempt at a time, whichever
        process is first)."""
        keys = [WEBHOOK_LOCK_PREFIX + job_id, WEBHOOK_DUE_SET]
        args = [token, job_id, repr(now), int(ttl_s * 1000)]
        return bool(guard_redis(lambda: self._webhook_lock(keys=keys, args=args)))

    def record_webhook_attempt(self, job_id: str, token: str, state: dict[str, Any], next_due: float | None) -> bool:
        """Write the delivery's state and its next due time (None: it is over), releasing the lock."""
        keys = [KEY_PREFIX + job_id, WEBHOOK_DUE_SET, WEBHOOK_LOCK_PREFIX + job_id]
        args = [token, json.dumps(state), job_id, "" if next_due is None else repr(next_due)]
        return bool(guard_redis(lambda: self._webhook_attempt(keys=keys, args=args)))

    def claim_idempotency_key(self, key: str, fingerprint: str, job_id: str) -> str | None:
        """Bind ``key`` to this request; returns the earlier job id when the same request came before,
        raises :class:`IdempotencyConflict` when the key was used for a different request."""
        name = IDEMPOTENCY_PREFIX + hashlib.sha256(key.encode()).hexdigest()
        value = json.dumps({"job": job_id, "fingerprint": fingerprint})
        if guard_redis(lambda: self._redis.set(name, value, nx=True, ex=self._ttl_s)):
            return None
        existing = guard_redis(lambda: self._redis.get(name))
        if existing is None:  # expired between the two calls: claim it again
            return self.claim_idempotency_key(key, fingerprint, job_id)
        earlier = json.loads(existing)
        if earlier["fingerprint"] != fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was already used for a different request")
        return str(earlier["job"])

    def release_idempotency_key(self, key: str) -> None:
        guard_redis(lambda: self._redis.delete(IDEMPOTENCY_PREFIX + hashlib.sha256(key.encode()).hexdigest()))
