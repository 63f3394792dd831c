"""Per-teacher calibration, so teachers' outputs are on one scale before they are combined.

GOVERN compares each teacher with the student coordinate by coordinate, so a teacher that is
over-confident (or whose scores carry an offset) would bias every vote. The fits are small and run
on a held-out labelled set (the config's `eval` file) whose teacher logits come from the cache,
like everything else a teacher contributes; the result is a (scale, bias) pair per teacher that
the config records (`teachers[].calibration`) and the reader applies to the cached logits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from distill.inspection.summaries import expected_calibration_error
from distill.pipeline.config import ConfigError, ContinualConfig, DistillConfig, TeacherConfig
from distill.pipeline.kinds import kind_of
from distill.pipeline.kinds.classification.labels import build_label_space
from distill.storage.aligned import AlignedCache
from distill.storage.columns import to_matrix

# Above this temperature a teacher's calibrated probabilities are close to uniform: temperature
# scaling found that its confidence carries little information on the eval set (a teacher that
# is near chance there, or labels that do not match its classes). Said, not refused: that can
# be the truth about a poor teacher, and calibrating it is then what keeps it from misleading.
FLAT_TEMPERATURE = 10.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on labelled rows (logits [N, C],
    labels [N]); Guo et al. 2017. Optimising log T keeps T positive and the problem well scaled."""
    logits, labels = logits.detach().float(), labels.long()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def fit_platt(scores: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> tuple[float, float]:
    """Platt scaling: (scale, bias) minimising the BCE of sigmoid(scale·score + bias) against 0/1
    labels, for a relevance teacher that emits one score."""
    scores, labels = scores.detach().double(), labels.detach().double()
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(scores * params[0] + params[1], labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(params[0]), float(params[1])


def fit_affine(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Least-squares (scale, bias) with scale·scores + bias ≈ targets (both [N]): maps a score
    teacher onto graded held-out targets (not just 0/1, where `fit_platt` is the right fit)."""
    scores = scores.detach().double()
    design = torch.stack([scores, torch.ones_like(scores)], dim=1)
    solution = torch.linalg.lstsq(design, targets.detach().double().unsqueeze(1)).solution
    return float(solution[0]), float(solution[1])


def held_out_teachers(config: DistillConfig, names: list[str]) -> list[str]:
    """Which of the named teachers the caching flow also runs over the `eval` file, because their
    students are evaluated from that cache: all of them for a single-corpus config (its report
    scores each teacher and their ensemble beside the student); for a continual config, causal
    LMs and, when it maps teacher prompts, prompt-based teachers (the mapped student needs their
    prompt vectors for every input it is evaluated on)."""
    maps = config.tasks is not None and (config.continual or ContinualConfig()).map_teacher_prompts

    def needed(teacher: TeacherConfig) -> bool:
        kind = kind_of(teacher, f"{config.source}: teachers[{teacher.name}].model")
        return config.tasks is None or kind.eval_always or (maps and kind.prompts)

    return [n for n in names if needed(config.teacher(n))]


def check_calibratable(config: DistillConfig) -> None:
    """Only teachers whose section has `calibration` (classification and score teachers) are
    fitted; a causal-LM teacher's targets are fixed at its `lm.temperature` when cached."""
    others = [t.name for t in config.teachers if "calibration" not in type(t).model_fields]
    if others:
        raise ConfigError(f"{config.source}: teachers {', '.join(others)}: `distill calibrate` fits "
                          "classification and score teachers; causal-lm targets are cached at "
                          "teachers[].lm.temperature")


def calibrate_teachers(config: DistillConfig, aligned: AlignedCache) -> list[dict]:
    """Fit each teacher on the cached logits over the eval set (`aligned`, built on the config
    `eval_corpus_config` returns). Class teachers get a temperature fitted on the rows whose gold
    class they cover; score teachers get Platt scaling (0/1 labels) or a least-squares map."""
    from distill.pipeline.kinds.classification.evaluate import read_labelled

    labels = build_label_space(aligned.manifests, config.student.labels if config.student else None,
                               {t.name: t.label_map for t in config.teachers}, config.source)
    _, gold_by_row = read_labelled(config, labels)
    shards = [aligned.read(i, columns=["logits"]) for i in range(len(aligned))]   # read once
    gold = gold_by_row[np.concatenate([shard.text.column("row").to_numpy() for shard in shards])]
    results = []
    for k, manifest in enumerate(aligned.manifests):
        logits = np.concatenate([to_matrix(shard.teachers[k].column("logits"))
                                 for shard in shards]).astype(np.float64)
        if labels.scores:
            results.append(_fit_scores(manifest.name, logits[:, 0], gold))
        else:
            results.append(_fit_classes(manifest.name, logits, gold, labels.maps[k]))
    return results


def _fit_classes(name: str, logits: np.ndarray, gold: np.ndarray, class_map: np.ndarray) -> dict:
    """Temperature scaling on the rows whose gold class this teacher covers."""
    local = {int(student): i for i, student in enumerate(class_map)}
    inside = np.array([int(g) in local for g in gold])
    if inside.sum() < 2:
        raise ConfigError(f"teacher '{name}': fewer than 2 eval rows carry a class it predicts; "
                          "calibration needs labelled rows of its classes")
    x = torch.from_numpy(logits[inside])
    y = torch.tensor([local[int(g)] for g in gold[inside]])
    temperature = fit_temperature(x, y)
    if not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"teacher '{name}': temperature scaling did not converge on the "
                          f"{int(inside.sum())} eval rows of its classes (T = {temperature}); check "
                          "its cached logits (`distill inspect`) and the eval labels")
    before, after = torch.softmax(x, 1).numpy(), torch.softmax(x / temperature, 1).numpy()
    accuracy = float((before.argmax(1) == y.numpy()).mean())
    fit = {"teacher": name, "kind": "temperature", "temperature": temperature,
           "scale": 1.0 / temperature, "bias": 0.0, "rows": int(inside.sum()), "accuracy": accuracy,
           "nll_before": float(F.cross_entropy(x, y)),
           "nll_after": float(F.cross_entropy(x / temperature, y)),
           "ece_before": expected_calibration_error(before, y.numpy()),
           "ece_after": expected_calibration_error(after, y.numpy())}
    if temperature > FLAT_TEMPERATURE:
        fit["warning"] = (f"teacher '{name}': the fitted temperature {temperature:.1f} flattens its "
                          f"predictions to nearly uniform (accuracy {accuracy:.3f} on {fit['rows']} "
                          "eval rows): it tells little about these labels, so calibrated it adds "
                          "almost nothing to an ensemble; check the teacher and the eval labels")
    return fit


def _fit_scores(name: str, scores: np.ndarray, gold: np.ndarray) -> dict:
    x, y = torch.from_numpy(scores), torch.from_numpy(gold.astype(np.float64))
    if np.isin(gold, (0.0, 1.0)).all():
        scale, bias = fit_platt(x, y)
        kind = "platt"
        before = float(F.binary_cross_entropy_with_logits(x, y))
        after = float(F.binary_cross_entropy_with_logits(x * scale + bias, y))
    else:
        scale, bias = fit_affine(x, y)
        kind = "affine"
        before = float(F.mse_loss(x, y))
        after = float(F.mse_loss(x * scale + bias, y))
    fit = {"teacher": name, "kind": kind, "scale": scale, "bias": bias, "rows": len(scores),
           "loss_before": before, "loss_after": after}
    if scale <= 0:  # stored as fitted: the config is the user's, but they must know what it does
        fit["warning"] = (f"teacher '{name}': the fitted scale {scale:.3g} is not positive, so its "
                          "calibrated scores fall as its raw scores rise: on the eval set it ranks "
                          "relevance backwards (or not at all). Check its training and the eval "
                          "labels before writing this fit, or leave the teacher out")
    return fit
