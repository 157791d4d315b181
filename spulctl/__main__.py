"""``python -m spulctl``."""

from spulctl.cli import main

main()
