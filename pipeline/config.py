"""The one YAML config, validated with pydantic; docs/config.md is generated from these models
(python -m distill.pipeline.config_docs).

Every error names the file, the key and what to do. Relative paths are taken relative to the
config file, so a config and its data can move together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A bad config; the message says which file and key, and how to fix it."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorpusConfig(Strict):
    path: str = Field(description="jsonl/json/csv/parquet/txt file, a folder of them, or a "
                                  "saved `datasets` directory")
    text_column: str = "text"
    rows_per_shard: int = Field(4096, ge=1)
    split: str = "train"


class MCDropoutConfig(Strict):
    passes: int = Field(16, ge=2)
    seed: int = 0


class FeaturesConfig(Strict):
    layer: int = Field(-1, description="hidden-state index; -1 is the last layer")
    pooling: Literal["mean", "token"] = "mean"
    project_to: int | None = Field(None, ge=1, description="fixed seeded random projection")
    seed: int = 0


class CalibrationConfig(Strict):
    """Puts a teacher's logits on the ensemble's scale: logits * scale + bias."""

    scale: float = 1.0
    bias: float = 0.0


class LMTargetsConfig(Strict):
    """What a causal-LM teacher stores per token (both modes at `temperature`, which training
    then uses: the tail of a top-k list and the draws cannot be re-tempered later)."""

    mode: Literal["top-k", "sampled"] = "top-k"
    k: int = Field(32, ge=1, description="top-k: ids and log-probs kept per token")
    samples: int = Field(32, ge=1, le=255, description="sampled: draws per token")
    temperature: float = Field(1.0, gt=0)
    seed: int = 0


class TeacherConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str
    kind: Literal["classification", "causal-lm"] = "classification"
    max_length: int = Field(128, ge=2)
    batch_size: int = Field(64, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:1, ...")
    logits_dtype: Literal["float32", "float16"] = "float32"
    on_nonfinite: Literal["error", "skip"] = "error"
    mc_dropout: MCDropoutConfig | None = None
    features: FeaturesConfig | None = None
    label_map: dict[str, str] = Field(default_factory=dict,
                                      description="teacher class -> student class (training only)")
    calibration: CalibrationConfig | None = None
    lm: LMTargetsConfig | None = Field(None, description="causal-lm: sparse per-token targets")
    trust_remote_code: bool = Field(False, description="run the custom model code a folder's "
                                                       "config.json names in auto_map")

    @model_validator(mode="after")
    def _kind_settings(self) -> "TeacherConfig":
        if self.kind == "classification":
            if self.lm is not None:
                raise ValueError("`lm` is for causal-lm teachers; remove it or set kind: causal-lm")
            return self
        unsupported = [key for key in ("mc_dropout", "features", "calibration")
                       if getattr(self, key) is not None] + (["label_map"] if self.label_map else [])
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)}: not available for causal-lm teachers "
                             "(they cache sparse next-token targets); remove them")
        if self.lm is None:
            self.lm = LMTargetsConfig()
        return self


class StudentConfig(Strict):
    model: str | None = Field(None, description="a checkpoint folder to start from")
    from_teacher: str | None = Field(None, description="initialise by truncating this teacher")
    layers: int | None = Field(None, ge=1, description="with from_teacher: layers to keep")
    pick: Literal["first", "even"] = "even"
    labels: list[str] | None = None
    num_labels: int | None = Field(None, ge=1, description="checked against the label space")
    max_length: int = Field(128, ge=2)


class FeatureLossConfig(Strict):
    """ADM-style feature distillation from cached teacher features (pipeline/features.py)."""

    weight: float = Field(1.0, gt=0, description="added to the logit method's loss with this factor")
    layer: int = Field(-1, description="student hidden-state index")
    consensus: bool = Field(True, description="ADM consensus weights; false = uniform weights")
    tau: float = Field(0.1, gt=0, description="temperature of the consensus softmax over positions")
    distance: Literal["cosine", "mse"] = "cosine"


class TrainConfig(Strict):
    method: str = "mean"
    method_options: dict = Field(default_factory=dict)
    features: FeatureLossConfig | None = None
    temperature: float = Field(2.0, gt=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    head_lr: float | None = Field(None, gt=0, description="learning rate of the new head")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    seed: int = 0
    shuffle_buffer_shards: int = Field(2, ge=1)
    group_by_length: bool = Field(True, description="batches of similar text length pad less")
    checkpoint_every: int = Field(0, ge=0, description="steps; 0 = only at the end")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    ce_weight: float = Field(0.0, ge=0, le=1, description="causal-lm: weight of cross-entropy on "
                                                          "the text, mixed with the distillation loss")
    output: str = "runs/student"


class TaskConfig(Strict):
    """One task of continual distillation: its corpus slice and the student classes it brings."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    corpus: CorpusConfig
    labels: list[str] = Field(min_length=1, description="this task's classes, disjoint from the "
                                                         "other tasks'")


