"""The seed design as a REST peer of the same shape as reelstream's api, for side-by-side figures.

Celery on Redis, one solo worker process per slot, a job hash per job in Redis (status, timestamps),
acks_late so a killed worker's task comes back, prefetch 1 (the seed's choices, as in the fleet
benchmark's Celery peer). Its REST face takes the same body as `POST /v1/jobs`, validated by the same
model, writes the job hash, enqueues the task and answers 202; `GET /v1/jobs/{id}` reads the hash. The
task sleeps `step_seconds` per step, like reelstream's simulated workers.

    redis-server --port 6390 &
    celery -A bench.peer_celery worker --pool solo -Q peer        (one per slot)
    uvicorn bench.peer_celery:api --port 8100
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis
from celery import Celery
from fastapi import FastAPI, HTTPException

from schemas.jobs import JobRequest, resolve

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6390/0")
STEP_SECONDS = float(os.environ.get("PEER_STEP_SECONDS", "0.02"))
QUEUE = "peer"

app = Celery("peer", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
_sync = redis.Redis.from_url(REDIS_URL)


@app.task(name="generate")  # type: ignore[untyped-decorator]
def generate(job_id: str, steps: int) -> str:
    key = f"job:{job_id}"
    _sync.hset(key, mapping={"status": "running", "started": time.time()})
    for i in range(steps):
        time.sleep(STEP_SECONDS)
        _sync.hset(key, mapping={"step": i + 1})
    _sync.hset(key, mapping={"status": "succeeded", "finished": time.time()})
    return job_id


api = FastAPI(title="celery peer")
_redis = aioredis.Redis.from_url(REDIS_URL)


@api.post("/v1/jobs", status_code=202)
async def submit(body: JobRequest) -> dict[str, Any]:
    resolved = resolve(body)
    job_id = str(uuid.uuid4())
    now = time.time()
    await _redis.hset(f"job:{job_id}", mapping={"status": "queued", "created": now})
    # Celery's publish is blocking; the seed's FastAPI app called it inline, as here.
    generate.apply_async((job_id, resolved.num_inference_steps), queue=QUEUE)
    return {"id": job_id, "status": "queued", "created": now}


@api.get("/v1/jobs/{job_id}")
async def read(job_id: str) -> dict[str, Any]:
    fields = await _redis.hgetall(f"job:{job_id}")
    if not fields:
        raise HTTPException(404, "no such job")
    view: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    for name in ("created", "started", "finished"):
        if name in view:
            view[name] = float(view[name])
    return {"id": job_id, **view}
