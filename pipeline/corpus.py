"""Read any corpus Hugging Face `datasets` can load and turn it into a cache plan.

Files are read in streaming mode: nothing is copied into the `datasets` cache and memory stays
flat however large the corpus is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from distill.pipeline.config import ConfigError, CorpusConfig
from distill.storage.cache import Cache
from distill.storage.plan import Pair, build_plan, plan_id_of
from distill.storage.records import Plan

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
            ".txt": "text", ".arrow": "arrow"}


def load_rows(corpus: CorpusConfig) -> Iterator[tuple[int, object]]:
    """Yield (row number, value of the text column) for every row, in corpus order; for a pair
    corpus the value is a `Pair` (text, pair, group). A row without a group is refused: it
    cannot be ranked with any other, and guessing one would mix queries."""
    dataset = open_dataset(corpus.path, corpus.split)
    wanted = [(corpus.text_column, "text_column"), (corpus.pair_column, "pair_column"),
              (corpus.group_column, "group_column")]
    first = True
    for row, example in enumerate(dataset):
        for column, key in wanted if first else ():
            if column is not None and column not in example:
                raise ConfigError(
                    f"{corpus.path}: no column '{column}' (columns: {', '.join(example)}). Set "
                    f"{corpus._section}.{key} in the config to one of them.")
        first = False
        if corpus.pair_column is None:
            yield row, example.get(corpus.text_column)
            continue
        group = example.get(corpus.group_column) if corpus.group_column else None
        if corpus.group_column and (group is None or not str(group).strip()):
            raise ConfigError(f"{corpus.path} row {row}: no value in the group column "
                              f"'{corpus.group_column}'; give every pair its query group")
        yield row, Pair(example.get(corpus.text_column), example.get(corpus.pair_column),
                        "" if group is None else str(group))


def open_dataset(source: str, split: str = "train"):
    """A `datasets` dataset over a file, a folder of files or a saved dataset (streamed)."""
    import datasets

    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Point it at a jsonl, csv, "
                          "parquet or text file, a folder of them, or a saved dataset.")
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(f"{path}: no split '{split}' (splits: "
                                  f"{', '.join(loaded)}). Set corpus.split.")
            loaded = loaded[split]
        return loaded
    files = data_files(path)
    builder = BUILDERS[files[0].suffix]
    options = {"delimiter": "\t"} if files[0].suffix == ".tsv" else {}
    return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                                 streaming=True, **options)


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def data_files(path: Path) -> list[Path]:
    """The files of a corpus file or folder, all of one kind and not all empty (`datasets`
    fails on an empty file with a bare StopIteration)."""
    files = sorted(p for p in path.iterdir() if p.suffix in BUILDERS) if path.is_dir() else [path]
    kinds = {BUILDERS.get(p.suffix) for p in files}
    if not files or None in kinds or len(kinds) != 1:
        raise ConfigError(f"cannot tell how to read {path}; use one kind of file "
                          f"among {', '.join(BUILDERS)} or a saved `datasets` directory")
    if not any(p.stat().st_size for p in files):
        raise ConfigError(f"{path} is empty; point corpus.path at a corpus with text")
    return files


def plan_corpus(cache: Cache, corpus: CorpusConfig, progress=None) -> Plan:
    """Build (or find) the plan for this corpus and sharding in the cache."""
    return build_plan(cache, load_rows(corpus), source=corpus.path, text_column=corpus.text_column,
                      rows_per_shard=corpus.rows_per_shard, progress=progress,
                      pair_column=corpus.pair_column, group_column=corpus.group_column)


def corpus_plan_id(corpus: CorpusConfig) -> str:
    """The id of this corpus's plan (one pass over its text; nothing is written).

    Remembered for the life of the process while the corpus files are unchanged, because a
    `distill serve` worker asks after every finished cache whether a config's caches are
    complete, and one pass over a large corpus each time would dominate. "Unchanged" is judged
    by each file's inode, size, mtime and ctime: an edit in place changes ctime, which no user
    call can set back, so an edited corpus is always read again."""
    key = (corpus.model_dump_json(), _files_state(Path(corpus.path)))
    if key not in _PLAN_IDS:
        _PLAN_IDS[key] = plan_id_of(load_rows(corpus), corpus.rows_per_shard)
    return _PLAN_IDS[key]


_PLAN_IDS: dict[tuple, str] = {}


def _files_state(path: Path) -> tuple:
    """(name, inode, size, mtime, ctime) of every file making up the corpus at `path`."""
    if not path.exists():
        return ()  # load_rows says so
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p), *((s := p.stat()).st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
                 for p in files)
