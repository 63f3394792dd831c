"""The `distill` command line, run in-process through typer's runner."""

import json
import time
import uuid

import numpy as np
import pytest
from typer.testing import CliRunner

import handmade
import tiny
from distill.flows.cli import app
from distill.pipeline.config import load_config
from distill.pipeline.preflight import check_inputs

runner = CliRunner()


@pytest.mark.usefixtures("prefect")
def test_cache_then_inspect(project):
    config = project.config()
    result = runner.invoke(app, ["cache", str(config), "--teacher", "b"])
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.output and "120" in result.output
    report = json.loads(runner.invoke(app, ["inspect", str(project.cache), "--json"]).output)
    assert [t["name"] for t in report["teachers"]] == ["b"]
    assert report["teachers"][0]["complete"] and report["plans"][0]["rows"] == 120
    text = runner.invoke(app, ["inspect", str(project.cache)]).output
    assert "pairwise" not in text and "yes" in text


def test_cache_with_a_bad_config_exits_2_with_the_key(project):
    result = runner.invoke(app, ["cache", str(project.config(cache_dir="x"))])
    assert result.exit_code == 2
    assert "cache_dir: unknown key" in result.output


def test_inspect_of_a_missing_cache(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.usefixtures("prefect")
def test_a_recached_teacher_then_inspect_by_config_and_gc(project):
    """Teacher `a` re-cached with other weights (second.yaml) next to first.yaml's caches, and a
    stale corpus plan: inspect names each cache apart and follows --config; gc keeps exactly what
    the given configs use."""
    tiny.classifier(project.root / "teacher-c", seed=5)
    first = project.config("first.yaml")
    second = project.config("second.yaml", teachers=[
        {"name": "a", "model": "teacher-c", "max_length": 16, "batch_size": 8}])
    for config in (first, second):
        result = runner.invoke(app, ["cache", str(config)])
        assert result.exit_code == 0, result.output
    stale_cache, stale_plan = handmade.write_plan(project.cache, ["an old corpus"], 1)
    stale = handmade.write_teacher(stale_cache, stale_plan, "a", {"logits": np.zeros((1, 2))},
                                   ["x", "y"])
    (project.cache / "notes.txt").write_text("not a cache")

    def inspect(*args):
        result = runner.invoke(app, ["inspect", str(project.cache), "--json", *map(str, args)])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def model(report, name):
        return next(t for t in report["teachers"] if t["model"].endswith(name))

    newest, used = inspect(), inspect("--config", first)
    old_id = model(newest, "teacher-a")["teacher_id"]
    assert model(newest, "teacher-c")["view"] == "a"  # the newest, here with the stale corpus's a
    assert model(newest, "teacher-a")["title"] == model(newest, "teacher-a")["view"] == f"a@{old_id[:8]}"
    assert model(used, "teacher-a")["title"] == "a"  # exactly what first.yaml uses
    assert all(t["title"].startswith("a@") for t in used["teachers"] if t["teacher_id"] != old_id
               and t["name"] == "a")
    logits = "SELECT sum(logits[1]) AS s FROM {}"
    assert (inspect("--config", first, "--sql", logits.format("a"))
            == inspect("--sql", logits.format(f'"a@{old_id[:8]}"')))
    assert inspect("--sql", logits.format("a")) != inspect("--sql", logits.format(f'"a@{old_id[:8]}"'))

    kept = runner.invoke(app, ["gc", str(first), str(second), "--dry-run"])
    assert kept.exit_code == 0 and "would remove 1 teacher caches and 1 plans" in kept.output
    assert stale.teacher_id in kept.output and stale_plan.plan_id in kept.output
    second_id = model(newest, "teacher-c")["teacher_id"]
    unused = [project.cache / "teachers" / second_id, project.cache / "teachers" / stale.teacher_id,
              project.cache / "corpora" / stale_plan.plan_id]
    before = _files(project.cache)
    dry = runner.invoke(app, ["gc", str(first), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert _files(project.cache) == before  # a dry run removes nothing
    freed = sum(_bytes(folder) for folder in unused)
    for said in (dry.output, (done := runner.invoke(app, ["gc", str(first)])).output):
        assert all(folder.name in said for folder in unused)
        assert "2 teacher caches and 1 plans" in said and f"{freed:,} bytes" in said
    assert done.exit_code == 0 and not any(folder.exists() for folder in unused)
    assert (project.cache / "notes.txt").exists()
    left = inspect()
    assert sorted(t["title"] for t in left["teachers"]) == ["a", "b"]
    assert all(t["complete"] and not t["problems"] for t in left["teachers"])
    assert model(left, "teacher-a")["teacher_id"] == old_id
    again = runner.invoke(app, ["gc", str(first)])
    assert again.exit_code == 0 and "removed 0 teacher caches and 0 plans" in again.output


def test_gc_refuses_other_cache_roots_and_invalid_configs(project):
    cache, plan = handmade.write_plan(project.cache, ["some text"], 1)
    handmade.write_teacher(cache, plan, "a", {"logits": np.zeros((1, 2))}, ["x", "y"])
    before = _files(project.cache)
    config = project.config()
    other = project.config("other.yaml", cache="elsewhere")
    no_model = project.config("no-model.yaml", teachers=[{"name": "a", "model": "./missing"}])
    no_corpus = project.config("no-corpus.yaml", corpus={"path": "missing.jsonl"})
    for configs, message in [([config, other], "different cache roots"),
                             ([config, no_model], "missing does not exist"),
                             ([config, no_corpus], "missing.jsonl does not exist"),
                             ([project.config("bad.yaml", cache_dir="x")], "cache_dir: unknown key")]:
        result = runner.invoke(app, ["gc", *map(str, configs)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert _files(project.cache) == before
    result = runner.invoke(app, ["inspect", str(project.cache), "--config", str(other)])
    assert result.exit_code == 2 and "its cache is" in result.output


def test_gc_on_an_fsspec_url(project):
    """A cache reached by URL (fsspec's in-memory store): the unused plan and teacher go, what
    lies beside and outside the cache root stays."""
    import fsspec

    location = f"memory://gc-{uuid.uuid4().hex[:8]}/cache"
    cache, plan = handmade.write_plan(location, ["some text"], 1)
    stale = handmade.write_teacher(cache, plan, "a", {"logits": np.zeros((1, 2))}, ["x", "y"])
    fs = fsspec.filesystem("memory")
    for path in (f"{cache.root}/notes.txt", f"{cache.root.rsplit('/', 1)[0]}/outside.txt"):
        fs.pipe(path, b"keep")
    result = runner.invoke(app, ["gc", str(project.config(cache=location))])
    assert result.exit_code == 0, result.output
    assert stale.teacher_id in result.output and plan.plan_id in result.output
    assert not fs.exists(cache.teacher_dir(stale.teacher_id)) and not fs.exists(cache.plan_dir(plan.plan_id))
    assert fs.cat(f"{cache.root}/notes.txt") == b"keep"
    assert fs.cat(f"{cache.root.rsplit('/', 1)[0]}/outside.txt") == b"keep"


def one_line_error(args: list[str]) -> str:
    """Run a command that must stop at a user error: status 2 and one line, no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_a_missing_corpus_is_reported_before_prefect_starts(project):
    config = project.config(corpus={"path": "nowhere.jsonl"})
    started = time.monotonic()
    line = one_line_error(["cache", str(config)])
    assert time.monotonic() - started < 5  # no Prefect server was started for it
    assert "corpus.path" in line and "nowhere.jsonl does not exist" in line
    verbose = runner.invoke(app, ["cache", str(config), "-v"])
    assert verbose.exit_code == 2 and "Traceback" in verbose.output


def test_an_empty_corpus_is_one_line(project):
    project.corpus.write_text("")
    assert "is empty" in one_line_error(["cache", str(project.config())])


def test_a_missing_model_folder_is_reported_before_prefect_starts(project):
    config = project.config(teachers=[{"name": "a", "model": "./teacher-z"}])
    assert "teacher-z does not exist" in one_line_error(["cache", str(config)])


def test_custom_model_code_is_refused_unless_trusted(project):
    settings = project.root / "teacher-a" / "config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()),
                                    "auto_map": {"AutoConfig": "custom.Config"}}))
    line = one_line_error(["cache", str(project.config()), "--teacher", "a"])
    assert "auto_map" in line and "teachers[a].trust_remote_code: true" in line
    trusted = project.config(teachers=[{"name": "a", "model": "teacher-a", "trust_remote_code": True}])
    check_inputs(load_config(trusted))  # allowed once the config says so


def test_an_unknown_method_is_one_line(project):
    assert "--method" in one_line_error(["train", str(project.config()), "--method", "nope"])


def test_a_student_with_more_layers_than_its_teacher_is_one_line(project):
    config = project.config(student={"from_teacher": "a", "layers": 99})
    assert "student.layers: 99 exceeds" in one_line_error(["train", str(config)])


@pytest.mark.parametrize("option", ["--plots", "--html"])
def test_inspect_into_an_unwritable_path_is_one_line(tmp_path, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_line_error(["inspect", str(tmp_path), option, str(blocker / "out" / "report.html")])
    assert option in line and "not a writable folder" in line


def test_a_label_map_of_unknown_classes_is_refused_before_prefect_starts(project):
    config = project.config(teachers=[{"name": "a", "model": "teacher-a",
                                       "label_map": {"class0": "x", "clas1": "y"}}])
    started = time.monotonic()
    line = one_line_error(["train", str(config)])
    assert time.monotonic() - started < 5  # no Prefect server was started for it
    assert str(config) in line and "teachers[a].label_map: no class 'clas1' in teacher 'a'" in line
    assert "'class0', 'class1', 'class2', 'class3'" in line


BLANK_ROWS = [{"text": "  "}, {"text": ""}, {"text": None}, {"text": 7}, {"other": "words"}]


def _blank_corpus(folder, kind: str):
    """The rows of BLANK_ROWS, none of which is a sample, as a corpus file of `kind`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"blank.{kind}"
    if kind == "jsonl":
        tiny.write_jsonl(path, BLANK_ROWS * 2000)
    elif kind == "parquet":
        pq.write_table(pa.table({"text": [" ", "", None], "other": ["a", "b", "c"]}), path)
    elif kind == "txt":
        path.write_text("\n  \n\t\n")
    else:
        sep = "\t" if kind == "tsv" else ","
        path.write_text(f"other{sep}text\nwords{sep}\nmore{sep}\"  \"\n")
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "tsv", "txt", "parquet"])
def test_a_corpus_without_text_is_refused_before_prefect_starts(project, kind):
    config = project.config(corpus={"path": _blank_corpus(project.root, kind).name})
    started = time.monotonic()
    line = one_line_error(["cache", str(config)])
    assert time.monotonic() - started < 2
    assert "corpus.path: no row of" in line and "has text in column 'text'" in line


def test_text_after_blank_rows_or_in_a_file_the_scan_cannot_parse_passes(project):
    blank = _blank_corpus(project.root, "jsonl")
    with blank.open("a") as rows:
        rows.write('{"text": "finally a sentence"}\n')
    (project.root / "array.json").write_text('[{"text": "a JSON document, not lines"}]')
    for path in (blank, project.root / "array.json"):
        check_inputs(load_config(project.config(corpus={"path": path.name})))


@pytest.mark.usefixtures("prefect")
def test_a_local_permission_error_names_the_file_not_s3_credentials(project):
    """The kernel refuses a folder even to root under /sys: the one line names that path,
    where it used to blame S3 credentials for every PermissionError."""
    result = runner.invoke(app, ["cache", str(project.config(cache="/sys/distill-test-cache")),
                                 "--teacher", "a"])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "error: /sys/distill-test-cache" in line and "permission denied" in line, line
    assert "AWS_" not in line and "access denied" not in line


def _flow_runs() -> int:
    import asyncio

    from prefect import get_client

    async def count() -> int:
        async with get_client() as client:
            return len(await client.read_flow_runs())
    return asyncio.run(count())


@pytest.mark.usefixtures("prefect")
def test_a_cache_with_nothing_to_compute_runs_no_flow_and_a_damaged_one_does(project):
    """Every shard published and verified: `distill cache` answers from the files (no flow run,
    no model), with the flow's summary. A truncated shard is not taken for done: the flow runs
    and recomputes it, byte-identical."""
    config = project.config(teachers=[{"name": "a", "model": "teacher-a", "max_length": 16}])
    assert runner.invoke(app, ["cache", str(config)]).exit_code == 0
    shard = sorted((project.cache / "teachers").glob("*/shard-00001.arrow"))[0]
    original = shard.read_bytes()
    runs = _flow_runs()
    again = runner.invoke(app, ["cache", str(config)])
    assert again.exit_code == 0, again.output
    assert _flow_runs() == runs
    row = next(line for line in again.output.splitlines() if line.startswith("│ a "))
    assert [c.strip() for c in row.split("│")[3:8]] == ["120", "3", "0", "0", "0"]  # rows shards computed ...
    shard.write_bytes(original[:-10])
    repaired = runner.invoke(app, ["cache", str(config)])
    assert repaired.exit_code == 0, repaired.output
    assert _flow_runs() > runs and shard.read_bytes() == original
