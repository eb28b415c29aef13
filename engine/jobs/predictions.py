"""Collapsed predictions: most images of a set predicted as one class at high confidence.

A model shown images it was not prepared for (0..255 pixels where it expects [-1, 1],
the wrong channel order) tends to put nearly all of them in one class with a score near
1: in the run that prompted this check, 193 of 200 images went to class 0 at a mean
score of 0.99. A shortcut does the same to a group of images that carry its cue. Either
way every map of the run explains that one class, so it is the first thing to say.

A set (the whole run, or one class folder) has collapsed when at least MIN_IMAGES of its
images are in it, one class c takes at least `collapse_share(K)` of them (half, and for
models with few classes more than chance gives: 0.9 of a 2-class model's, 2/3 of a
3-class model's), their mean score is at least MIN_SCORE, and the labels do not explain
it: c's share of the predictions exceeds c's share of the labels by at least
MIN_EXCESS (a set labelled c that is predicted c is right, not collapsed).
"""

import numpy as np

MIN_IMAGES = 10
MIN_SCORE = 0.9
MIN_EXCESS = 0.25
ALL_IMAGES = "all images"


def collapse_share(num_classes):
    """The share of a set one class must take to count as most of it."""
    if not num_classes or num_classes < 2:
        return 1.0
    return max(0.5, min(0.9, 2.0 / num_classes))


class PredictionTally:
    """Per set (every image, and each group), the predicted classes' counts, their score
    sums and the labels' counts; add() a chunk at a time, memory O(sets x classes)."""

    def __init__(self, num_classes, group_names=None):
        self.num_classes = int(num_classes)
        self.group_names = tuple(group_names or ())
        sets = 1 + len(self.group_names)  # set 0: all images; set 1 + g: group g
        self.counts = np.zeros((sets, self.num_classes), np.int64)
        self.scores = np.zeros((sets, self.num_classes), np.float64)
        self.labelled = np.zeros((sets, self.num_classes), np.int64)
        self.sizes = np.zeros(sets, np.int64)

    def add(self, predictions, scores, labels=None, groups=None):
        """predictions int [n], scores float [n] (the predicted class's probability),
        labels int [n] (-1 unknown), groups int [n] (-1 none)."""
        predictions = np.asarray(predictions, np.int64)
        scores = np.asarray(scores, np.float64)
        labels = np.full(len(predictions), -1) if labels is None else np.asarray(labels, np.int64)
        groups = np.full(len(predictions), -1) if groups is None else np.asarray(groups, np.int64)
        inside = (predictions >= 0) & (predictions < self.num_classes)
        for row, rows in [(0, inside)] + [(1 + g, inside & (groups == g))
                                          for g in range(len(self.group_names))]:
            self.sizes[row] += int(rows.sum())
            np.add.at(self.counts[row], predictions[rows], 1)
            np.add.at(self.scores[row], predictions[rows], scores[rows])
            known = rows & (labels >= 0) & (labels < self.num_classes)
            np.add.at(self.labelled[row], labels[known], 1)

    def collapsed(self):
        """[{"set", "images", "class", "count", "share", "mean_score", "label_share"}] of
        the sets that collapsed (module docstring), the whole run first."""
        found = []
        needed = collapse_share(self.num_classes)
        for row, size in enumerate(self.sizes.tolist()):
            if size < MIN_IMAGES:
                continue
            top = int(np.argmax(self.counts[row]))
            count = int(self.counts[row, top])
            share = count / size
            mean_score = float(self.scores[row, top] / max(count, 1))
            label_share = float(self.labelled[row, top] / size)
            if share >= needed and mean_score >= MIN_SCORE and share - label_share >= MIN_EXCESS:
                found.append({"set": ALL_IMAGES if row == 0 else self.group_names[row - 1],
                              "images": size, "class": top, "count": count,
                              "share": share, "mean_score": mean_score,
                              "label_share": label_share})
        return found


def collapse_message(entry, class_name, preprocess):
    """One line saying what collapsed and what to check."""
    where = "" if entry["set"] == ALL_IMAGES else f" of folder '{entry['set']}'"
    return (f"{entry['count']} of {entry['images']} images{where} are predicted as "
            f"{class_name} at a mean score of {entry['mean_score']:.2f}: most likely a "
            f"preprocessing mistake (this run: --preprocess {preprocess}; the model may expect "
            "[0,1], [-1,1], caffe or torch), else a shortcut; check --preprocess before "
            "reading the maps")
