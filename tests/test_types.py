"""corsproxy/ type-checks clean (mypy, as configured in pyproject.toml): CI runs only pytest, so this runs it.

A type checker catches the drift this code is prone to: two ways through the proxy calling shared helpers,
and private members of a library that change between releases (corsproxy/internals.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_corsproxy_type_checks_clean_with_mypy() -> None:
    if importlib.util.find_spec("mypy") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mypy is not installed (it is in the [test] extras)")
        pytest.skip("mypy is not installed: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