class ContinualConfig(Strict):
    """How the student learns the tasks (pipeline/continual): CDL-Prompt or a baseline."""

    mode: Literal["prompts", "finetune", "joint"] = Field(
        "prompts", description="prompts: L2P pool, frozen backbone (CDL); finetune: sequential "
                               "full fine-tuning; joint: all tasks at once (upper bound)")
    pool_size: int = Field(10, ge=1)
    prompt_length: int = Field(5, ge=1)
    top_k: int = Field(5, ge=1, description="prompts selected per input")
    match_weight: float = Field(0.1, ge=0, description="weight of the key-query matching loss")
    ce_weight: float = Field(0.5, ge=0, le=1, description="CE on the teacher argmax; the KL term "
                                                          "gets 1 - ce_weight")
    map_teacher_prompts: bool = Field(
        True, description="prompts mode: map the cached prompt vectors of prompt-based teachers "
                          "into the student (CDL-Prompt v1); false: logits only")
    mapping_components: int = Field(100, ge=1, description="components of each teacher's mapping")
    mapping_length: int = Field(8, ge=1, description="prompt vectors each mapping inserts")


class EvalConfig(Strict):
    path: str
    text_column: str = "text"
    label_column: str = "label"


class ScheduleConfig(Strict):
    """What `distill serve` registers (flows/serve.py): caching on a cron schedule, and training
    that starts by itself once every teacher's cache of the corpus (or of every task) is complete."""

    cron: str = Field(description="when to run the caching flow, e.g. '0 2 * * *' (nightly at 2)")
    timezone: str = "UTC"
    train_methods: list[str] | None = Field(
        None, description="one triggered training deployment per method; default [train.method] "
                          "(with `tasks`: the continual student); [] = cache only")


class RunnerConfig(Strict):
    """Where `distill cache` runs its shard tasks (flows/runners.py): threads in this process,
    or the processes of a Ray or Dask cluster; and, without a cluster, which devices teachers
    are spread over (flows/devices.py)."""

    kind: Literal["threads", "ray", "dask"] = "threads"
    address: str | None = Field(None, description="an existing Ray/Dask cluster; none starts a "
                                                   "local one for the run")
    workers: int = Field(2, ge=1, description="threads per teacher, or the worker processes of "
                                              "a local Ray/Dask cluster")
    shard_resources: dict[str, Any] = Field(
        default_factory=dict, description="per shard task: Ray options ({num_gpus: 1}) or Dask "
                                          "worker resources ({GPU: 1})")
    devices: list[str] | None = Field(None, min_length=1, description="threads only: teachers "
                                      "side by side, one per device at a time (cuda:0, cuda:1)")

    @model_validator(mode="after")
    def _fits_kind(self) -> "RunnerConfig":
        if self.kind == "threads" and (self.address or self.shard_resources):
            raise ValueError("address and shard_resources are for kind: ray or dask; threads run "
                             "in this process")
        if self.devices and self.kind != "threads":
            raise ValueError(f"devices is for kind: threads; with {self.kind}, request a GPU per "
                             "shard in shard_resources instead (e.g. {num_gpus: 1} for Ray)")
        if self.devices and len(set(self.devices)) < len(self.devices):
            raise ValueError(f"devices lists a device twice ({', '.join(self.devices)}); list "
                             "each once: one teacher runs on a device at a time")
        return self


class DistillConfig(Strict):
    cache: str = "./cache"
    corpus: CorpusConfig | None = None
    tasks: list[TaskConfig] | None = Field(None, min_length=1)
    continual: ContinualConfig | None = None
    teachers: list[TeacherConfig] = Field(min_length=1)
    student: StudentConfig | None = None
    train: TrainConfig | None = None
    eval: EvalConfig | None = None
    schedule: ScheduleConfig | None = None
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    source: str = Field("<memory>", exclude=True, description="the file this was read from")

    @field_validator("teachers")
    @classmethod
    def _unique_names(cls, teachers: list[TeacherConfig]) -> list[TeacherConfig]:
        names = [t.name for t in teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"teacher names must be unique; repeated: {', '.join(dupes)}")
        return teachers

    def teacher(self, name: str) -> TeacherConfig:
        for t in self.teachers:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.teachers)
        raise ConfigError(f"{self.source}: no teacher named '{name}' (teachers: {known})")

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks or []:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.tasks or []) or "none; add a `tasks` list"
        raise ConfigError(f"{self.source}: no task named '{name}' (tasks: {known})")

    def for_task(self, name: str) -> DistillConfig:
        """This config with task `name`'s corpus slice as its corpus: caching it and opening its
        caches are then the ordinary single-corpus flows (each task gets its own plan)."""
        return self.model_copy(update={"corpus": self.task(name).corpus})


def load_config(path: str | Path) -> DistillConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (cache, corpus, teachers, ...)")
    return parse_config(raw, source=str(path), base=path.parent)


