"""Resuming a denoising loop from saved latents by slicing the noise scheduler's schedule.

Mochi's pipeline rejects `timesteps=` (it always passes its own sigmas), and `latents=` alone would start
the schedule over. What works, bit-identically to an uninterrupted seeded run: call the pipeline with the
same `num_inference_steps` and the latents saved after `k` finished steps, and let the noise scheduler's
`set_timesteps` drop the first `k` timesteps and sigmas. `sigmas` has one more entry than `timesteps` (the
terminal value), so after the cut the noise scheduler, starting again at index 0, steps from sigma k to k+1
exactly as the uninterrupted run did. The pipeline reads `scheduler.timesteps` right after
`set_timesteps`, so wrapping that one method on the instance is enough; the wrapper keeps the original's
signature (`functools.wraps`), which diffusers inspects to see whether `sigmas=` is accepted.

Only stateless first-order noise schedulers resume this way: a multistep solver (Wan's default UniPC) also
carries earlier model outputs, which the latents do not hold.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from schemas.events import ErrorCode
from schemas.jobs import ResolvedRequest
from services.worker.engine.generator import GenerationError, ResumeState, request_fingerprint

RESUMABLE_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler"})


def scheduler_resumable(scheduler: Any) -> bool:
    """True for noise schedulers whose whole state is the latents and the step index."""
    if type(scheduler).__name__ not in RESUMABLE_SCHEDULERS:
        return False
    return not bool(getattr(scheduler.config, "stochastic_sampling", False))


def check_resume(state: ResumeState, request: ResolvedRequest) -> int:
    """Return the step to start from, or raise `GenerationError(INTERNAL)` if `state` is not this job's."""
    problems = []
    if state.fingerprint != request_fingerprint(request):
        problems.append("it was made for another request")
    if state.total_steps != request.num_inference_steps:
        problems.append(f"it has {state.total_steps} steps, the request {request.num_inference_steps}")
    if not 0 < state.step < state.total_steps:
        problems.append(f"its step {state.step} is not inside 1..{state.total_steps - 1}")
    if problems:
        raise GenerationError(
            ErrorCode.INTERNAL, "cannot resume from this checkpoint: " + "; ".join(problems)
        )
    return state.step


@contextmanager
def schedule_hook(scheduler: Any, *, skip_steps: int, on_set: Callable[[], None]) -> Iterator[None]:
    """While active, `scheduler.set_timesteps` drops the first `skip_steps` steps, then calls `on_set`.

    `on_set` marks the start of the denoising loop: the pipeline sets timesteps after encoding the prompt
    and just before (Mochi) or around (Wan) preparing the latents.
    """
    original = scheduler.set_timesteps
    shadowed = "set_timesteps" in vars(scheduler)

    @functools.wraps(original)
    def set_timesteps(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        if skip_steps:
            scheduler.timesteps = scheduler.timesteps[skip_steps:]
            scheduler.sigmas = scheduler.sigmas[skip_steps:]
        on_set()

    scheduler.set_timesteps = set_timesteps
    try:
        yield
    finally:
        # The wrapper is an instance attribute; deleting it uncovers the class method again.
        if shadowed:
            scheduler.set_timesteps = original
        else:
            del scheduler.set_timesteps
