"""Packaging: one version, the metadata rewrite of rl.envs.install_safety, light imports."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest

import difftrust
from rl.envs import install_safety

ROOT = Path(__file__).resolve().parents[1]


def _fake_wheel(path: Path) -> Path:
    """A minimal wheel ``demo_pkg-1.0.0`` pinning ``gymnasium==0.28.1`` and ``pygame==2.1.0``."""
    info = "demo_pkg-1.0.0.dist-info/"
    files = {
        "demo_pkg/__init__.py": b"VALUE = 1\n",
        info + "METADATA": (
            b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0.0\n"
            b"Requires-Dist: gymnasium (==0.28.1)\nRequires-Dist: gymnasium-robotics (==1.2.2)\n"
            b"Requires-Dist: pygame (==2.1.0)\nRequires-Dist: pygame ; extra == 'render'\n"
        ),
        info + "WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([name, "sha256=" + digest, len(data)])
    writer.writerow([info + "RECORD", "", ""])
    wheel = path / "demo_pkg-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(info + "RECORD", record.getvalue())
    return wheel


def test_rewrite_wheel_relaxes_pins_and_keeps_record_consistent(tmp_path):
    wheel = _fake_wheel(tmp_path)
    changes = install_safety.REQUIREMENT_CHANGES["safety-gymnasium"]
    out, done = install_safety.rewrite_wheel(wheel, tmp_path, changes)
    assert out.name == "demo_pkg-1.0.0+py311-py3-none-any.whl"
    assert done == ["gymnasium (==0.28.1) -> gymnasium (>=0.28.1,<1.0)", "pygame (==2.1.0) -> (dropped)"]
    info = "demo_pkg-1.0.0+py311.dist-info/"
    with zipfile.ZipFile(out) as zf:
        metadata = zf.read(info + "METADATA").decode()
        requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist")]
        assert requires == [
            "Requires-Dist: gymnasium (>=0.28.1,<1.0)",
            "Requires-Dist: gymnasium-robotics (==1.2.2)",  # another project: unchanged
            "Requires-Dist: pygame ; extra == 'render'",  # optional extras are left alone
        ]
        assert "Version: 1.0.0+py311" in metadata.splitlines()
        assert zf.read("demo_pkg/__init__.py") == b"VALUE = 1\n"
        rows = list(csv.reader(io.StringIO(zf.read(info + "RECORD").decode())))
        assert sorted(r[0] for r in rows) == sorted(zf.namelist())
        for name, digest, size in rows:  # every hash and size matches the file in the wheel
            if name.endswith("RECORD"):
                continue
            data = zf.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == "sha256=" + expected and int(size) == len(data), name


def test_rewrite_wheel_refuses_a_missing_requirement(tmp_path):
    wheel = _fake_wheel(tmp_path)
    with pytest.raises(ValueError, match=r"requirements \['numpy'\] not found"):
        install_safety.rewrite_wheel(wheel, tmp_path, {"numpy": "numpy (>=1.21.0)"})
    with pytest.raises(ValueError, match="not a wheel file name"):
        install_safety.rewrite_wheel(tmp_path / "demo.zip", tmp_path, {})


def test_one_version_and_entry_points():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "difftrust.__version__"}
    assert version("difftrust") == difftrust.__version__
    import rl

    assert rl.__version__ == difftrust.__version__
    assert not any(line.startswith("version:") for line in (ROOT / "CITATION.cff").read_text().splitlines())
    scripts = pyproject["project"]["scripts"]
    assert scripts == {
        "rl-cpo": "rl.cpo:main",
        "rl-meta-cpo": "rl.meta_cpo:main",
        "rl-adapt": "rl.adapt:main",
    }
    plugin = [ep for ep in entry_points(group="gymnasium.envs") if ep.value.startswith("rl.")]
    assert [ep.value for ep in plugin] == ["rl.envs.registration:register_gymnasium_envs"]
    for package in ("difftrust", "rl"):
        assert (ROOT / package / "py.typed").is_file()
    # cvxpy is for tests and benchmarks only
    assert not any(d.startswith("cvxpy") for d in pyproject["project"]["dependencies"])


def test_gymnasium_make_without_importing_rl_and_light_imports():
    code = (
        "import sys, gymnasium\n"
        "env = gymnasium.make('SafeNavGoal-v0')\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(obs.shape, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split("\n")[0] == "(37,) False"  # the plugin does not pull in torch
    code = "import sys, difftrust\nprint(sorted(m for m in ('gymnasium', 'matplotlib', 'tensorboard') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"  # the layer imports nothing of rl's dependencies


def test_import_error_names_the_install_command(monkeypatch):
    from rl.envs import safety_gym_import

    monkeypatch.setitem(sys.modules, "safety_gymnasium", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"python -m rl\.envs\.install_safety"):
        safety_gym_import.import_safety_gymnasium()
    assert install_safety.INSTALL_COMMAND == "python -m rl.envs.install_safety"
