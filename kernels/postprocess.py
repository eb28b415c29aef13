"""Turning raw maps into stored maps: resizing and per-map scaling to [0, 1]."""

import tensorflow as tf


def resize_heatmaps(heatmaps, size):
    """heatmaps[B,h,w], size (H, W) -> heatmaps[B,H,W], bilinear.

    Bilinear keeps a signed map signed and never overshoots its extremes, so the
    scaling below means the same before and after resizing.
    """
    heatmaps = tf.cast(heatmaps, tf.float32)
    resized = tf.image.resize(heatmaps[..., None], size, method="bilinear")  # [B,H,W,1]
    return resized[..., 0]


def scale_heatmaps(heatmaps):
    """heatmaps[B,h,w] -> (scaled[B,h,w] in [0, 1], scales[B]).

    scales = max |map|; scaled = ReLU(map) / scale, so a non-negative map is divided by
    its maximum and a signed map (CAM, Integrated Gradients) keeps its positive part
    over its largest absolute value. ReLU(raw) == scaled * scale. An all-zero map
    stays zero with scale 0.
    """
    heatmaps = tf.cast(heatmaps, tf.float32)
    scales = tf.reduce_max(tf.abs(heatmaps), axis=(1, 2))  # [B]
    scaled = tf.math.divide_no_nan(tf.nn.relu(heatmaps), scales[:, None, None])
    return scaled, scales


def scale_to_unit_range(values, axis):
    """(values - min) / (max - min) over `axis`; 0 where the values are constant."""
    values = tf.cast(values, tf.float32)
    low = tf.reduce_min(values, axis=axis, keepdims=True)
    high = tf.reduce_max(values, axis=axis, keepdims=True)
    return tf.math.divide_no_nan(values - low, high - low)
