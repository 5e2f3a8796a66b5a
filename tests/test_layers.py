"""The package's layers (pyproject.toml [tool.importlinter]) hold: no cycle, no upward import."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout


def test_the_contract_names_every_subpackage():
    """A new subpackage must be placed in a layer (otherwise it is not checked)."""
    text = (ROOT / "pyproject.toml").read_text()
    pkg = ROOT / "hoiguide"
    names = [p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()] + \
        [p.stem for p in pkg.glob("*.py") if p.stem not in ("__init__", "__main__")]
    missing = [n for n in names if f"hoiguide.{n}" not in text]
    assert missing == []
