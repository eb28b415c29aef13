"""Progress: one rate (steady state, start-up apart) for the bar, the plain lines, the
JSON lines, the summary and the manifest; start-up lines; a run too short for a rate
says why."""

import io
import json
import os

import numpy as np
import pytest

import sightline.jobs.progress
from sightline.config import make_config
from sightline.jobs.progress import NO_RATE, Progress
from sightline.jobs.runner import run_job
from tests.jobs.jobs import IMAGE_SHAPE, write_model


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def feed(progress, clock, steps):
    """steps: (seconds later, images) per batch."""
    for seconds, images in steps:
        clock.now += seconds
        progress.advance(images)


STEPS = [(5.0, 10), (1.0, 10), (1.0, 10), (2.0, 20)]  # start-up 5 s, then 40 in 4 s


def test_the_rate_is_images_after_the_first_batch_over_the_time_after_it():
    clock = Clock()
    progress = Progress(100, stream=io.StringIO(), clock=clock)
    feed(progress, clock, STEPS)
    clock.now += 30.0  # the writer's tail: not the step's rate
    steady_images = sum(images for _, images in STEPS[1:])
    steady_seconds = sum(seconds for seconds, _ in STEPS[1:])
    assert progress.rate() == pytest.approx(steady_images / steady_seconds)
    timing = progress.timing()
    assert timing["startup_seconds"] == 5.0 and timing["images_per_second"] == 10.0
    assert timing["steady_images"] == 40 and timing["steady_seconds"] == 4.0
    assert "rate_note" not in timing


def test_a_pipe_gets_the_start_up_with_its_stages_then_plain_lines_with_that_rate():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(100, stream=stream, clock=clock, every_seconds=0.0)
    progress.stage("loading model", "m.keras")
    clock.now += 2.0
    progress.stage("tracing and compiling the step")
    feed(progress, clock, STEPS)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()  # no bar through a pipe
    assert lines[0] == ("sightline: first batch done after 7.0 s (start-up: loading model "
                        "2.0 s, tracing and compiling the step 5.0 s)")
    assert lines[1] == "sightline: 10/100 images, start-up 7.0 s"
    assert lines[-1] == "sightline: 50/100 images, 10.0 img/s, eta 5 s"


def test_json_lines_carry_the_same_rate():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(100, stream=stream, clock=clock, every_seconds=0.0, log_json=True)
    progress.stage("tracing and compiling the step")
    feed(progress, clock, STEPS)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[0] == {"event": "stage", "message": "tracing and compiling the step ...",
                         "seconds": 0.0}
    rates = [e["images_per_second"] for e in events if e["event"] == "progress"]
    assert rates == [None, 10.0, 10.0, 10.0]
    assert events[-1]["eta_seconds"] == 5.0


def test_a_terminal_bar_moves_per_batch_with_that_rate():
    clock, stream = Clock(), Terminal()
    progress = Progress(100, stream=stream, clock=clock)
    progress.stage("loading model", "m.keras")
    feed(progress, clock, STEPS)
    progress.summary(images=50, **progress.timing())
    frames = [frame for frame in stream.getvalue().split("\r\x1b[K") if frame]
    # The stage is a status line the bar then draws over.
    assert frames[0] == "sightline: loading model m.keras ..."
    bars = [frame for frame in frames if frame.startswith("sightline: [")]
    assert [bar.split("] ")[1].split(",")[0] for bar in bars[:4]] == [
        "10/100 images", "20/100 images", "30/100 images", "50/100 images"]
    assert bars[0].startswith("sightline: [" + "#" * 2 + "-" * 22 + "]")
    assert "10.0 img/s" in bars[3]
    assert stream.getvalue().endswith("images per second 10.0, steady images 40, steady "
                                      "seconds 4.0, definition "
                                      f"{sightline.jobs.progress.RATE_DEFINITION}\n")


