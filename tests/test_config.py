"""Config validation: every error names the file, the key and what to do."""

import pytest

from distill.pipeline.config import ConfigError, load_config, parse_config


def _write(tmp_path, text):
    path = tmp_path / "distill.yaml"
    path.write_text(text)
    return path


GOOD = """
cache: ./cache
corpus: {path: data/corpus.jsonl, text_column: body, rows_per_shard: 128}
teachers:
  - {name: a, model: models/a, max_length: 64, batch_size: 16, mc_dropout: {passes: 8}}
  - {name: b, model: org/hub-model, kind: classification, logits_dtype: float16}
student: {model: models/s, num_labels: 4}
train: {method: govern, epochs: 1, output: runs/s1}
eval: {path: data/test.jsonl, label_column: label}
"""


def test_paths_resolve_relative_to_the_config_file(tmp_path):
    (tmp_path / "models" / "a").mkdir(parents=True)
    config = load_config(_write(tmp_path, GOOD))
    assert config.cache == str(tmp_path / "cache")
    assert config.corpus.path == str(tmp_path / "data" / "corpus.jsonl")
    assert config.teachers[0].model == str(tmp_path / "models" / "a")
    assert config.teachers[1].model == "org/hub-model"  # not a local path: a hub id
    assert config.teachers[0].mc_dropout.passes == 8 and config.teachers[1].mc_dropout is None
    assert config.train.output == str(tmp_path / "runs" / "s1")


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, GOOD.replace("max_length: 64", "max_lenght: 64"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "teachers.0.max_lenght: unknown key" in str(e.value)


@pytest.mark.parametrize("change, message", [
    ("rows_per_shard: 128", "corpus.rows_per_shard: Input should be greater than or equal to 1"),
    ("passes: 8", "teachers.0.mc_dropout.passes"),
    ("logits_dtype: float16", "teachers.1.logits_dtype"),
    ("name: b", "teacher names must be unique"),
])
def test_bad_values_are_explained(tmp_path, change, message):
    bad = {"rows_per_shard: 128": "rows_per_shard: 0", "passes: 8": "passes: 1",
           "logits_dtype: float16": "logits_dtype: int8", "name: b": "name: a"}[change]
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(_write(tmp_path, GOOD.replace(change, bad)))


def test_missing_keys_and_files(tmp_path):
    with pytest.raises(ConfigError, match="corpus: required key is missing"):
        parse_config({"teachers": [{"name": "a", "model": "m"}]})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "corpus: [unclosed"))


def test_a_label_map_naming_classes_the_cached_teacher_lacks_is_refused():
    """Training checks the map against the classes its cache recorded, whatever pre-flight saw."""
    import pyarrow as pa

    from distill.pipeline.kinds.classification.labels import build_label_space
    from distill.storage import FORMAT_VERSION
    from distill.storage.records import TeacherManifest

    manifest = TeacherManifest(teacher_id="0" * 16, name="a", plan_id="p",
                               format_version=FORMAT_VERSION, code_version="test", fingerprint={},
                               arrow_schema=TeacherManifest.encode_schema(pa.schema([])),
                               settings={"num_labels": 2, "labels": ["neg", "pos"]})
    assert build_label_space([manifest], None, {"a": {"pos": "good"}}).labels == ["neg", "good"]
    with pytest.raises(ConfigError) as e:
        build_label_space([manifest], None, {"a": {"positive": "good", "pos": "ok"}}, "d.yaml")
    assert str(e.value) == ("d.yaml: teachers[a].label_map: no class 'positive' in teacher 'a' "
                            "(its classes: 'neg', 'pos'); map only those")
