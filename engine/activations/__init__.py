"""activations: ZFNet's per-layer activation statistics over a dataset (dead and saturated
channels), a room of its own beside the audit: it reads the model and the data, not a run's
heatmaps."""
