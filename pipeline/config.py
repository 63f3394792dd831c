"""The one YAML config, validated with pydantic; docs/config.md is generated from these models
(python -m distill.pipeline.config_docs).

Every error names the file, the key and what to do. Relative paths are taken relative to the
config file, so a config and its data can move together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from distill.pipeline.backends import DEFAULT_BACKEND, backend_for
from distill.pipeline.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorpusConfig(Strict):
    # The config section this corpus was read from ("corpus", or "eval" when the labelled eval
    # file is cached as a corpus: eval_corpus_config), so errors name the key to fix.
    _section: str = PrivateAttr("corpus")

    path: str = Field(description="a `.jsonl`/`.json`/`.csv`/`.tsv`/`.parquet`/`.txt`/`.arrow` "
                                  "file, a folder of one kind of them, or a folder written by "
                                  "`datasets`' `save_to_disk`; relative to the config file")
    text_column: str = Field("text", description="the column holding the input text (for pairs: "
                                                 "the first text, e.g. the query)")
    pair_column: str | None = Field(None, description="pair corpora: the column of each row's "
                                                      "second text (e.g. the passage); teachers "
                                                      "and student then read (text, pair) as one "
                                                      "input (see [relevance.md](relevance.md))")
    group_column: str | None = Field(None, description="with `pair_column`: the column naming each "
                                                       "row's query group (e.g. a query id), for "
                                                       "ranking losses and group-aware batching")
    rows_per_shard: int = Field(4096, ge=1, description="rows per shard; fixed by the plan, "
                                                        "shared by every teacher")
    split: str = Field("train", description="split of a saved `DatasetDict`")

    @model_validator(mode="after")
    def _group_needs_pairs(self) -> "CorpusConfig":
        if self.group_column and not self.pair_column:
            raise ValueError("group_column ranks the candidates of a query: set pair_column too "
                             "(the passage column)")
        return self


class MCDropoutConfig(Strict):
    """MC dropout: M passes with dropout on (`model.train()`, so attention dropout too)."""

    passes: int = Field(16, ge=2, description="stochastic forward passes per text")
    seed: int = Field(0, description="seed of the dropout masks (per shard)")


class FeaturesConfig(Strict):
    layer: int = Field(-1, description="hidden-state index; -1 is the last layer")
    pooling: Literal["mean", "token"] = Field("mean", description="`mean`: one vector per text; "
                                                                 "`token`: one per token")
    project_to: int | None = Field(None, ge=1, description="width of a fixed seeded random "
                                                           "projection; none keeps the hidden size")
    seed: int = Field(0, description="seed of the projection")


class BackendOptions(Strict):
    """Options of a backend that runs a converted copy of the teacher (`onnx`)."""

    export_dir: str | None = Field(
        None, description="folder of the exports: one sub-folder per teacher weights and "
                          "`quantize`, made once and reused; relative to the config file. "
                          "Default: `exports/` in a local cache root (required with a remote "
                          "cache)")
    quantize: Literal["int8"] | None = Field(
        None, description="`int8`: onnxruntime dynamic quantization of the exported weights "
                          "(faster on CPU, not the same logits: its measured cost is in "
                          "[backends.md](backends.md)); enters the teacher id")


class CalibrationConfig(Strict):
    """Puts a teacher's logits on the ensemble's scale: logits * scale + bias."""

    scale: float = Field(1.0, description="logits are multiplied by this")
    bias: float = Field(0.0, description="then this is added")


class LMTargetsConfig(Strict):
    """What a causal-LM teacher stores per token (both modes at `temperature`, which training
    then uses: the tail of a top-k list and the draws cannot be re-tempered later)."""

    mode: Literal["top-k", "sampled"] = Field(
        "top-k", description="`top-k`: per token the top-k ids and log-probs plus the log of the "
                             "mass outside them; `sampled`: `samples` draws kept as unique ids "
                             "with counts")
    k: int = Field(32, ge=1, description="top-k: ids and log-probs kept per token")
    samples: int = Field(32, ge=1, le=255, description="sampled: draws per token")
    temperature: float = Field(1.0, gt=0, description="both modes are taken at this temperature, "
                                                      "which training then uses")
    seed: int = Field(0, description="sampled: seed of each text's own generator")


Truncation = Literal["only_second", "longest_first", "only_first"]
TRUNCATION_HELP = ("pair corpora: which text is cut when a pair is longer than `max_length`: "
                   "`only_second` (the passage; a query too long on its own is cut "
                   "`longest_first`, and flagged truncated), `longest_first`, `only_first`")


KIND_HELP = ("`classification`: any `AutoModelForSequenceClassification`; one label = a "
             "relevance/regression score. `causal-lm`: any `AutoModelForCausalLM`, cached as "
             "sparse next-token targets (see [causal-lm.md](causal-lm.md)). Each kind has its own "
             "keys, marked below")


class TeacherBase(Strict):
    """What every kind of teacher has; each kind's section adds its own keys (the teacher
    section is a union tagged by `kind`: `TeacherConfig`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="unique name (letters, digits, `_ . -`)")
    model: str = Field(description="a folder written by `save_pretrained` (relative to the config), "
                                   "or a hub id already in the local Hugging Face cache; never "
                                   "downloaded. A continual student's folder "
                                   "(`prompt_pool.safetensors` beside the weights) is a "
                                   "prompt-based teacher: run with its prompts, also caching its "
                                   "prompt vectors (see [continual.md](continual.md))")
    kind: str = Field(description=KIND_HELP)   # each kind's section narrows it to its literal
    max_length: int = Field(128, ge=2, description="longer texts are truncated, counted per shard "
                                                   "and flagged per row (`truncated`)")
    truncation: Truncation = Field("only_second", description=TRUNCATION_HELP)
    batch_size: int = Field(64, ge=1, description="rows per forward pass (batches are grouped by "
                                                  "length)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="`bfloat16` / `float16` run the forward under autocast")
    device: str = Field("auto", description="`auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`, ...")
    on_nonfinite: Literal["error", "skip"] = Field(
        "error", description="`error`: a NaN/inf output stops the run naming the teacher, shard and "
                             "rows; `skip`: the row's values are stored as null and counted "
                             "(`nonfinite`)")
    trust_remote_code: bool = Field(False, description="run the custom model code a teacher "
                                                       "folder's `config.json` names in `auto_map`; "
                                                       "without it such a teacher is refused")
    backend: str = Field(DEFAULT_BACKEND, description="the inference backend that runs the teacher: "
                                                      "`torch` (PyTorch, Hugging Face "
                                                      "`transformers`) or `onnx` (ONNX Runtime, "
                                                      "classification; see "
                                                      "[backends.md](backends.md)); any other "
                                                      "than torch enters the teacher id (see "
                                                      "[cache-format.md](cache-format.md#backends))")
    backend_options: BackendOptions | None = Field(
        None, description="`onnx` only: where its export is kept (`export_dir`) and `quantize`")

    # The keys that decide the cached values, besides those `output_settings` (pipeline/teacher.py)
    # adds when they differ from their defaults.
    identity_keys: ClassVar[frozenset[str]] = frozenset({"kind", "max_length", "dtype", "on_nonfinite"})

    def for_eval(self) -> "TeacherBase":
        """This teacher as it runs over the `eval` file: what training alone needs is left out."""
        return self.model_copy()


class ClassificationTeacherConfig(TeacherBase):
    kind: Literal["classification"] = Field("classification", description=KIND_HELP)
    logits_dtype: Literal["float32", "float16"] = Field(
        "float32", description="`float16` halves the cache for C >= 2 classes; single scores stay "
                               "float32")
    mc_dropout: MCDropoutConfig | None = Field(
        None, description="MC dropout, e.g. `{passes: 16}`: M passes with dropout on "
                          "(`model.train()`, so attention dropout too); stores mean probabilities, "
                          "normalised entropy and mutual information (MUKA's certainty)")
    features: FeaturesConfig | None = Field(
        None, description="cache hidden states at a layer, mean-pooled or per token, fp16, "
                          "optionally through a fixed seeded random projection (for "
                          "`train.features`)")
    label_map: dict[str, str] = Field(default_factory=dict,
                                      description="rename teacher classes into student classes "
                                                  "(training only; MUKA label subsets); a key "
                                                  "that is not a class of the teacher is refused")
    calibration: CalibrationConfig | None = Field(
        None, description="applied to the teacher's logits before ensembling (training only; "
                          "recorded in the student's report); `distill calibrate --write` fits it")

    identity_keys: ClassVar[frozenset[str]] = TeacherBase.identity_keys | {
        "logits_dtype", "mc_dropout", "features"}

    def for_eval(self) -> "ClassificationTeacherConfig":
        """Only logits are needed over the eval file: no MC dropout, features or calibration."""
        return self.model_copy(update={"mc_dropout": None, "features": None, "calibration": None})


class CausalLMTeacherConfig(TeacherBase):
    kind: Literal["causal-lm"] = Field(description=KIND_HELP)
    lm: LMTargetsConfig = Field(default_factory=LMTargetsConfig,
                                description="sparse per-token targets; `{mode: top-k, k: 32}` "
                                            "when left out")

    identity_keys: ClassVar[frozenset[str]] = TeacherBase.identity_keys | {"lm"}


# The teacher section of each kind (pipeline/kinds/ has the rest of a kind), by its `kind`.
TEACHER_CONFIGS: dict[str, type[TeacherBase]] = {
    "classification": ClassificationTeacherConfig, "causal-lm": CausalLMTeacherConfig}


def _teacher_kind(value: Any) -> str:
    """The tag of a teacher section: its `kind`, `classification` when left out."""
    return value.get("kind", "classification") if isinstance(value, dict) else value.kind


TeacherConfig = Annotated[
    Union[tuple(Annotated[model, Tag(kind)] for kind, model in TEACHER_CONFIGS.items())],
    Discriminator(_teacher_kind)]


def teacher_config(**keys) -> TeacherBase:
    """A teacher section of the kind `keys` name, validated as in a config file."""
    return TypeAdapter(TeacherConfig).validate_python(keys)


class StudentConfig(Strict):
    model: str | None = Field(None, description="start from this checkpoint (a new head is put "
                                                "on for the student's labels); or use "
                                                "`from_teacher`")
    from_teacher: str | None = Field(
        None, description="truncate this teacher to `layers` layers (DistilBERT-style init); its "
                          "classification head rows carry over by label name (after its "
                          "`label_map`), so the student knows the teacher's classes from step 0 "
                          "and only classes the teacher never had start fresh")
    layers: int | None = Field(None, ge=1, description="with `from_teacher`: layers to keep")
    pick: Literal["first", "even"] = Field("even", description="with `from_teacher`: keep the "
                                                              "`first` layers or `even`ly spaced ones")
    labels: list[str] | None = Field(None, description="the student's classes, in order; default: "
                                                       "the union of the teachers' classes")
    num_labels: int | None = Field(None, ge=1, description="optional check against the label space")
    max_length: int = Field(128, ge=2, description="student input length")
    truncation: Truncation = Field("only_second", description=TRUNCATION_HELP)


class FeatureLossConfig(Strict):
    """ADM-style feature distillation from cached teacher features
    (pipeline/kinds/classification/features.py)."""

    weight: float = Field(1.0, gt=0, description="added to the logit method's loss with this factor")
    layer: int = Field(-1, description="student hidden-state index")
    consensus: bool = Field(True, description="ADM consensus weights; false = uniform weights")
    tau: float = Field(0.1, gt=0, description="temperature of the consensus softmax over positions")
    distance: Literal["cosine", "mse"] = Field("cosine", description="1 − cos, or MSE, between the "
                                                                     "projected student and the "
                                                                     "teacher features")


class TrainConfig(Strict):
    method: str = Field("mean", description="`mean`, `median`, `max-confidence`, `single`, `govern`, "
                                            "`muka`; for causal-LM teachers `mean` or `govern` (per "
                                            "token); see [methods.md](methods.md)")
    method_options: dict = Field(default_factory=dict,
                                 description="`single: {teacher: 0}`; `muka: {mode: soft or hard, "
                                             "tau: 0.2, margin_weight: true, normalize: batch or "
                                             "none}`")
    features: FeatureLossConfig | None = Field(
        None, description="add the consensus-weighted feature loss (needs `features` cached for at "
                          "least one teacher; see [methods.md](methods.md))")
    loss: Literal["pointwise", "listwise", "margin_mse"] = Field(
        "pointwise", description="single-score teachers: `pointwise` (MSE per candidate), "
                                 "`listwise` (T²·KL over the softmax of a query group's candidate "
                                 "scores) or `margin_mse` (MSE of score differences over a group's "
                                 "candidate pairs); the last two need `corpus.group_column` (see "
                                 "[relevance.md](relevance.md))")
    temperature: float = Field(2.0, gt=0, description="KD temperature (KL is scaled by T²)")
    epochs: int = Field(3, ge=1, description="passes over the cached rows")
    batch_size: int = Field(32, ge=1, description="rows per step (per process)")
    grad_accumulation: int = Field(1, ge=1, description="batches per optimizer step")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate, linear warmup and decay")
    head_lr: float | None = Field(None, gt=0, description="learning rate of the new classifier "
                                                          "head; default: `lr`")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of the steps spent warming up")
    seed: int = Field(0, description="the epoch order is a function of (seed, epoch): shard order "
                                     "permuted, rows shuffled within windows of "
                                     "`shuffle_buffer_shards` shards")
    shuffle_buffer_shards: int = Field(2, ge=1, description="shards per shuffle window")
    group_by_length: bool = Field(True, description="sort mega-batches of 16 steps by text length "
                                                    "and shuffle the resulting batches: less padding "
                                                    "(WordNet-12 demo student: 59.6 s instead of 75 s "
                                                    "for 150 steps, accuracy 0.877 vs 0.873)")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (always one at "
                                                       "the end)")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="`auto`: bf16 (or fp16) on CUDA, none on CPU")
    ce_weight: float = Field(0.0, ge=0, le=1, description="causal-LM students: loss = (1 − w)·"
                                                          "distillation + w·cross-entropy on the "
                                                          "cached text")
    pack: bool = Field(False, description="causal-LM students: pack each batch's texts into blocks "
                                          "of `student.max_length` tokens (positions restart and "
                                          "no token attends to another text), so less padding is "
                                          "computed; per-token losses are those of the unpacked "
                                          "batch (see [causal-lm.md](causal-lm.md#sequence-packing))")
    output: str = Field("runs/student", description="the run folder: each method's student, report "
                                                    "and checkpoints go to `OUTPUT/METHOD/` (a "
                                                    "continual run writes `OUTPUT/student`, "
                                                    "`OUTPUT/report.json` and "
                                                    "`OUTPUT/checkpoints/`)")


