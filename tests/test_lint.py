"""The code keeps to the ruff rules in pyproject.toml ([tool.ruff]): any finding fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    """`ruff check` over the whole repository, with the repository's own configuration."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "No module named ruff" not in done.stderr, "ruff is missing: pip install -e '.[dev]'"
    assert done.returncode == 0, done.stdout + done.stderr
