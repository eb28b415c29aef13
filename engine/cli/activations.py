"""`sightline activations`."""

from sightline.audit.activations import add_arguments, run  # noqa: F401 - moved here in the next step
