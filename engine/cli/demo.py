"""`sightline demo`."""

from sightline.demo.demo import add_arguments, run  # noqa: F401 - moved here in the next step
