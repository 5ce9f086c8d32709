"""What the soak reads back at the end: the read model's rows and applied events of its jobs, the jobs
that carry its prompts, and the bucket's objects under each job's prefixes (services/common/storage.py:
`jobs/<id>/attempt-<n>/...` and `checkpoints/<id>/attempt-<n>/...`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from bench.soak_check import TERMINAL_STATUSES, TERMINAL_TYPES, JobView
from services.common.readmodel import Job
from services.common.storage import Storage, job_prefixes
from tests.e2e.chaos import SETTINGS, read_model


async def wait_terminal(job_ids: Iterable[str], within: float) -> dict[str, str]:
    """Poll the read model until every job is terminal (at most `within` s); returns the open ones."""
    ids = [uuid.UUID(j) for j in job_ids]
    engine = create_async_engine(SETTINGS.database_url.get_secret_value())
    deadline = time.monotonic() + within
    try:
        while True:
            try:
                async with engine.connect() as conn:
                    rows = dict((await conn.execute(select(Job.id, Job.status).where(Job.id.in_(ids)))).all())
                open_jobs = {
                    str(j): rows.get(j, "no row") for j in ids if rows.get(j) not in TERMINAL_STATUSES
                }
            except (OSError, SQLAlchemyError) as e:  # Postgres restarting: keep polling
                open_jobs = {"?": f"read model unreachable: {type(e).__name__}"}
            if not open_jobs or time.monotonic() >= deadline:
                return open_jobs
            await asyncio.sleep(2)
    finally:
        await engine.dispose()


async def views(job_ids: Iterable[str]) -> dict[str, JobView]:
    jobs, events = await read_model([uuid.UUID(j) for j in job_ids])
    return {
        str(job_id): JobView(
            status=job.status,
            attempt=job.attempt,
            error_code=(job.error or {}).get("code"),
            video_key=(job.result or {}).get("video_key"),
            terminals=tuple(
                (r.type, r.attempt) for r in events[job_id] if r.applied and r.type in TERMINAL_TYPES
            ),
        )
        for job_id, job in jobs.items()
    }


async def jobs_by_prompt(prefix: str) -> dict[str, list[str]]:
    """Prompt -> job ids, for every row whose prompt starts with `prefix` (this run's jobs)."""
    engine = create_async_engine(SETTINGS.database_url.get_secret_value())
    try:
        async with engine.connect() as conn:
            prompt = Job.request["prompt"].astext
            rows = await conn.execute(
                select(prompt, Job.id).where(prompt.startswith(prefix, autoescape=True))
            )
            out: dict[str, list[str]] = {}
            for text, job_id in rows:
                out.setdefault(text, []).append(str(job_id))
            return out
    finally:
        await engine.dispose()


async def objects(job_ids: Iterable[str]) -> dict[str, list[str]]:
    """Job id -> every key under `jobs/<id>/` and `checkpoints/<id>/` (one S3 client for all)."""
    out: dict[str, list[str]] = {}
    async with Storage(SETTINGS) as storage, storage.client() as s3:
        paginator = s3.get_paginator("list_objects_v2")
        for job_id in job_ids:
            keys: list[str] = []
            for prefix in job_prefixes(uuid.UUID(job_id)):
                async for page in paginator.paginate(Bucket=storage.bucket, Prefix=prefix):
                    keys += [obj["Key"] for obj in page.get("Contents", [])]
            out[job_id] = sorted(keys)
    return out


async def settled_objects(job_ids: list[str], within: float = 30) -> dict[str, list[str]]:
    """`objects`, polled while checkpoints remain: workers delete them just after the terminal event."""
    deadline = time.monotonic() + within
    while True:
        found = await objects(job_ids)
        pending = any(k.startswith("checkpoints/") for keys in found.values() for k in keys)
        if not pending or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(1)
