"""The wheels a GPU machine needs for bench/gpu.sh, carried with the checkout in `.whl/`.

The GPU machine can fetch nothing, and its image (bench/gpu_image.txt) already has torch,
transformers, pyarrow, numpy and most of what they need, but not Prefect, pydantic, datasets and
their dependencies. So, here:

  python bench/gpu_wheels.py lock      # resolve what `distill cache` needs for Python 3.12 on
                                       # manylinux x86-64 (pip, at this venv's tested versions),
                                       # minus the image's packages: bench/gpu_wheels.txt
  python bench/gpu_wheels.py download  # exactly those wheels into .whl/, with their sizes and
                                       # the checkout's: the two together must stay < 60 MiB

and there bench/gpu.sh installs `.whl/` into a folder on PYTHONPATH, installs distill from the
checkout, and runs

  python3 bench/gpu_wheels.py check    # every carried wheel installed at its locked version;
                                       # each requirement of them and of distill that the
                                       # environment does not meet, one line each

  python3 bench/gpu_wheels.py flow     # a Prefect flow run through distill's API server that
                                       # reads a corpus with datasets (no torch needed)

`check` only reports (exit 0): a mismatch with a version the image was never seen with can
still run, and the bench's own lines then say whether it did.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "bench" / "gpu_image.txt"
LOCK = ROOT / "bench" / "gpu_wheels.txt"
WHEELS = ROOT / ".whl"
LIMIT_MIB = 60
PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
# distill requirements the bench does not need on the GPU machine, and why.
NOT_NEEDED = {"duckdb": "only `distill inspect --sql` imports it (a 20 MiB wheel)"}
# Packages carried although the image has them: distill's closure bounds them more tightly than
# an image release can be trusted to meet (a carried wheel comes first on PYTHONPATH).
CARRIED_ANYWAY = {"typing-extensions": "pydantic 2.14 needs >= 4.16.0",
                  "fsspec": "datasets 5.2 needs <= 2026.9.0",
                  "python-dateutil": "prefect 3.8.8 needs < 3 (4.0.0 is out)"}
# distill's own pins that the image deliberately replaces: the bench measures its CUDA torch.
IMAGE_WINS = {"torch"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> dict[str, str | None]:
    """The image's packages: normalized name -> version where one was read, else None."""
    packages = {}
    for line in IMAGE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            packages[normalize(name)] = version or None
    return packages


def distill_requirements() -> list[str]:
    """The base and `ml` requirements of pyproject.toml: what `import distill` and `distill
    cache` need (the `ml` extra refers back to the base install)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["ml"]


def requirement_name(requirement: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group())


def pip_target_options() -> list[str]:
    options = ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp"]
    for platform in PLATFORMS:
        options += ["--platform", platform]
    return options


def lock() -> None:
    """Resolve the closure with pip for the GPU machine's Python and write bench/gpu_wheels.txt."""
    image = image_packages()
    wanted = [r for r in distill_requirements()
              if requirement_name(r) not in image and requirement_name(r) not in NOT_NEEDED]
    # This venv's versions are the tested ones: they constrain the resolution where they apply.
    tested = sorted({f"{normalize(d.metadata['Name'])}=={d.version}" for d in metadata.distributions()
                     if normalize(d.metadata["Name"]) not in IMAGE_WINS | {"distill"}
                     and "+" not in d.version})
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(tested) + "\n")
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--target", str(Path(tmp) / "target"), "--report", str(report),
                        *pip_target_options(), "-c", str(constraints), *wanted], check=True)
        resolved = {normalize(item["metadata"]["name"]): item["metadata"]["version"]
                    for item in json.loads(report.read_text())["install"]}
    carried = {name: version for name, version in resolved.items()
               if name not in image or name in CARRIED_ANYWAY}
    header = ["# Wheels bench/gpu.sh installs on the GPU machine (Python 3.12, manylinux x86-64):",
              f"# the closure of {', '.join(sorted(requirement_name(r) for r in wanted))}",
              "# minus bench/gpu_image.txt, at the tested versions. Written by",
              "# `python bench/gpu_wheels.py lock`; `download` fetches them into .whl/."]
    LOCK.write_text("\n".join(header + [f"{n}=={v}" for n, v in sorted(carried.items())]) + "\n")
    print(f"{LOCK.relative_to(ROOT)}: {len(carried)} wheels of {len(resolved)} resolved "
          f"({len(resolved) - len(carried)} already in the image)")


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalize(name)] = version
    return pins


