"""The audit's verdict says what it checked and what it could not, and reports collapsed
predictions: the FER case (faces and non-faces under a 7-class emotion model, 4x4 maps,
no masks), where a green "nothing flagged" hid that most non-faces were one emotion."""

import os

import numpy as np
import pytest

from sightline.audit.audit import run_audit
from sightline.audit.summary import summary_lines, verdict
from sightline.evaluate.report_inputs import ReportInputs
from sightline.report.page import write_report
from tests.audit.audit_runs import write_run

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
HAPPY = EMOTIONS.index("happy")


def _fer_like(root, collapsed):
    """100 faces (predictions spread over the 7 emotions) and 100 non-faces, of which 52
    are 'happy' at 0.97 when `collapsed`; 4x4 maps, no labels."""
    rng = np.random.default_rng(3)
    count = 200
    groups = np.repeat([0, 1], 100)
    predictions = rng.integers(0, 7, count)
    scores = rng.uniform(0.3, 0.6, count)
    if collapsed:
        predictions[100:152] = HAPPY
        scores[100:152] = 0.97
        predictions[152:][predictions[152:] == HAPPY] = 0
    keys = np.array([f"{('faces', 'non-faces')[g]}/{i:03d}.png" for i, g in enumerate(groups)])
    maps = rng.uniform(0, 1, (count, 4, 4))
    out = write_run(os.path.join(root, "run"), maps, np.full(count, -1), predictions, keys,
                    shard_size=64, class_names=EMOTIONS, group_names=("faces", "non-faces"),
                    groups=groups, scores=scores)
    return out, predictions, scores


@pytest.fixture(scope="module")
def collapsed_audit(tmp_path_factory):
    out, predictions, scores = _fer_like(str(tmp_path_factory.mktemp("fer")), True)
    return run_audit(out), predictions, scores


def test_collapsed_predictions_of_a_folder_are_the_finding(collapsed_audit):
    audit, predictions, scores = collapsed_audit
    (entry,) = audit["collapsed"]
    non_faces = slice(100, 200)
    assert entry["set"] == "non-faces" and entry["class_name"] == "happy"
    assert entry["count"] == int(np.sum(predictions[non_faces] == HAPPY)) == 52
    assert entry["images"] == 100
    np.testing.assert_allclose(entry["mean_score"], 0.97, rtol=1e-5)
    text, css = verdict(audit)
    assert css == "flagged"
    assert text.startswith("FLAGGED: 52 of folder 'non-faces''s 100 images are predicted as "
                           "happy at a mean score of 0.97")


def test_the_verdict_lists_what_could_not_be_checked(collapsed_audit):
    audit = collapsed_audit[0]
    lines = summary_lines(audit)
    printed = "\n".join(lines)
    assert "NOT checked: evidence on the object: no masks or boxes" in printed
    assert "NOT checked: groups whose evidence sits elsewhere: the maps are 4x4" in printed
    assert "NOT checked: accuracy: the class folders (faces, non-faces) are groups" in printed
    # Folders are groups: rows by predicted emotion, no accuracy, never "class faces".
    assert "class faces" not in printed and "class non-faces" not in printed
    assert all(c["accuracy"] is None and c["grouped_by"] == "predicted"
               for c in audit["classes"])
    assert {c["name"] for c in audit["classes"]} <= set(EMOTIONS)
    assert "  group non-faces: 100 images, predicted as happy 52 (mean score 0.97)" in printed
    assert all(c.get("class_name") in EMOTIONS for c in audit["clusters"])


def test_nothing_found_and_little_checked_is_not_green(tmp_path):
    out, _, _ = _fer_like(str(tmp_path), False)
    audit = run_audit(out)
    assert audit["collapsed"] == []
    text, css = verdict(audit)
    assert css == "unchecked"
    assert text.startswith("nothing flagged; checked: collapsed predictions; NOT checked: "
                           "evidence on the object")
    page = open(write_report(str(tmp_path / "report"), [("run", audit)],
                                   inputs=ReportInputs())).read()
    assert 'class="verdict unchecked"' in page and "<b>not checked</b>" in page
    assert "<th class=\"text\">predicted class</th>" in page and ">group</th>" in page
