"""Training checkpoints: written atomically, resumed only by the run that made them.

A checkpoint is a folder `step-NNNNNNNN` holding accelerate's `save_state` (model, optimizer,
scheduler, RNG of every rank), `cursor.json`: our cursor plus the run's settings, and
`checksums.json`: the sha256 of every other file, checked before a resume reads them (a flipped
byte in the weights or the optimizer state would otherwise load without complaint and end in a
wrong student with exit status 0). It is written as `partial-step-NNNNNNNN` and renamed once
complete, and the previous one is removed only then, so a crash mid-write always leaves a whole
checkpoint behind. Resuming compares the settings first: a checkpoint of another method, corpus
or schedule cannot continue this run.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from distill.pipeline.config import ConfigError
from distill.storage.fs import sha256_local

log = logging.getLogger(__name__)
KEEP = 2
CHECKSUMS = "checksums.json"


class ResumeError(ConfigError):
    """`--resume` cannot continue: nothing usable to resume, or it belongs to another run."""


def save(accelerator, folder: Path, cursor: dict, settings: dict, finished: bool) -> None:
    """Write accelerate's state and our cursor, the run's settings and whether the run is
    finished as the checkpoint of step `cursor["step"]`."""
    name = f"step-{cursor['step']:08d}"
    partial = folder / f"partial-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)   # left by a crash mid-write
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every rank's files are in place before they are hashed
    if accelerator.is_main_process:
        state = {"cursor": cursor, "settings": settings, "finished": finished}
        (partial / "cursor.json").write_text(json.dumps(state))
        (partial / CHECKSUMS).write_text(json.dumps(_checksums(partial)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        target = folder / name
        shutil.rmtree(target, ignore_errors=True)     # the same step saved again (the final one)
        partial.rename(target)
        for old in complete(folder)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def complete(folder: Path) -> list[Path]:
    """The renamed (so fully written) checkpoints, oldest first."""
    return sorted(p for p in folder.glob("step-*") if p.is_dir())


def latest_state(folder: Path) -> dict | None:
    """The newest checkpoint's cursor.json ({cursor, settings, finished}), or None when there
    is none or it cannot be read."""
    found = complete(folder)
    return _read_state(found[-1]) if found else None


def load(accelerator, folder: Path, settings: dict) -> dict:
    """Restore the newest usable checkpoint whose settings are `settings`; returns its cursor.

    A checkpoint that cannot be read (truncated, corrupt) is skipped with a warning for the one
    before it; one made with other settings stops the resume, listing every difference."""
    found = complete(folder)
    if not found:
        raise ResumeError(f"{folder}: no checkpoint to resume from; run without --resume to "
                          "start this run")
    for path in reversed(found):
        damage = _damage(path)
        if damage:
            _warn(path, damage)
            continue
        state = _read_state(path)
        if state is not None and "cursor" in state:
            _check_settings(path, state.get("settings"), settings)
            if _load_state(accelerator, path):
                return state["cursor"]
        else:
            _warn(path, "cursor.json is missing or unreadable")
    raise ResumeError(f"{folder}: no usable checkpoint ({', '.join(p.name for p in found)} could "
                      "not be read); delete the folder and run without --resume to start over")


def _checksums(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): sha256_local(f) for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != CHECKSUMS}


def _damage(path: Path) -> str | None:
    """What is wrong with a checkpoint's files against its checksums.json, or None. One written
    before checksums were kept has none, and is read unchecked."""
    listed = path / CHECKSUMS
    if not listed.exists():
        return None
    try:
        expected = json.loads(listed.read_text())
    except (OSError, ValueError):
        expected = None
    if not isinstance(expected, dict):
        return f"{CHECKSUMS} is unreadable"
    found = _checksums(path)
    changed = sorted(name for name in expected.keys() | found.keys()
                     if expected.get(name) != found.get(name))
    return f"{', '.join(changed)} differ from {CHECKSUMS}" if changed else None


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads((path / "cursor.json").read_text())
    except (OSError, ValueError):
        return None


def _load_state(accelerator, path: Path) -> bool:
    """accelerate's load_state, where any failure to read the files makes the checkpoint unusable
    (safetensors, pickle and torch.load raise different errors for a truncated file). Every rank
    must agree, or they would continue from different steps."""
    from accelerate.utils import gather_object

    try:
        accelerator.load_state(str(path))
        ok, reason = True, ""
    except Exception as e:  # noqa: BLE001 - see the docstring
        ok, reason = False, f"{type(e).__name__}: {e}"
    if all(gather_object([ok])):
        return True
    _warn(path, reason or "another rank could not read its part")
    return False


def _warn(path: Path, reason: str) -> None:
    log.warning("checkpoint %s is unusable (%s); falling back to the previous one", path, reason)


def _check_settings(path: Path, saved: dict | None, settings: dict) -> None:
    differences = differences_between(saved, settings)
    if differences:
        raise ResumeError(f"{path} was made with other settings, so resuming would mix two runs: "
                          f"{'; '.join(differences)}. Restore those settings, or run without "
                          "--resume (or with another --output) to start a new run")


def differences_between(saved: dict, now: dict) -> list[str]:
    """'key: checkpoint A, now B' for every leaf that differs, keys dotted."""
    old, new = _flatten(saved), _flatten(now)
    return [f"{key}: checkpoint {old.get(key, '(unset)')!r}, now {new.get(key, '(unset)')!r}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in _flatten(item, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: value}
