"""Shared by the benchmark scripts: print the summary and write the JSON report with the command and machine."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def finish(out: Path | None, summary: dict[str, Any], **extra: Any) -> None:
    """Print ``summary``; with ``out``, write ``{command, machine, cpus, **extra, summary}`` as JSON."""
    print(json.dumps(summary, indent=2))
    if out:
        report = {"command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "machine": platform.platform(),
                  "cpus": os.cpu_count(), **extra, "summary": summary}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
