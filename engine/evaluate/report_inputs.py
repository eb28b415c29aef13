"""The one reader the report is handed (`write_report(..., inputs=ReportInputs())`): the
audit's reads (sightline.audit.report_inputs) and the evaluation's: the curves and
sanity arrays of OUT/evaluation.h5 and the images and maps of chosen samples. It lives
in the evaluate room because evaluation.h5's layout is the evaluation's own."""

import os

import h5py
import numpy as np

from sightline.audit.metrics import resize_maps
from sightline.audit.replay import open_run_source, read_images
from sightline.audit.report_inputs import AuditInputs
from sightline.evaluate.sanity_scores import read_sanity
from sightline.evaluate.summary import H5_FILE
from sightline.store.layout import SAMPLE_INDEX
from sightline.store.results import open_results


class ReportInputs(AuditInputs):
    """Everything a report draws that is not in the audit's or evaluation's dict; the
    evaluation's methods take the run folder OUT that evaluation.h5 lies in."""

    @staticmethod
    def _h5(out):
        path = os.path.join(out, H5_FILE)
        return path if os.path.exists(path) else None

    def evaluation_curves(self, out, names):
        """{(group, name): {"probabilities", "fractions"} float64 [n,3,S+1]} of the
        (group, name) pairs (group "methods" or "controls"), or None when the run has no
        evaluation.h5."""
        path = self._h5(out)
        if path is None:
            return None
        with h5py.File(path, "r") as handle:
            return {(group, name): {
                "probabilities": handle[f"{group}/{name}/probabilities"][:].astype(np.float64),
                "fractions": handle[f"{group}/{name}/fractions"][:].astype(np.float64)}
                for group, name in names}

    def evaluation_indices(self, out):
        """The sample indices of evaluation.h5's rows (None without the file)."""
        path = self._h5(out)
        if path is None:
            return None
        with h5py.File(path, "r") as handle:
            return handle[SAMPLE_INDEX][:]

    def sanity_arrays(self, out):
        """What sanity_scores.read_sanity gives of evaluation.h5, or None."""
        path = self._h5(out)
        if path is None:
            return None
        with h5py.File(path, "r") as handle:
            return read_sanity(handle)

    def sample_pictures(self, out, method, indices):
        """{index: (image [H,W,C] or None, heatmap [H,W] at the image's size)}: the images
        read again from the run's source as a person sees them (resized, not
        preprocessed); None for all when the source cannot be read back."""
        with open_results(out) as results:
            shape = tuple(int(v) for v in results.manifest["run"]["image_shape"])
            ordered = np.sort(np.asarray(indices, np.int64))
            try:
                source = open_run_source(results.manifest)
                images = np.concatenate(list(read_images(source, ordered, image_shape=shape,
                                                         preprocess="none")))
            except ValueError:
                images = [None] * len(ordered)
            pictures = {}
            for index, image in zip(ordered.tolist(), images):
                heatmap = results.heatmap(method, index=index)
                if heatmap.shape != shape[:2]:
                    heatmap = resize_maps(heatmap[None], shape[:2])[0]
                pictures[index] = (image, heatmap)
        return pictures
