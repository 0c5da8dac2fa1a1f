"""Install Safety-Gymnasium 1.0.0 on Python 3.11: ``python -m rl.envs.install_safety``.

Safety-Gymnasium 1.0.0 and its gymnasium-robotics 1.2.2 pin requirements that cannot be
installed on Python 3.11 with numpy 2 (``gymnasium==0.28.1``, ``pygame==2.1.0``, which has no
Python 3.11 wheel, and ``numpy<1.24``), and pip has no way to override a package's own pins.
The code of both packages runs fine with this project's gymnasium 0.29 and numpy 2 (the
dataclass defaults that Python 3.11 rejects are fixed at import time by
:mod:`rl.envs.safety_gym_import`; pygame is imported nowhere in safety-gymnasium).

This helper is the one place that handles it (the Makefile calls it too):

1. downloads the two wheels from the package index with ``pip download --no-deps``,
   checked against their published sha256 (:data:`WHEELS`);
2. rewrites only their metadata: the pins of :data:`REQUIREMENT_CHANGES` are relaxed (or
   dropped), and the version gets the local label ``+py311`` (``safety-gymnasium
   1.0.0+py311``), so ``pip list`` shows that the metadata was changed; the code is the
   published code, byte for byte (every file's RECORD hash is kept);
3. installs the rewritten wheels with ``pip install`` (their remaining requirements, such
   as ``mujoco==2.3.3``, are installed as usual), after which ``pip check`` is clean.

Usage::

    pip install ".[safety]"                # the requirements Safety-Gymnasium really needs
    python -m rl.envs.install_safety       # the two packages themselves
    python -m rl.envs.install_safety --wheel-dir wheels --no-install   # only build the wheels

Nothing is installed when both packages are already installed at the ``+py311`` versions
(``--force`` reinstalls).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["INSTALL_COMMAND", "LOCAL_LABEL", "REQUIREMENT_CHANGES", "WHEELS", "main", "rewrite_wheel"]

#: The command that the ImportError of :mod:`rl.envs.safety_gym_import` names.
INSTALL_COMMAND = "python -m rl.envs.install_safety"
LOCAL_LABEL = "py311"


@dataclass(frozen=True)
class PublishedWheel:
    """A wheel as published on PyPI."""

    project: str
    version: str
    filename: str
    sha256: str


WHEELS = (
    PublishedWheel(
        "safety-gymnasium",
        "1.0.0",
        "safety_gymnasium-1.0.0-py3-none-any.whl",
        "1efb19de9316bde563df887660e6be0da98e3962058fe60a0f8db5bffb9e0fe0",
    ),
    PublishedWheel(
        "gymnasium-robotics",
        "1.2.2",
        "gymnasium_robotics-1.2.2-py3-none-any.whl",
        "1a02e2ff5c842b5cf1ecdfe0cc41775ca87bc06595ba9ffcd879d6187df1392b",
    ),
)

#: project -> {requirement name -> new ``Requires-Dist`` value, or ``None`` to drop it}.
#: Only unconditional requirements (no ``extra ==`` marker) are changed.
REQUIREMENT_CHANGES: dict[str, dict[str, str | None]] = {
    "safety-gymnasium": {
        "gymnasium": "gymnasium (>=0.28.1,<1.0)",
        "pygame": None,  # imported nowhere in the package
    },
    "gymnasium-robotics": {
        "numpy": "numpy (>=1.21.0)",
    },
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _rewrite_metadata(
    text: str, version: str, changes: Mapping[str, str | None]
) -> tuple[str, dict[str, str]]:
    """The METADATA text with the new version and requirements, and the changes made
    (requirement name -> ``"old -> new"``)."""
    out: list[str] = []
    done: dict[str, str] = {}
    for line in text.splitlines(keepends=True):
        if line.startswith("Version: "):
            out.append(f"Version: {version}\n")
            continue
        if line.startswith("Requires-Dist: ") and "extra ==" not in line:
            spec = line[len("Requires-Dist: ") :].strip()
            name = _normalise(re.split(r"[\s(<>=!~;\[]", spec, maxsplit=1)[0])
            if name in changes:
                new = changes[name]
                done[name] = f"{spec} -> {new if new is not None else '(dropped)'}"
                if new is not None:
                    out.append(f"Requires-Dist: {new}\n")
                continue
        out.append(line)
    return "".join(out), done


def rewrite_wheel(
    wheel: Path, out_dir: Path, changes: Mapping[str, str | None], label: str = LOCAL_LABEL
) -> tuple[Path, list[str]]:
    """Write a copy of ``wheel`` whose metadata has relaxed requirements and a local version label.

    The package files are copied unchanged; the ``.dist-info`` folder is renamed to the new
    version, its METADATA rewritten and its RECORD updated (new paths; new hash and size for
    METADATA).

    Args:
        wheel: A ``name-version-tags.whl`` file.
        out_dir: Folder for the new wheel.
        changes: Requirement name -> new ``Requires-Dist`` value (``None`` drops it).
        label: Local version label appended as ``+label``.

    Returns:
        The new wheel's path and the requirement changes made.

    Raises:
        ValueError: ``wheel`` is not a wheel file name, has no ``.dist-info/METADATA``, or a
            requirement named in ``changes`` is not in its metadata.
    """
    match = re.fullmatch(r"([A-Za-z0-9_.]+)-([^-]+)-(.+)\.whl", wheel.name)
    if match is None:
        raise ValueError(f"not a wheel file name (name-version-tags.whl): {wheel.name!r}")
    dist, version, tags = match.groups()
    new_version = f"{version}+{label}"
    old_info, new_info = f"{dist}-{version}.dist-info/", f"{dist}-{new_version}.dist-info/"
    target = Path(out_dir) / f"{dist}-{new_version}-{tags}.whl"
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        if old_info + "METADATA" not in names:
            raise ValueError(f"{wheel.name} has no {old_info}METADATA")
        metadata, done = _rewrite_metadata(src.read(old_info + "METADATA").decode(), new_version, changes)
        missing = sorted(set(changes) - set(done))
        if missing:
            raise ValueError(f"{wheel.name}: requirements {missing} not found in its metadata")
        record_rows = list(csv.reader(io.StringIO(src.read(old_info + "RECORD").decode())))
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for name in names:
                if name == old_info + "RECORD":
                    continue
                data = metadata.encode() if name == old_info + "METADATA" else src.read(name)
                dst.writestr(name.replace(old_info, new_info, 1) if name.startswith(old_info) else name, data)
            record = io.StringIO()
            writer = csv.writer(record, lineterminator="\n")
            for row in record_rows:
                if not row:
                    continue
                path = row[0]
                if path == old_info + "RECORD":
                    writer.writerow([new_info + "RECORD", "", ""])
                elif path == old_info + "METADATA":
                    writer.writerow(
                        [new_info + "METADATA", _record_hash(metadata.encode()), len(metadata.encode())]
                    )
                elif path.startswith(old_info):
                    writer.writerow([path.replace(old_info, new_info, 1), *row[1:]])
                else:
                    writer.writerow(row)
            dst.writestr(new_info + "RECORD", record.getvalue())
    return target, list(done.values())


def _installed_version(project: str) -> str | None:
    try:
        return importlib.metadata.version(project)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(command: Sequence[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(list(command), check=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rl.envs.install_safety``."""
    parser = argparse.ArgumentParser(
        prog=INSTALL_COMMAND, description=__doc__.split("\n\n")[0].split(": ")[0] + "."
    )
    parser.add_argument(
        "--wheel-dir",
        type=Path,
        default=None,
        help="keep the rewritten wheels here (default: a temporary folder)",
    )
    parser.add_argument("--no-install", action="store_true", help="only download and rewrite the wheels")
    parser.add_argument("--force", action="store_true", help="reinstall even if already installed")
    args = parser.parse_args(argv)

    wanted = {w.project: f"{w.version}+{LOCAL_LABEL}" for w in WHEELS}
    if not args.force and not args.no_install and all(_installed_version(p) == v for p, v in wanted.items()):
        print(
            "safety-gymnasium and gymnasium-robotics are installed: "
            + ", ".join(f"{p} {v}" for p, v in wanted.items())
        )
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        download = Path(tmp) / "download"
        out_dir = args.wheel_dir or Path(tmp) / "wheels"
        out_dir.mkdir(parents=True, exist_ok=True)
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(
            "".join(f"{w.project}=={w.version} --hash=sha256:{w.sha256}\n" for w in WHEELS)
        )
        pip = [sys.executable, "-m", "pip"]
        _run(
            [
                *pip,
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "-r",
                str(requirements),
                "-d",
                str(download),
            ]
        )
        built = []
        for w in WHEELS:
            path, done = rewrite_wheel(download / w.filename, out_dir, REQUIREMENT_CHANGES[w.project])
            print(f"{w.project} {w.version} -> {path.name}: " + "; ".join(done))
            built.append(path)
        if args.no_install:
            return 0
        _run([*pip, "install", *(["--force-reinstall", "--no-deps"] if args.force else []), *map(str, built)])
        if args.force:  # --no-deps above: bring the remaining requirements in as usual
            _run([*pip, "install", *map(str, built)])
    print("done; check with: python -m pip check")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
