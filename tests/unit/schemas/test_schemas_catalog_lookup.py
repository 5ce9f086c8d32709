"""One check of a model name (schemas/catalog.py `model_spec`); the api and the worker give its answer."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.catalog import CATALOG, UnknownModel, model_spec
from schemas.jobs import JobRequest, RequestRejected, resolve
from services.worker.engine import GenerationError, build_generator
from services.worker.engine.generator import EngineSettings
from services.worker.settings import WorkerSettings


def test_a_known_model_gives_its_entry() -> None:
    assert model_spec("tiny-mochi") is CATALOG["tiny-mochi"]


@pytest.mark.parametrize("name", ["nope", "", None, 3])
def test_an_unknown_model_names_the_ones_the_catalog_has(name: object) -> None:
    with pytest.raises(UnknownModel) as caught:
        model_spec(name)
    assert caught.value.name == name and caught.value.known == ", ".join(CATALOG)
    assert isinstance(caught.value, ValueError) and "tiny-mochi" in str(caught.value)


def test_the_api_the_worker_settings_and_the_engine_refuse_the_same_name() -> None:
    with pytest.raises(RequestRejected) as rejected:
        resolve(JobRequest(prompt="a cat", model="nope"))
    [problem] = rejected.value.problems
    assert (problem.field, problem.allowed) == ("model", ", ".join(CATALOG))
    with pytest.raises(ValidationError, match="not in the catalog"):
        WorkerSettings(model="nope", slot=0)
    with pytest.raises(GenerationError, match="not in the catalog"):
        build_generator("nope", EngineSettings())