class TaskConfig(Strict):
    """One task of continual distillation: its corpus slice and the student classes it brings."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="unique task name")
    corpus: CorpusConfig = Field(description="the task's corpus slice (same keys as `corpus`)")
    labels: list[str] = Field(min_length=1, description="this task's classes, disjoint from the "
                                                         "other tasks'; the student's classes are "
                                                         "all tasks' labels in task order")


class ContinualConfig(Strict):
    """How the student learns the tasks (pipeline/continual): CDL-Prompt or a baseline."""

    mode: Literal["prompts", "finetune", "joint"] = Field(
        "prompts", description="`prompts` (CDL-Prompt: L2P pool, frozen backbone), `finetune` "
                               "(sequential, whole model, no prompts), `joint` (all tasks at once, "
                               "the upper bound)")
    pool_size: int = Field(10, ge=1, description="L2P pool: prompts in the pool")
    prompt_length: int = Field(5, ge=1, description="vectors per prompt")
    top_k: int = Field(5, ge=1, description="prompts selected per input (`top_k` × `prompt_length` "
                                            "slots are added to `student.max_length`)")
    match_weight: float = Field(0.1, ge=0, description="weight of the key–query matching loss")
    ce_weight: float = Field(0.5, ge=0, le=1, description="weight of CE on the teacher argmax (the "
                                                          "T²·KL term gets 1 − `ce_weight`)")
    map_teacher_prompts: bool = Field(
        True, description="`prompts` mode: map the cached prompt vectors of prompt-based teachers "
                          "into the student (CDL-Prompt v1); such a student needs them for every "
                          "input (see [continual.md](continual.md)). `false`: logits only")
    mapping_components: int = Field(100, ge=1, description="per mapped teacher: components of its "
                                                           "attention-based mapping")
    mapping_length: int = Field(8, ge=1, description="per mapped teacher: prompt vectors it inserts "
                                                     "(added to the positions, like the pool's)")


class EvalConfig(Strict):
    """The held-out set: labelled for class teachers, plain text for causal-LM teachers."""

    path: str = Field(description="the file (any corpus format), relative to the config")
    text_column: str = Field("text", description="the column holding the input text")
    pair_column: str | None = Field(None, description="the second text of a pair corpus (as "
                                                      "`corpus.pair_column`)")
    group_column: str | None = Field(None, description="with `pair_column` and single-score "
                                                       "teachers: the query group; the report then "
                                                       "ranks each group's candidates (MRR@10, "
                                                       "NDCG@10, Recall@k)")
    label_column: str = Field("label", description="the column holding the label (class name or "
                                                   "index; for ranking, binary or graded "
                                                   "relevance: 0, 1, 2, ...)")


class ScheduleConfig(Strict):
    """What `distill serve` registers (flows/serve.py): caching on a cron schedule, and training
    that starts by itself once every teacher's cache of the corpus (or of every task) is complete."""

    cron: str = Field(description="when the caching deployment runs, e.g. `0 2 * * *` (nightly at "
                                  "2); required by `distill serve`")
    timezone: str = Field("UTC", description="time zone of `cron`")
    train_methods: list[str] | None = Field(
        None, description="one training deployment per method, each triggered when the caches "
                          "complete; default `[train.method]` (with `tasks`: the continual "
                          "student); `[]` = cache only")


