"""The job commands against the in-process fake api: what they send, print, save, and exit with."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from rich.progress import Progress

from schemas.jobs import JobRequest
from services.cli.jobs import Target
from services.cli.main import cli
from services.cli.watch import EtaColumn, JobState
from tests.unit.cli.conftest import JPEG, MP4, FakeApi


def run(fake: FakeApi, *args: str, console: Console | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), obj=Target(transport=fake.transport, console=console))


def submitted(fake: FakeApi, *args: str) -> str:
    result = run(fake, "submit", "a fox in snow", "-m", "tiny-mochi", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def one_error_line(result: Result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_every_request_field_is_an_option_of_submit() -> None:
    params = {p.name for p in cli.commands["submit"].params}
    assert set(JobRequest.model_fields) <= params


def test_submit_sends_each_option_and_prints_the_id(fake: FakeApi) -> None:
    job_id = submitted(
        fake,
        "--width", "128", "--height", "96", "--num-frames", "13", "--fps", "12", "-q", "low",
        "--seed", "7", "--guidance-scale", "4.5", "--priority", "batch", "--negative-prompt", "blur",
        "--webhook-url", "https://example.com/hook", "--webhook-events", "started",
        "--webhook-events", "succeeded", "--metadata", "team=video", "--metadata", "run=1",
        "--idempotency-key", "k-1",
    )  # fmt: skip
    post = fake.requests[0]
    assert post.method == "POST" and post.headers["idempotency-key"] == "k-1"
    assert json.loads(post.content) == {
        "prompt": "a fox in snow",
        "model": "tiny-mochi",
        "width": 128,
        "height": 96,
        "num_frames": 13,
        "fps": 12,
        "quality": "low",
        "seed": 7,
        "guidance_scale": 4.5,
        "priority": "batch",
        "negative_prompt": "blur",
        "webhook_url": "https://example.com/hook",
        "webhook_events": ["started", "succeeded"],
        "metadata": {"team": "video", "run": "1"},
    }
    assert job_id in fake.jobs


def test_submit_of_a_size_the_model_cannot_do_is_one_line_naming_the_field(fake: FakeApi) -> None:
    result = run(fake, "submit", "a fox", "-m", "tiny-mochi", "--width", "100")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith("error: 422 ") and "width" in line and "allowed: multiples of" in line
    assert not fake.jobs


def test_submit_of_an_unknown_model_names_the_models(fake: FakeApi) -> None:
    line = one_error_line(result := run(fake, "submit", "a fox", "-m", "nope"))
    assert result.exit_code == 2 and "model: unknown model 'nope'" in line and "tiny-mochi" in line


def test_a_metadata_option_without_equals_is_a_usage_error(fake: FakeApi) -> None:
    result = run(fake, "submit", "a fox", "--metadata", "oops")
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr and not fake.requests


def test_submit_wait_follows_to_success_with_phase_steps_and_queue_position(fake: FakeApi) -> None:
    result = run(fake, "submit", "a fox in snow", "-m", "tiny-mochi", "-q", "low", "--wait")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    total = fake.jobs[job_id].request["num_inference_steps"]
    lines = result.stderr.splitlines()
    assert any("queued queue #2 ETA" in line for line in lines)
    assert any(f"denoising step {total}/{total}" in line for line in lines)
    # The phases after denoising carry no step: the last one done stays shown.
    assert any(f"decoding step {total}/{total}" in line for line in lines)
    req = fake.jobs[job_id].request
    size = f"{req['width']}x{req['height']}, {req['num_frames']} frames"
    assert lines[-1] == f"job {job_id} succeeded ({size}): reelstream download {job_id}"


@pytest.mark.parametrize(
    ("prompt", "code", "word"), [("fail now", 3, "failed"), ("cancel me", 4, "cancelled")]
)
def test_watch_exits_non_zero_when_the_job_did_not_succeed(
    fake: FakeApi, prompt: str, code: int, word: str
) -> None:
    job_id = (
        submitted(fake) if prompt is None else run(fake, "submit", prompt, "-m", "tiny-mochi").stdout.strip()
    )
    result = run(fake, "watch", job_id)
    assert result.exit_code == code, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert f"job {job_id} {word}" in last
    if word == "failed":
        assert "out_of_memory: CUDA out of memory" in last


def test_a_broken_stream_is_resumed_after_the_last_event_without_repeats(fake: FakeApi) -> None:
    job_id = submitted(fake)
    fake.break_streams = 2
    result = run(fake, "watch", job_id)
    assert result.exit_code == 0, result.output
    streams = [last for method, path, last in fake.seen() if path.endswith("/events")]
    # Each stream broke after two events (ids 0-1, then 2-3): each reconnect names the last id it saw.
    assert streams == [None, "1", "3"]
    total = fake.jobs[job_id].request["num_inference_steps"]
    steps = [line for line in result.stderr.splitlines() if "denoising step" in line]
    assert len(steps) == total


def test_watch_draws_a_progress_bar_on_a_terminal(fake: FakeApi) -> None:
    job_id = submitted(fake, "-q", "low")
    total = fake.jobs[job_id].request["num_inference_steps"]
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    result = run(fake, "watch", job_id, console=console)
    assert result.exit_code == 0, result.output
    drawn = screen.getvalue()
    assert "━" in drawn and "100%" in drawn and f"step {total}/{total}" in drawn
    assert f"job {job_id} succeeded" in drawn


def test_get_shows_a_table_and_json(fake: FakeApi) -> None:
    job_id = submitted(fake, "--seed", "11")
    table = run(fake, "get", job_id)
    assert table.exit_code == 0
    assert "queue position" in table.stdout and "seed" in table.stdout and "a fox in snow" in table.stdout
    as_json = run(fake, "get", job_id, "--json")
    assert json.loads(as_json.stdout)["request"]["seed"] == 11


def test_get_of_an_unknown_job_is_a_404_line(fake: FakeApi) -> None:
    result = run(fake, "get", "00000000-0000-7000-8000-000000000000")
    assert result.exit_code == 2
    assert one_error_line(result) == (
        "error: 404 Job not found: no job with id 00000000-0000-7000-8000-000000000000"
    )


def test_get_of_a_malformed_id_is_a_usage_error_before_any_request(fake: FakeApi) -> None:
    result = run(fake, "get", "not-a-uuid")
    assert result.exit_code == 2 and "not a valid UUID" in result.stderr and not fake.requests


def test_list_pages_filters_and_follows_every_page(fake: FakeApi) -> None:
    ids = [submitted(fake) for _ in range(3)]
    first = run(fake, "list", "--limit", "2", "--json")
    assert [j["id"] for j in json.loads(first.stdout)] == ids[::-1][:2]
    page = run(fake, "list", "--limit", "2")
    assert "more: reelstream list --cursor 2" in page.stderr
    second = run(fake, "list", "--limit", "2", "--cursor", "2", "--json")
    assert [j["id"] for j in json.loads(second.stdout)] == [ids[0]]
    every = run(fake, "list", "--limit", "1", "--all", "--json")
    assert [j["id"] for j in json.loads(every.stdout)] == ids[::-1]
    assert run(fake, "watch", ids[1]).exit_code == 0
    done = run(fake, "list", "--status", "succeeded", "--json")
    assert [j["id"] for j in json.loads(done.stdout)] == [ids[1]]
    assert ("GET", "/v1/jobs", None) in fake.seen()
    assert fake.requests[-1].url.params["status"] == "succeeded"


def test_list_rejects_a_status_the_api_does_not_have(fake: FakeApi) -> None:
    result = run(fake, "list", "--status", "done")
    assert result.exit_code == 2 and "queued" in result.stderr and not fake.requests


def test_cancel_then_cancel_again_is_a_409_line(fake: FakeApi) -> None:
    job_id = submitted(fake)
    assert run(fake, "cancel", job_id, "--wait").exit_code == 0
    assert fake.jobs[job_id].status == "cancelled"
    again = run(fake, "cancel", job_id)
    assert (
        again.exit_code == 2
        and one_error_line(again) == f"error: 409 Conflict: job {job_id} already cancelled"
    )


def test_download_saves_the_video_and_a_poster(fake: FakeApi, tmp_path: Path) -> None:
    job_id = submitted(fake)
    early = run(fake, "download", job_id)
    assert early.exit_code == 2 and "409" in one_error_line(early)
    assert list(tmp_path.iterdir()) == []
    assert run(fake, "watch", job_id).exit_code == 0
    default = run(fake, "download", job_id)
    assert default.exit_code == 0, default.output
    assert (tmp_path / f"{job_id}.mp4").read_bytes() == MP4
    named = run(fake, "download", job_id, "-o", str(tmp_path / "v.mp4"))
    assert named.stdout.strip() == str(tmp_path / "v.mp4") and (tmp_path / "v.mp4").read_bytes() == MP4
    poster = run(fake, "download", job_id, "--variant", "poster")
    assert poster.exit_code == 0 and (tmp_path / f"{job_id}-poster.jpg").read_bytes() == JPEG
    assert fake.requests[-1].url.params["variant"] == "poster"
    sprites = run(fake, "download", job_id, "--variant", "spritesheet")
    assert sprites.exit_code == 2 and "variant" in one_error_line(sprites)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{job_id}.mp4", "v.mp4", f"{job_id}-poster.jpg"]
    )


def test_delete_before_the_api_has_it_and_after(fake: FakeApi) -> None:
    job_id = submitted(fake)
    refused = run(fake, "delete", job_id)
    assert refused.exit_code == 2 and one_error_line(refused).startswith("error: 405 ")
    fake.delete_status = 204
    assert run(fake, "delete", job_id).exit_code == 0
    again = run(fake, "delete", job_id)
    assert again.exit_code == 2 and "404" in one_error_line(again)


def test_models_needs_no_key(fake: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REELSTREAM_API_KEY")
    result = run(fake, "models")
    assert result.exit_code == 0 and "tiny-mochi" in result.stdout
    assert "authorization" not in fake.requests[-1].headers


def test_models_lists_each_models_speed_tiers_with_their_expected_speedup(fake: FakeApi) -> None:
    result = run(fake, "models")
    row = next(line for line in result.stdout.splitlines() if line.lstrip().startswith("tiny-mochi "))
    assert "exact (1.0x)" in row and "fast (" in row and "fastest (" in row


def test_without_a_key_the_job_commands_say_where_one_comes_from(fake: FakeApi, monkeypatch: Any) -> None:
    monkeypatch.delenv("REELSTREAM_API_KEY")
    result = run(fake, "list")
    assert result.exit_code == 1 and "REELSTREAM_API_KEY" in result.stderr and not fake.requests


def test_a_wrong_key_is_a_401_line(fake: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELSTREAM_API_KEY", "rs_wrong")
    result = run(fake, "list")
    assert result.exit_code == 2 and one_error_line(result) == "error: 401 Unauthorized: no valid API key"


def test_an_unreachable_api_is_exit_1_and_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELSTREAM_API_KEY", "rs_any")
    result = CliRunner().invoke(cli, ["--api", "http://127.0.0.1:9", "list"])
    assert result.exit_code == 1
    assert one_error_line(result).startswith(
        "error: cannot reach the api at http://127.0.0.1:9: ConnectError"
    )


def test_the_api_url_comes_from_the_environment(fake: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELSTREAM_API_URL", "http://api.example:8123")
    assert run(fake, "list").exit_code == 0
    assert str(fake.requests[-1].url).startswith("http://api.example:8123/v1/jobs")


def test_the_eta_counts_down_at_each_refresh_and_goes_once_run_out() -> None:
    state = JobState.of({"status": "queued", "eta": {"total_seconds": 75.4}})
    bar = Progress(EtaColumn())
    task = bar.add_task("job", state=state)
    assert str(EtaColumn().render(bar.tasks[task])) == "ETA 1:15"
    state.eta_at = time.monotonic() + 9.6
    assert str(EtaColumn().render(bar.tasks[task])) == "ETA 0:10"
    state.eta_at = time.monotonic() - 1
    assert state.eta_text() == "" and str(EtaColumn().render(bar.tasks[task])) == ""
