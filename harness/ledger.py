"""The job ledger: what became of a set of accepted jobs, read from the job records and the bucket.

Every accepted job must end in exactly one terminal state (succeeded, failed or cancelled), once; a
succeeded job's result object is the one its record links to, and no other object of it is left (no late
attempt's result, no video chunk). The soak and the partition tests end with it.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from backdrop.service.jobs import JobRecord, JobStatus, JobStore, job_of_result
from backdrop.service.storage import Storage

BATCH = 500


def job_of_chunk(key: str) -> str:
    return key.removeprefix("chunks/").split("/", 1)[0]


def audit(jobs: JobStore, storage: Storage, accepted: list[str]) -> dict:
    """The ledger of ``accepted`` jobs (see the module's docstring); ``balanced`` says whether it holds."""
    records: dict[str, JobRecord | None] = {}
    ends: dict[str, int] = {}
    for start in range(0, len(accepted), BATCH):
        batch = accepted[start : start + BATCH]
        records.update(zip(batch, jobs.get_many(batch), strict=True))
        ends.update(zip(batch, jobs.terminal_writes(batch), strict=True))
    statuses = Counter(record.status.value if record else "lost" for record in records.values())
    results: dict[str, list[str]] = defaultdict(list)
    for key in storage.list_keys("results/"):
        results[job_of_result(key)].append(key)
    chunks = Counter(job_of_chunk(key) for key in storage.list_keys("chunks/"))

    wrong_results = []  # a succeeded job without exactly its linked object, or an ended job with one
    for job_id, record in records.items():
        if record is None or not record.status.finished:
            continue
        expected = [record.result.key] if record.status is JobStatus.SUCCEEDED and record.result else []
        if sorted(results.get(job_id, [])) != expected:
            wrong_results.append(job_id)
    report = {
        "accepted": len(accepted),
        "succeeded": statuses["succeeded"],
        "failed": statuses["failed"],
        "cancelled": statuses["cancelled"],
        "lost": statuses["lost"],
        "stuck": statuses["queued"] + statuses["running"],
        "duplicate_terminal_writes": sum(1 for count in ends.values() if count > 1),
        "failed_without_reason": sum(
            1 for r in records.values() if r and r.status is JobStatus.FAILED and not (r.error or {}).get("code")
        ),
        "wrong_result_objects": len(wrong_results),
        "chunks_left": sum(
            1 for job_id, record in records.items() if record and record.status.finished and chunks[job_id]
        ),
        "failure_codes": dict(Counter(r.error["code"] for r in records.values() if r and r.error)),
        "attempts_over_one": sum(1 for r in records.values() if r and r.attempts > 1),
        "examples": wrong_results[:3],
    }
    report["balanced"] = (
        report["accepted"] == report["succeeded"] + report["failed"] + report["cancelled"]
        and not any(
            report[name]
            for name in ("lost", "stuck", "duplicate_terminal_writes", "failed_without_reason", "wrong_result_objects")
        )
        and not report["chunks_left"]
    )
    return report