class RunnerConfig(Strict):
    """Where `distill cache` runs its shard tasks (flows/runners.py): threads in this process,
    or the processes of a Ray or Dask cluster; and, without a cluster, which devices teachers
    are spread over (flows/devices.py)."""

    kind: Literal["threads", "ray", "dask"] = Field(
        "threads", description="where shard tasks run: `threads` in the caching process, or the "
                               "workers of a `ray` or `dask` cluster (see "
                               "[scaling.md](scaling.md#task-runners))")
    address: str | None = Field(None, description="an existing Ray (`host:6379`, `ray://host:10001`, "
                                                   "`auto`) or Dask (`tcp://host:8786`) cluster; none "
                                                   "starts a local one for the run")
    workers: int = Field(2, ge=1, description="shard threads per teacher, or the worker processes of "
                                              "a local Ray/Dask cluster")
    shard_resources: dict[str, Any] = Field(
        default_factory=dict, description="what each shard task asks of a worker: Ray remote "
                                          "options (`{num_gpus: 1}`, `{resources: {...}}`, "
                                          "`max_calls`), or Dask worker resources (`{GPU: 1}`)")
    devices: list[str] | None = Field(None, min_length=1, description="threads only: teachers side "
                                      "by side, one per device at a time (`[cuda:0, cuda:1]`); each "
                                      "teacher's `device` is replaced by the one it gets")

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
    cache: str = Field("./cache", description="cache root: a path (relative to the config file) or "
                                              "an fsspec URL such as `s3://bucket/prefix`")
    corpus: CorpusConfig | None = Field(None, description="the unlabelled corpus; required unless "
                                                          "`tasks` is given")
    tasks: list[TaskConfig] | None = Field(None, min_length=1, description=(
        "continual distillation, instead of the top-level `corpus`: tasks in arrival order, each "
        "with its own corpus section and its classes (see [continual.md](continual.md))"))
    continual: ContinualConfig | None = Field(None, description="with `tasks`: how the student "
                                                                "learns them")
    teachers: list[TeacherConfig] = Field(min_length=1, description="the teachers, each cached once "
                                                                    "per corpus")
    student: StudentConfig | None = Field(None, description="the student to train: `model`, or "
                                                            "`from_teacher` with `layers`")
    train: TrainConfig | None = Field(None, description="how `distill train` trains the student")
    eval: EvalConfig | None = Field(None, description=(
        "optional labelled set for accuracy and macro-F1 of the student, each teacher and their "
        "ensemble (`distill cache` also caches every teacher over it); for causal-LM teachers "
        "plain held-out "
        "text (no labels), which `distill cache` also caches so the student is compared with the "
        "teachers without loading them (as it does for prompt-based teachers of a continual "
        "config whose student maps their prompts); for class teachers also the held-out set of "
        "`distill calibrate`"))
    schedule: ScheduleConfig | None = Field(None, description="what `distill serve` schedules")
    runner: RunnerConfig = Field(default_factory=RunnerConfig,
                                 description="where `distill cache` runs its shard tasks")
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
    for teacher in config.teachers:  # prompt-based teachers are known by their files: pre-flight
        if backend_for(teacher, teacher.kind, source).prepare:
            _default_export_dir(teacher, config.cache, source)
    _check_tasks(config)
    return _resolve_paths(config, base) if base is not None else config


