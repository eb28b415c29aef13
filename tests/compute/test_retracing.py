"""Repeated explain() calls trace nothing again and print none of TensorFlow's
retracing warnings."""

import logging

import numpy as np
import tensorflow as tf

from sightline import explain
from sightline.compute import explain as explain_module
from tests import models


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _traces(model):
    """Traces of every compiled function explain() holds for the model."""
    functions = [function for _, steps in explain_module._COMPILED[model].values()
                 for function in steps.values()]
    return [function.experimental_get_tracing_count() for function in functions]


def test_repeated_calls_neither_retrace_nor_warn():
    model = models.fashion_cnn("keras3")
    records = _Records()
    tf.get_logger().addHandler(records)
    try:
        # Counts below batch_size: one batch size per power of two, each compiled once.
        for count in (3, 5, 8, 2, 1, 7, 3, 16, 30, 5):
            images = np.random.default_rng(count).uniform(0, 1, (count, 28, 28, 1))
            explain(model, images.astype(np.float32), methods=("gradcam", "saliency"))
        before = _traces(model)
        for count in (3, 5, 30):
            explain(model, np.zeros((count, 28, 28, 1), np.float32),
                    methods=("gradcam", "saliency"))
    finally:
        tf.get_logger().removeHandler(records)
    assert all(count == 1 for count in before), before
    assert _traces(model) == before
    assert not [m for m in records.messages if "retracing" in m], records.messages
