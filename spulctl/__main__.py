"""``python -m spulctl``."""

from spulctl.cli import app

app()
