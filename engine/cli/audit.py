"""`sightline audit`."""

from sightline.audit.audit import add_arguments, run  # noqa: F401 - moved here in the next step
