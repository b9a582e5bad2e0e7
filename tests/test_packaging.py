"""The distribution ships the engine and the orchestration skin, and the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_flows_tasks_connectors_and_script(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("fedmine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("fedmine/cli.py", "fedmine/federation/coordinator.py", "flows/train.py", "flows/prepare.py",
                   "tasks/prepare.py", "tasks/train.py", "connectors/__init__.py"):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fedmine = fedmine.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_engine_does_not_import_prefect():
    """fedmine/ is the engine: importing all of it must not load Prefect."""
    code = (
        "import sys, pkgutil, importlib, fedmine\n"
        "for m in pkgutil.walk_packages(fedmine.__path__, 'fedmine.'):\n"
        "    if m.name != 'fedmine.cli': importlib.import_module(m.name)\n"
        "assert 'prefect' not in sys.modules, sorted(k for k in sys.modules if k.startswith('prefect'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
