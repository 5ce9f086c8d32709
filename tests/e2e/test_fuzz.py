"""The api against a client it did not write: schemathesis generates requests from /openapi.json.

Every check is on: no 5xx, every answer matches its documented schema and status, a schema-valid
request is accepted unless schemathesis.toml lists the documented refusal, a schema-invalid one is
refused. `make fuzz-api` runs the same with more examples.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from services.cli.config import api_key
from tests.e2e.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_the_api_honours_its_openapi_document_under_generated_requests(services: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{services}/openapi.json", "--checks", "all",
         "--max-examples", "15", "--generation-deterministic", "--no-color",
         "--header", f"Authorization: Bearer {api_key(ROOT)}"],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert cases is not None, report[-6000:]
    assert int(cases[1]) > 100 and cases[1] == cases[2], cases[0]
