"""`sightline bench`."""

from sightline.bench.bench import add_arguments, run  # noqa: F401 - moved here in the next step
