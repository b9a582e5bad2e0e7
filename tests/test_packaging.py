"""The distribution ships the engine and the orchestration skin under fedmine, and the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (path,) = out.glob("fedmine-*.whl")
    return path


@pytest.mark.slow
def test_wheel_ships_flows_tasks_connectors_inside_fedmine(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "fedmine/cli.py",
        "fedmine/protocol.py",
        "fedmine/coordinator/training.py",
        "fedmine/party/organisation.py",
        "fedmine/flows/train.py",
        "fedmine/flows/prepare.py",
        "fedmine/tasks/data.py",
        "fedmine/tasks/rounds.py",
        "fedmine/connectors/__init__.py",
    ):
        assert module in names, module
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("fedmine-")}
    assert tops == {"fedmine"}, tops  # no generic top-level names (flows, tasks, connectors) in site-packages
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fedmine = fedmine.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_installed_wheel_works_from_anywhere(wheel, tmp_path):
    """``pip install`` of the wheel, then ``fedmine`` and its subpackages from a folder that is not the checkout."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    assert not (target / "flows").exists() and not (target / "connectors").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(target)}
    code = (
        "import fedmine, fedmine.flows.train, fedmine.connectors, fedmine.tasks.rounds; "
        "print(fedmine.__file__); print(fedmine.flows.train.__file__); print(fedmine.connectors.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=elsewhere, env=env
    ).stdout.split()
    assert len(out) == 3 and all(line.startswith(str(target / "fedmine")) for line in out), out
    help_text = subprocess.run(
        [str(target / "bin" / "fedmine"), "--help"], check=True, capture_output=True, text=True, cwd=elsewhere, env=env
    )
    assert "demo" in help_text.stdout and "run" in help_text.stdout


@pytest.mark.slow
def test_engine_does_not_import_prefect():
    """fedmine/ but its Prefect skin (flows, tasks, the CLI): importing all of it must not load Prefect."""
    code = (
        "import sys, pkgutil, importlib, fedmine\n"
        "for m in pkgutil.walk_packages(fedmine.__path__, 'fedmine.'):\n"
        "    if m.name != 'fedmine.cli' and not m.name.startswith(('fedmine.flows', 'fedmine.tasks')):\n"
        "        importlib.import_module(m.name)\n"
        "assert 'prefect' not in sys.modules, sorted(k for k in sys.modules if k.startswith('prefect'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_fedmine_lets_idle_openmp_threads_sleep_unless_the_environment_says(given, expected):
    """OMP_WAIT_POLICY is set before numba or LightGBM loads the OpenMP runtime; a user's own setting stays."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, sys, fedmine; print(os.environ['OMP_WAIT_POLICY'], 'lightgbm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.split() == [expected, "False"]