def _default_export_dir(teacher: TeacherConfig, cache: str, where: str) -> None:
    """A backend that converts the teacher keeps the copy in `exports/` of a local cache root
    unless `backend_options.export_dir` names another folder (a remote cache cannot hold it:
    ONNX Runtime reads a local file)."""
    options = teacher.backend_options or BackendOptions()
    if options.export_dir is None:
        if _is_url(cache):
            raise ConfigError(f"{where}: teachers[{teacher.name}].backend_options.export_dir: "
                              f"required with a remote cache ({cache}); name a local folder")
        options.export_dir = str(Path(cache) / "exports")
    teacher.backend_options = options


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
    """The config with the labelled `eval` file as its corpus (and no `eval` of its own), so the
    caching flow runs the teachers over it. Only logits are needed, so MC dropout and features
    are left out."""
    if config.eval is None:
        raise ConfigError(f"{config.source}: calibration needs a labelled held-out set; add "
                          "`eval: {path: ..., label_column: label}`")
    # A continual config has no top-level corpus (each task has its own, and `for_task` sets it):
    # start from defaults, so every task's caching run and the trainer find one eval plan.
    base = None if config.tasks else config.corpus
    ev = config.eval
    corpus = (base or CorpusConfig(path=ev.path)).model_copy(
        update={"path": ev.path, "text_column": ev.text_column, "pair_column": ev.pair_column,
                "group_column": ev.group_column})
    corpus._section = "eval"
    teachers = [t.for_eval() for t in config.teachers]
    return config.model_copy(update={"corpus": corpus, "teachers": teachers, "eval": None})


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
        loc = prefix + err["loc"]
        kind = next((p for p in loc[:-1] if p in TEACHER_CONFIGS), None)   # a teacher union's tag
        loc = tuple(p for p in loc if p != kind) if kind else loc
        key = ".".join(str(p) for p in loc) or "(top level)"
        others = [k for k, m in TEACHER_CONFIGS.items() if k != kind and loc[-1] in m.model_fields]
        if err["type"] == "extra_forbidden" and kind and others:
            lines.append(f"  {key}: not available for {kind} teachers; remove it or set "
                         f"kind: {others[0]}")
        elif err["type"] == "union_tag_invalid":
            lines.append(f"  {key}.kind: unknown kind {err['ctx']['tag']!r}; choose one of: "
                         f"{', '.join(TEACHER_CONFIGS)}")
        elif err["type"] == "extra_forbidden":
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
        if t.backend_options and t.backend_options.export_dir:
            t.backend_options.export_dir = _resolve_path(t.backend_options.export_dir, base)
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
