"""The install: one `distill.*` namespace that no folder on sys.path can shadow."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PARTS = ("storage", "inspection", "pipeline", "flows")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # The decoys are on PYTHONPATH too, as a Dask worker's scratch folder is on its sys.path.
    env = {**os.environ, "PYTHONPATH": str(cwd), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def decoys(tmp_path: Path) -> Path:
    """A working directory whose `storage/`, `pipeline/`, `flows/` and `inspection/` folders
    are packages that break whoever imports them by their bare name."""
    for name in PARTS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('decoy {name} imported')\n")
    return tmp_path


def test_imports_work_beside_decoy_folders(decoys: Path):
    code = ("import distill.storage.cache, distill.inspection.sql, distill.pipeline.config, "
            "distill.flows.caching\n"
            "import distill.storage.cache as c; print(c.__file__)")
    done = _run([sys.executable, "-c", code], decoys)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(ROOT / "storage")


def test_cli_runs_beside_decoy_folders(decoys: Path):
    done = _run([sys.executable, "-m", "distill.flows.cli", "--help"], decoys)
    assert done.returncode == 0, done.stderr
    assert "cache" in done.stdout and "train" in done.stdout


def test_no_generic_top_level_name_is_installed(tmp_path: Path):
    """From a neutral folder, `storage` & co. are not importable: only `distill` is ours."""
    code = ("import importlib.util, sys\n"
            f"found = [n for n in {PARTS!r} if importlib.util.find_spec(n) is not None]\n"
            "print(found); sys.exit(1 if found else 0)")
    done = _run([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0, f"installed under a generic name: {done.stdout}"


def test_every_package_folder_is_listed_in_pyproject():
    """pyproject lists the packages by hand (the mapping onto top-level folders needs it);
    a new sub-package that is missing there would be left out of a normal install."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {"distill"} | {
        "distill." + ".".join(init.parent.relative_to(ROOT).parts)
        for part in PARTS for init in (ROOT / part).rglob("__init__.py")
        if "__pycache__" not in init.parts}
    assert on_disk == listed


def test_a_normal_install_holds_every_part_under_distill(decoys: Path, tmp_path_factory):
    """A wheel (what `pip install .` installs) puts every part inside distill/, and imports
    from it beside the decoys (the target folder comes first on sys.path, so this is the
    installed copy, not the editable one)."""
    wheels, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("distill-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    top_level = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert top_level - {"bin"} == {"distill"}
    assert (target / "distill" / "pipeline" / "demo_data" / "wordnet12" / "pool.jsonl").exists()
    code = "import distill.flows.cli as c; print(c.__file__)"
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{decoys}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=decoys, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(target)
