"""The report's cluster pages: built from a run, its clusters.h5 and an audit holding
"clusters" (made by the audit's own cluster_maps, write_clusters and verify_cluster on a
planted corner group), they hold valid pictures only, put the flagged cluster first with
its reasons and ablation numbers, and colour the layout with one colour per cluster."""

import base64
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from sightline.audit.audit import run_audit
from sightline.audit.clusters import cluster_maps
from sightline.audit.summary import to_json
from sightline.audit.verify import apply_verification, verify_cluster
from sightline.audit.virelay import write_clusters
from sightline.store.layout import CLUSTERS_FILE
from sightline.report.clusters import cluster_colours
from sightline.report.figures import PALETTE
from sightline.evaluate.report_inputs import ReportInputs
from sightline.report.page import write_report
from tests.audit import audit_runs
from tests.report.pages import Collector, assert_png

COUNT = 160
SIDE = 16  # stored map side
CORNER = 0.85  # where the planted group's evidence sits (fraction of the side)


class Page(Collector):
    """The page's sources, links and text, and its cluster headings in page order."""

    def __init__(self):
        super().__init__()
        self.cluster_ids = []

    def handle_starttag(self, tag, attrs):
        super().handle_starttag(tag, attrs)
        attrs = dict(attrs)
        if tag == "h4" and attrs.get("class") == "cluster":
            self.cluster_ids.append(int(attrs["id"].rsplit("-", 1)[1]))


def read_page(path):
    page = Page()
    with open(path, encoding="utf-8") as handle:
        page.feed(handle.read())
    page.joined = " ".join(" ".join(page.text).split())
    page.links = [link for link in page.links if not link.startswith("#")]
    return page


def blob_maps(centres, rng, sigma=1.5, noise=0.1):
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] + 0.5
    return np.array([np.exp(-((rows - y * SIDE) ** 2 + (cols - x * SIDE) ** 2) / (2 * sigma ** 2))
                     + rng.uniform(0, noise, (SIDE, SIDE)) for y, x in centres])


def corner_probabilities(images):
    """A toy model: class 0's probability is the brightness of the bottom-right corner,
    where the tagged images carry a white mark."""
    height, width = images.shape[1:3]
    corner = images[:, int(0.75 * height):, int(0.75 * width):].mean(axis=(1, 2, 3)) / 255.0
    first = np.clip(corner, 0.0, 1.0)
    return np.stack([first, 1.0 - first], axis=1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("clusters")
    rng = np.random.default_rng(3)
    labels = np.arange(COUNT) % 2
    tagged = (labels == 0) & (rng.random(COUNT) < 0.2)
    centres = [(CORNER, CORNER) if hit else (rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6))
               for hit in tagged]
    maps = blob_maps(centres, rng)
    keys = np.array([f"{audit_runs.CLASSES[label]}/{i:03d}.png" for i, label in enumerate(labels)])
    images = root / "images"
    pictures = rng.integers(0, 120, (COUNT, *audit_runs.SIZE, 3), dtype=np.uint8)
    pictures[tagged, 26:, 26:] = 255  # the tag: a white mark in the bottom-right corner
    for key, picture in zip(keys, pictures):
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(images / key), tf.io.encode_png(picture))
    out = audit_runs.write_run(str(root / "run"), maps, labels, labels.copy(), keys,
                               shard_size=64, source=f"folder {images}")
    stored = audit_runs.stored_maps(maps)
    indices = np.arange(COUNT)
    clusters, cluster, layout, _ = cluster_maps(
        indices, labels, stored, labels=labels, predictions=labels, scores=np.full(COUNT, 0.9),
        keys=keys, class_names=audit_runs.CLASSES)
    for entry in clusters:
        if entry["flagged"]:
            members = pictures[cluster == entry["id"]].astype(np.float32)
            apply_verification(entry, {"region": verify_cluster(corner_probabilities, members, entry)})
    # An audit without clusters (as audit.json was before the audit clustered), then the
    # fixture's own clusters and clusters.h5, written after the audit so they are the
    # ones the page shows whatever the audit writes.
    audit = run_audit(out, method="gradcam")
    plain = {key: value for key, value in json.loads(json.dumps(to_json(audit))).items()
             if key not in ("clusters", "flagged_clusters", "clusters_file", "cluster_rule")}
    write_clusters(os.path.join(out, CLUSTERS_FILE), indices, keys, labels, cluster, layout)
    # What audit.json holds: JSON data, no arrays.
    audit = json.loads(json.dumps(to_json({**plain, "clusters": clusters})))
    path = write_report(str(root / "report"), [("tagged model", audit)], inputs=ReportInputs())
    plain_path = write_report(str(root / "plain"), [("tagged model", plain)],
                              inputs=ReportInputs())
    return {"path": path, "plain": plain_path, "audit": audit, "cluster": cluster,
            "tagged": tagged, "labels": labels}


