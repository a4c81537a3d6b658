"""The supported stack: Python >= 3.12, LeRobot 0.6.x, transformers 5 — refused otherwise, naming both versions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r1vla import doctor

REPO = Path(__file__).resolve().parents[1]


def test_doctor_refuses_old_lerobot_and_transformers_naming_found_and_needed():
    with pytest.raises(RuntimeError, match=r"lerobot 0\.4\.4 found; r1vla needs lerobot >=0\.6\.1,<0\.7"):
        doctor.check_version("lerobot", "0.4.4", doctor.LEROBOT_NEEDED, "pip install -e .")
    with pytest.raises(
        RuntimeError, match=r"transformers 4\.57\.1 found; r1vla needs transformers >=5\.4,<5\.6"
    ):
        doctor.check_version("transformers", "4.57.1", doctor.TRANSFORMERS_NEEDED, "pip install -e .")
    assert doctor.check_version("lerobot", "0.6.1", doctor.LEROBOT_NEEDED, "") == "lerobot 0.6.1"


def test_doctor_checks_this_environment():
    assert doctor._python().startswith("Python 3.1") and sys.version_info >= (3, 12)
    assert doctor._lerobot().startswith("lerobot 0.6") and doctor._transformers().startswith(
        "transformers 5."
    )


def _python_older_than_312() -> str | None:
    for name in ("python3.11", "python3.10", "python3"):
        path = shutil.which(name)
        if path:
            out = subprocess.run([path, "-c", "import sys; print(sys.version_info < (3, 12))"], capture_output=True,
                                 text=True)  # fmt: skip
            if out.stdout.strip() == "True":
                return path
    return None


def test_setup_refuses_a_python_older_than_312(tmp_path):
    old = _python_older_than_312()
    if old is None:
        pytest.skip("no Python < 3.12 on this machine to try")
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    res = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": old}, timeout=60)  # fmt: skip
    assert res.returncode != 0 and not (tmp_path / ".venv").exists()
    assert "needs Python >= 3.12" in res.stderr and "is Python 3." in res.stderr, res.stderr
