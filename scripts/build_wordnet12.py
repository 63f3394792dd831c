#!/usr/bin/env python3
"""Rebuild the WordNet-12 sample kept in `pipeline/demo_data/wordnet12`.

WordNet-12 is 12 noun "supersense" classes of WordNet 3.0 (animal, plant, food, ...). Each
document is one noun synset rendered as "lemma1, lemma2: gloss"; its label is the synset's
lexicographer file (noun.animal, ...). Per class, a seeded draw gives 150 teacher-training
documents, 200 pool documents and 100 test documents, all disjoint. The pool keeps its labels
for evaluation only: distillation never reads them.

The input is Debian's `wordnet-base` package (`apt-get install wordnet-base`), which puts
`data.noun` in /usr/share/wordnet. The output is deterministic: the same data.noun and seed
give the same bytes.

    python scripts/build_wordnet12.py [--wordnet-dir DIR] [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from wordnet import licence_text, synset_lines

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT = REPO / "pipeline" / "demo_data" / "wordnet12"

# Lexicographer file names in lexnames(5WN) order: the file number of a synset indexes this list.
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social
verb.stative verb.weather adj.ppl""".split()

CLASSES = [f"noun.{c}" for c in ("animal plant food artifact person location body substance "
                                 "time feeling communication event").split()]
SPLITS = {"teacher_train": 150, "pool": 200, "test": 100}  # documents per class

README = """# WordNet-12 sample (derived from WordNet 3.0)

Short real English texts with labels, for the demo and `bench/quality.py`. Each line of the
JSON-lines files is one WordNet 3.0 noun synset, `{{"text": "lemma1, lemma2: gloss", "label":
"noun.animal"}}`; the label is the synset's lexicographer file (its supersense).

- `teacher_train.jsonl`: labelled documents to fine-tune the demo teachers, {teacher_train} per
  class.
- `pool.jsonl`: the unlabelled distillation pool, {pool} per class ({feeling_pool} for noun.feeling,
  which has only 428 synsets). Its labels are for evaluation only, never for distillation.
- `test.jsonl`: held-out test documents, {test} per class.
- `labels.json`: the 12 class names, in label-id order.
- `LICENSE.wordnet`: WordNet 3.0's licence, which applies to these texts.

The three splits are disjoint, drawn per class with a seeded RNG from `data.noun` of Debian's
`wordnet-base` package (WordNet 3.0, Princeton University). Rebuilt, byte for byte, with:

    apt-get install wordnet-base
    python scripts/build_wordnet12.py --seed {seed}

WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. See `LICENSE.wordnet`.
"""


def read_synsets(data_noun: Path) -> tuple[list[dict], str]:
    """All noun synsets as {"text", "label"} in file order, and the licence header text."""
    licence: list[str] = []
    docs = [{"text": ", ".join(w.replace("_", " ") for w in lemmas) + ": " + gloss.strip(),
             "label": LEXNAMES[int(fields[1])]}
            for fields, lemmas, gloss in synset_lines(data_noun, licence)]
    return docs, licence_text(licence)


def split(docs: list[dict], seed: int) -> dict[str, list[dict]]:
    """Per class, draw disjoint splits of the sizes in SPLITS; shuffle each split.

    noun.feeling has only 428 synsets (fewer than 450), so a small class fills the teacher and
    test splits first and the pool gets what is left: teachers and the metric keep their sizes.
    """
    rng = random.Random(seed)
    out = {name: [] for name in SPLITS}
    for label in CLASSES:
        members = [d for d in docs if d["label"] == label]
        drawn = rng.sample(members, min(len(members), sum(SPLITS.values())))
        train, test = drawn[:SPLITS["teacher_train"]], drawn[-SPLITS["test"]:]
        pool = drawn[SPLITS["teacher_train"]:-SPLITS["test"]][:SPLITS["pool"]]
        out["teacher_train"] += train
        out["pool"] += pool
        out["test"] += test
    for rows in out.values():
        rng.shuffle(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR,
                        help="folder holding WordNet 3.0's data.noun (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (default: pipeline/demo_data/wordnet12)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data_noun = args.wordnet_dir / "data.noun"
    if not data_noun.exists():
        raise SystemExit(f"{data_noun} not found: install WordNet 3.0 "
                         "(apt-get install wordnet-base) or pass --wordnet-dir")
    docs, licence = read_synsets(data_noun)
    args.out.mkdir(parents=True, exist_ok=True)
    splits = split(docs, args.seed)
    feeling_pool = sum(r["label"] == "noun.feeling" for r in splits["pool"])
    for name, rows in splits.items():
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{name}.jsonl: {len(rows)} documents")
    (args.out / "labels.json").write_text(json.dumps(CLASSES, indent=1) + "\n")
    (args.out / "LICENSE.wordnet").write_text(licence)
    readme = README.format(seed=args.seed, feeling_pool=feeling_pool, **SPLITS)
    (args.out / "README.md").write_text(readme)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
