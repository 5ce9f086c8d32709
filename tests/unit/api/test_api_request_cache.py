"""The api validates a job's request once per process, not on every read of the job."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.jobs import ResolvedRequest
from schemas.samples import resolved_request
from services.api.views import RequestCache


def _row(request: dict[str, Any], job_id: uuid.UUID | None = None) -> Any:
    return SimpleNamespace(id=job_id or uuid.uuid4(), request=request)


def test_a_jobs_request_is_validated_once_and_equals_a_fresh_validation() -> None:
    cache = RequestCache()
    row = _row(resolved_request().model_dump(mode="json"))
    first = cache.get(row)
    assert first == ResolvedRequest.model_validate(row.request)
    assert cache.get(row) is first


def test_the_cache_forgets_the_longest_held_job_beyond_its_size() -> None:
    cache = RequestCache(size=2)
    rows = [
        _row(resolved_request().model_copy(update={"prompt": f"fox {i}"}).model_dump(mode="json"))
        for i in range(3)
    ]
    held = [cache.get(row) for row in rows]
    assert len(cache) == 2
    assert cache.get(rows[2]) is held[2]
    assert cache.get(rows[0]) is not held[0]  # validated again
    assert cache.get(rows[0]).prompt == "fox 0"


def test_a_request_that_does_not_validate_is_not_held() -> None:
    cache = RequestCache()
    with pytest.raises(ValidationError, match="Field required"):
        cache.get(_row({"prompt": "fox"}))
    assert len(cache) == 0
