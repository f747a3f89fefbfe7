"""The layering contracts hold on the real tree and fail on a deliberate violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(tree / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    tree = tmp_path / "repo"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    assert _lint(tree).returncode == 0
    qmath = tree / "src" / "slimq" / "core" / "qmath.py"
    qmath.write_text(qmath.read_text() + "\n\ndef _violation() -> None:\n    from slimq.report import schema  # noqa\n")
    broken = _lint(tree)
    assert broken.returncode != 0
    assert "slimq.core.qmath -> slimq.report.schema" in broken.stdout
