"""The progress summary: a value that could not be measured is said to be so."""

import io
import json

from sightline.jobs.progress import Progress


def test_an_unmeasured_rate_prints_as_n_a_and_as_null_in_json():
    text, lines = io.StringIO(), io.StringIO()
    Progress(10, stream=text).summary(images=10, images_per_second=None)
    Progress(10, stream=lines, log_json=True).summary(images=10, images_per_second=None)
    assert text.getvalue().strip() == "sightline: done: images 10, images per second n/a"
    assert json.loads(lines.getvalue())["images_per_second"] is None


def test_a_measured_rate_prints_as_its_value():
    text = io.StringIO()
    Progress(10, stream=text).summary(images=10, images_per_second=12.5)
    assert text.getvalue().strip() == "sightline: done: images 10, images per second 12.5"
