"""``python -m spulctl``."""

from spulctl._syspath import drop_checkout_root

drop_checkout_root()

from spulctl.cli import app  # noqa: E402

app()