def parse_config(raw: dict, *, source: str = "<memory>", base: Path | None = None) -> DistillConfig:
    if ("corpus" in raw) == ("tasks" in raw):
        raise ConfigError(f"{source}: invalid config\n  " + (
            "corpus: required key is missing (or give `tasks` for continual distillation)"
            if "corpus" not in raw else "corpus and tasks: give one; with `tasks` each task "
                                        "brings its own corpus (tasks[].corpus)"))
    try:
        config = DistillConfig.model_validate({**raw, "source": source})
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None
    _check_tasks(config)
    return _resolve_paths(config, base) if base is not None else config


def _check_tasks(config: DistillConfig) -> None:
    """Class-incremental tasks: unique names, disjoint label sets, a pool that can fill top_k."""
    where = config.source
    if config.tasks is None:
        if config.continual is not None:
            raise ConfigError(f"{where}: continual: needs a `tasks` list (and no top-level corpus)")
        return
    owner: dict[str, str] = {}
    names: set[str] = set()
    for task in config.tasks:
        if task.name in names:
            raise ConfigError(f"{where}: tasks: the name '{task.name}' is used twice; rename one")
        names.add(task.name)
        for label in task.labels:
            if label in owner:
                raise ConfigError(f"{where}: tasks[{task.name}].labels: '{label}' is already a label "
                                  f"of task '{owner[label]}'; tasks need disjoint label sets")
            owner[label] = task.name
    if config.student and config.student.labels:
        raise ConfigError(f"{where}: student.labels: leave it out with tasks; the student's classes "
                          "are the tasks' labels in task order")
    continual = config.continual or ContinualConfig()
    if continual.top_k > continual.pool_size:
        raise ConfigError(f"{where}: continual.top_k ({continual.top_k}) exceeds continual.pool_size "
                          f"({continual.pool_size}); lower top_k or grow the pool")


def eval_corpus_config(config: DistillConfig) -> DistillConfig:
    """The config with the labelled `eval` file as its corpus, so the caching flow runs the
    teachers over it. Only logits are needed, so MC dropout and features are left out."""
    if config.eval is None:
        raise ConfigError(f"{config.source}: calibration needs a labelled held-out set; add "
                          "`eval: {path: ..., label_column: label}`")
    # A continual config has no top-level corpus (each task has its own, and `for_task` sets it):
    # start from defaults, so every task's caching run and the trainer find one eval plan.
    base = None if config.tasks else config.corpus
    corpus = (base or CorpusConfig(path=config.eval.path)).model_copy(
        update={"path": config.eval.path, "text_column": config.eval.text_column})
    teachers = [t.model_copy(update={"mc_dropout": None, "features": None, "calibration": None})
                for t in config.teachers]
    return config.model_copy(update={"corpus": corpus, "teachers": teachers})


def with_runner(config: DistillConfig, **overrides) -> DistillConfig:
    """`config` with command-line overrides of its `runner` section (None: keep the file's),
    checked like the file."""
    updates = {k: v for k, v in overrides.items() if v is not None}
    if not updates:
        return config
    try:
        runner = RunnerConfig.model_validate({**config.runner.model_dump(exclude_unset=True), **updates})
    except ValidationError as e:
        raise ConfigError(_explain(e, f"{config.source} with the command-line options",
                                   prefix=("runner",))) from None
    return config.model_copy(update={"runner": runner})


def _explain(error: ValidationError, source: str, prefix: tuple = ()) -> str:
    lines = [f"{source}: invalid config"]
    for err in error.errors():
        key = ".".join(str(p) for p in prefix + err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; remove it or check its spelling "
                         "(see the config reference, docs/config.md)")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _is_url(value: str) -> bool:
    return "://" in value


def _resolve_model(value: str, base: Path) -> str:
    """A model is a local folder (relative to the config) or else a hub id like org/name."""
    if _is_url(value) or Path(value).is_absolute():
        return value
    candidate = base / value
    return str(candidate.resolve()) if candidate.exists() or value.startswith(".") else value


def _resolve_path(value: str, base: Path) -> str:
    return value if _is_url(value) else str((base / value).resolve())


def _resolve_paths(config: DistillConfig, base: Path) -> DistillConfig:
    config.cache = _resolve_path(config.cache, base)
    for corpus in [config.corpus] + [t.corpus for t in config.tasks or []]:
        if corpus is not None:
            corpus.path = _resolve_path(corpus.path, base)
    for t in config.teachers:
        t.model = _resolve_model(t.model, base)
    if config.student and config.student.model:
        config.student.model = _resolve_model(config.student.model, base)
    if config.train:
        config.train.output = str((base / config.train.output).resolve())
    if config.eval:
        config.eval.path = _resolve_path(config.eval.path, base)
    return config


def write_calibration(path: str | Path, fits: dict[str, tuple[float, float]]) -> None:
    """Record fitted (scale, bias) pairs as `teachers[].calibration` in the YAML file at `path`
    (re-validated before it is replaced; comments do not survive a YAML round trip)."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    for teacher in raw["teachers"]:
        if teacher.get("name") in fits:
            scale, bias = fits[teacher["name"]]
            teacher["calibration"] = {"scale": float(scale), "bias": float(bias)}
    parse_config(raw, source=str(path))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(path)
