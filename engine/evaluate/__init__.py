"""Trust: faithfulness curves, one-pass scores, controls and sanity checks for a finished run's heatmaps."""