def test_a_refusal_after_a_stage_leaves_one_line_on_the_terminal():
    stream = Terminal()
    progress = Progress(stream=stream)
    progress.stage("loading model", "m.keras")
    progress.close()  # what run_job does when a check refuses the run
    stream.write("sightline explain: error: the one line\n")
    # What the terminal shows: each \r\x1b[K erases the line written so far.
    screen = stream.getvalue().split("\r\x1b[K")[-1]
    assert screen == "sightline explain: error: the one line\n"


def test_one_batch_says_why_there_is_no_rate():
    clock, text, lines = Clock(), io.StringIO(), io.StringIO()
    for stream, log_json in ((text, False), (lines, True)):
        progress = Progress(64, stream=stream, clock=clock, log_json=log_json)
        feed(progress, clock, [(3.0, 64)])
        progress.summary(images=64, **{k: v for k, v in progress.timing().items()
                                       if k in ("startup_seconds", "images_per_second",
                                                "rate_note")})
    summary = text.getvalue().splitlines()[-1]
    assert summary == ("sightline: done: images 64, startup seconds 3.0, images per second "
                       f"not measured ({NO_RATE['one_batch']})")
    assert "n/a" not in summary
    event = json.loads(lines.getvalue().splitlines()[-1])
    assert event["images_per_second"] is None and event["rate_note"] == NO_RATE["one_batch"]


# ----------------------------------------------------------------- the job end to end


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    images = np.random.default_rng(3).integers(0, 256, (40, *IMAGE_SHAPE)).astype(np.uint8)
    np.save(root / "images.npy", images)
    np.save(root / "four.npy", images[:4])
    write_model(str(root / "model.keras"))
    return root


def job(root, data, out, **options):
    stream = io.StringIO()
    config = make_config(("gradcam",), model=str(root / "model.keras"), data=str(root / data),
                         out=str(root / out), devices=1, batch_size=4, log_json=True,
                         **options)
    summary = run_job(config, progress_stream=stream)
    with open(root / out / "manifest.json") as handle:
        manifest = json.load(handle)
    return summary, [json.loads(line) for line in stream.getvalue().splitlines()], manifest


def test_the_job_reports_one_rate_in_its_lines_its_summary_and_its_manifest(workspace,
                                                                            monkeypatch):
    monkeypatch.setattr(sightline.jobs.progress, "LINE_SECONDS", 0.0)
    summary, events, manifest = job(workspace, "images.npy", "out")
    kinds = [event["event"] for event in events]
    stages = [event["message"] for event in events if event["event"] == "stage"]
    # What is loading is said before the slow parts, and before any batch.
    assert kinds.index("progress") > kinds.index("stage")
    assert any(m.startswith("loading TensorFlow") for m in stages)
    assert f"loading model {workspace / 'model.keras'} ..." in stages
    assert any(m.startswith("tracing") for m in stages)
    progress = [event for event in events if event["event"] == "progress"]
    # The array path's first compiled call is one batch (the start-up alone), then the
    # bar moves call by call: never 0 then 100%.
    assert progress[0]["images"] == 4 and progress[0]["images_per_second"] is None
    assert len(progress) >= 3 and progress[-1]["images"] == 40
    timing = manifest["timing"]
    assert timing["steady_images"] == 36
    assert timing["images_per_second"] == pytest.approx(36 / timing["steady_seconds"], rel=0.02)
    final = events[-1]
    assert final["event"] == "summary"
    assert (final["images_per_second"] == summary.images_per_second == progress[-1]["images_per_second"]
            == timing["images_per_second"]) and summary.images_per_second > 0
    assert final["startup_seconds"] == summary.startup_seconds == timing["startup_seconds"]


def test_a_one_batch_job_says_it_was_start_up_only(workspace):
    summary, events, manifest = job(workspace, "four.npy", "short")
    assert summary.images == 4 and summary.images_per_second is None
    assert summary.rate_note == NO_RATE["one_batch"] == manifest["timing"]["rate_note"]
    assert events[-1]["rate_note"] == NO_RATE["one_batch"]
    assert summary.startup_seconds > 0
