"""Speed tiers: the request field, its resolution against the model's tiers, and the catalog's recipes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.catalog import CATALOG, EXACT_TIER, Speed, StepCache
from schemas.jobs import JobRequest, RequestRejected, ResolvedRequest, resolve


def test_speed_defaults_to_exact_and_is_carried_into_the_resolved_request() -> None:
    assert resolve(JobRequest(prompt="a fox", model="tiny-mochi")).speed is Speed.EXACT
    assert resolve(JobRequest(prompt="a fox", model="tiny-mochi", speed=Speed.FAST)).speed is Speed.FAST


def test_a_resolved_request_written_before_the_field_reads_as_exact() -> None:
    resolved = resolve(JobRequest(prompt="a fox", model="tiny-mochi", speed=Speed.FASTEST))
    old = resolved.model_dump(mode="json")
    del old["speed"]
    assert ResolvedRequest.model_validate(old).speed is Speed.EXACT


def test_an_unknown_tier_name_is_refused_naming_the_tiers() -> None:
    with pytest.raises(ValidationError, match="'exact', 'fast' or 'fastest'"):
        JobRequest.model_validate({"prompt": "a fox", "speed": "turbo"})


def test_a_tier_the_model_lacks_is_rejected_naming_the_tiers_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    exact_only = CATALOG["tiny-mochi"].model_copy(update={"speeds": {Speed.EXACT: EXACT_TIER}})
    monkeypatch.setitem(CATALOG, "tiny-mochi", exact_only)

    with pytest.raises(RequestRejected) as info:
        resolve(JobRequest(prompt="a fox", model="tiny-mochi", speed=Speed.FAST))

    [problem] = info.value.problems
    assert problem.field == "speed"
    assert "tiny-mochi has no 'fast' speed tier" in problem.message
    assert problem.allowed == "exact"


@pytest.mark.parametrize("spec", CATALOG.values(), ids=lambda s: s.name)
def test_every_model_offers_exact_and_states_each_tiers_cost(spec: object) -> None:
    speeds = spec.speeds  # type: ignore[attr-defined]
    assert speeds[Speed.EXACT].cache is StepCache.NONE and speeds[Speed.EXACT].expected_speedup == 1.0
    for tier in speeds.values():
        assert tier.recipe and tier.speedup_basis and tier.quality_cost
        if tier.cache is StepCache.FIRST_BLOCK:
            assert tier.threshold is not None
        if tier.cache is StepCache.TAYLORSEER_LITE:
            assert tier.cache_interval is not None and tier.warmup_steps is not None


def test_the_taylorseer_schedule_counts_the_steps_that_run_the_transformer() -> None:
    fastest = CATALOG["mochi-1-preview"].speeds[Speed.FASTEST]
    # 4 warm-up steps, then diffusers' hook runs steps 5, 8, 11, ...
    assert [fastest.full_steps(n) for n in (16, 32, 64)] == [8, 13, 24]
    assert CATALOG["tiny-mochi"].speeds[Speed.FASTEST].full_steps(8) == 5
    assert CATALOG["mochi-1-preview"].speeds[Speed.FAST].full_steps(32) == 32  # dynamic: not known ahead
    assert fastest.step_time_ratio == pytest.approx(1 / fastest.expected_speedup)