def test_the_planted_group_is_one_flagged_verified_cluster(made):
    # The fixture itself must hold what the page is asked to show.
    flagged = [c for c in made["audit"]["clusters"] if c["flagged"]]
    assert len(flagged) == 1 and flagged[0]["class"] == 0
    members = made["cluster"] == flagged[0]["id"]
    assert (members & made["tagged"]).sum() / members.sum() >= 0.9
    assert flagged[0]["verification"]["depends"]
    assert len(made["audit"]["clusters"]) >= 2


def test_every_picture_is_a_valid_png_embedded_and_beside_the_page(made):
    page = read_page(made["path"])
    folder = os.path.dirname(made["path"])
    clusters = made["audit"]["clusters"]
    classes = {c["class"] for c in clusters}
    # Mean heatmaps, then one layout per class and one member grid per cluster.
    assert len(page.sources) == 1 + len(classes) + len(clusters)
    for source in page.sources:
        assert_png(base64.b64decode(source.split(",", 1)[1]))
    assert len(page.links) == len(page.sources)
    for link in page.links:
        assert_png(open(os.path.join(folder, link), "rb").read())


def test_the_flagged_cluster_comes_first_with_its_reasons_and_ablation_numbers(made):
    page = read_page(made["path"])
    clusters = made["audit"]["clusters"]
    flagged = next(c for c in clusters if c["flagged"])
    assert page.cluster_ids[0] == flagged["id"]
    assert sorted(page.cluster_ids) == sorted(c["id"] for c in clusters)
    assert "FLAGGED: 1 group(s) found without masks" in page.joined
    for reason in flagged["reasons"]:
        assert " ".join(reason.split()) in page.joined
    hot, control = flagged["verification"]["hot"], flagged["verification"]["control"]
    card = page.joined[page.joined.index(f"cluster {flagged['id']} of class cross"):]
    for number in (f"{hot['mean_drop']:.3f}", f"{control['mean_drop']:.3f}",
                   f"{hot['changed_share']:.1%}", f"{flagged['share']:.1%}"):
        assert number in card
    # A real dependence: hiding the tag's corner costs far more than hiding elsewhere.
    assert hot["mean_drop"] > 0.1 and abs(control["mean_drop"]) < 0.02


def test_the_member_grid_shows_the_members_tag_under_their_heatmaps(made):
    folder = os.path.dirname(made["path"])
    flagged = next(c for c in made["audit"]["clusters"] if c["flagged"])
    picture = assert_png(open(os.path.join(folder, f"tagged-model-cluster-{flagged['id']}.png"),
                              "rb").read())
    tiles = 1 + len(flagged["examples"])
    side = 3 * audit_runs.SIZE[0]  # TILE_SIDE 96 over 32-pixel images: zoom 3
    assert picture.shape[:2] == (side + 4, tiles * side + (tiles + 1) * 2)
    # Each member tile is its own image blended with its heatmap: the white tag in the
    # corner stays the brightest part of the tile.
    for number in range(1, tiles):
        left = 2 + number * (side + 2)
        tile = picture[2:2 + side, left:left + side].astype(np.float64).mean(axis=2)
        corner = tile[int(0.8 * side):, int(0.8 * side):].mean()
        assert corner > tile[:int(0.7 * side), :int(0.7 * side)].mean() + 40


def test_the_layout_has_one_colour_per_cluster(made):
    folder = os.path.dirname(made["path"])
    clusters = made["audit"]["clusters"]
    for label in sorted({c["class"] for c in clusters}):
        ids = [c["id"] for c in clusters if c["class"] == label]
        colours = cluster_colours(ids)
        assert len(set(colours.values())) == len(ids)
        picture = assert_png(open(os.path.join(folder, f"tagged-model-embedding-{label}.png"),
                                  "rb").read())[..., :3]
        present = set()
        for colour in PALETTE:
            rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
            if np.all(picture == rgb, axis=-1).sum() >= 20:
                present.add(colour)
        assert present == set(colours.values())


def test_an_audit_without_clusters_looks_as_before(made):
    plain = read_page(made["plain"])
    assert plain.cluster_ids == []
    assert "Groups found without masks" not in plain.joined
    assert len(plain.sources) == 1  # the mean heatmaps only, as an audit without masks had
    assert not any("embedding" in link or "cluster" in link for link in plain.links)