def wheel_name(path: Path) -> str:
    return normalize(path.name.split("-")[0])


def checkout_bytes() -> int:
    """What travels besides .whl/: tracked files and untracked ones git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def download() -> None:
    """Fetch exactly the locked wheels into .whl/ (stale ones removed) and report the sizes."""
    pins = locked()
    WHEELS.mkdir(exist_ok=True)
    for wheel in WHEELS.glob("*.whl"):
        name = wheel_name(wheel)
        if name not in pins or f"-{pins[name]}-" not in wheel.name.replace("_", "-"):
            wheel.unlink()
    have = {wheel_name(w) for w in WHEELS.glob("*.whl")}
    missing = [f"{n}=={v}" for n, v in pins.items() if n not in have]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(WHEELS),
                        *pip_target_options(), *missing], check=True)
    wheels = sorted(WHEELS.glob("*.whl"), key=lambda w: -w.stat().st_size)
    absent = set(pins) - {wheel_name(w) for w in wheels}
    if absent:
        sys.exit(f"error: .whl/ lacks {', '.join(sorted(absent))} after the download")
    carried, checkout = sum(w.stat().st_size for w in wheels), checkout_bytes()
    for wheel in wheels[:10]:
        print(f"  {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    mib = (carried + checkout) / 2**20
    print(f".whl/: {len(wheels)} wheels, {carried / 2**20:.2f} MiB; checkout "
          f"{checkout / 2**20:.2f} MiB; together {mib:.2f} MiB (limit {LIMIT_MIB} MiB)")
    if mib >= LIMIT_MIB:
        sys.exit(f"error: {mib:.2f} MiB would travel, over {LIMIT_MIB} MiB: carry fewer wheels "
                 "(NOT_NEEDED in bench/gpu_wheels.py)")


def unmet(requirements: list[str], who: str) -> list[str]:
    """The requirements (marker-evaluated, no extras) that the running environment misses."""
    from packaging.requirements import Requirement

    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{who} needs {requirement}: not installed")
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{who} needs {requirement}: {version} is installed")
    return problems


def installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def check() -> None:
    """On the GPU machine, after the install: say what does not hold, one line each."""
    problems = []
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={version} is carried but not installed")
            continue
        if installed != version:
            problems.append(f"{name}: {installed} is found first, {version} is carried")
        problems += unmet(metadata.requires(name) or [], f"{name} {version}")
    ours = [r for r in distill_requirements() if requirement_name(r) not in NOT_NEEDED.keys() | IMAGE_WINS]
    problems += unmet(ours, "distill")
    versions = ", ".join(f"{n} {installed_version(n)}" for n in ("torch", "transformers", "accelerate",
                                                                  "pyarrow", "prefect", "datasets"))
    print(f"environment: Python {sys.version.split()[0]}, {versions}")
    for problem in problems:
        print(f"  requirement not met: {problem}")
    print(f"requirements: {len(problems)} not met" if problems else
          f"requirements: the {len(locked())} carried wheels and distill's are all met")


def flow() -> None:
    """What the carried wheels serve, without torch (so it also runs where the image's torch is
    missing, e.g. a Python 3.12 venv made here to stand in for the image): distill's Prefect API
    server, a flow run against it, and the corpus read through `datasets`."""
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")  # no late log posts at exit
    from prefect import flow as prefect_flow

    from distill.flows.server import api_server
    from distill.pipeline.corpus import open_dataset

    @prefect_flow(name="carried-wheels")
    def count_rows(path: str) -> int:
        return sum(1 for _ in open_dataset(path))

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(100)))
        with api_server():
            rows = count_rows(str(corpus))
    print(f"flow: a Prefect flow run through distill's API server read {rows} rows with datasets")
    if rows != 100:
        sys.exit("error: the flow read the wrong number of rows")


COMMANDS = {"lock": lock, "download": download, "check": check, "flow": flow}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    COMMANDS[parser.parse_args().command]()
