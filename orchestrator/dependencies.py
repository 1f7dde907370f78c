"""What a script says when it runs on an interpreter without the project's dependencies (say the system python3).

Standard library only: it runs exactly when the dependencies are missing.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def explain_missing(missing: ModuleNotFoundError, script: str) -> None:
    """Say how to run the script instead of a traceback, and exit 2; a module of this project missing is a bug."""
    name = (missing.name or "").partition(".")[0]
    if (REPO_ROOT / f"{name}.py").exists() or (REPO_ROOT / name).is_dir():
        raise missing
    print(
        f"error: {sys.executable} lacks the project's dependencies (no module {missing.name!r}): "
        f"run `make install`, then `.venv/bin/python {shlex.join([script, *sys.argv[1:]])}` "
        "from the project root",
        file=sys.stderr,
    )
    raise SystemExit(2) from None
