"""The real `huozi-local` in a child process, as a user runs it (its own HUOZI_HOME)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(*args: str, stdin: str = "", home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUOZI_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "huozi_local", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
