#!/usr/bin/env python3
"""Build the WordNet relevance set: query / definition pairs ranked per query, offline.

Queries are WordNet 3.0's usage examples (the quoted sentences in noun glosses). A query's
candidates are the definitions of every noun sense of the word the example uses (hard
negatives: the word's polysemy) plus definitions of other words of the same split drawn at
random, up to a fixed list size. A definition is rendered "lemma1, lemma2: gloss" (the gloss
without its examples). Relevant (label 1) is the sense the example belongs to; every other
candidate is 0. The query words (nouns with two or more senses) are split into teach / pool /
test, so no query word crosses splits; random negatives are drawn only from senses none of
whose lemmas is another split's query word (a hard negative, a sense of the query's own word,
may still list a synonym that is a query word elsewhere).

The input is Debian's `wordnet-base` package (`apt-get install wordnet-base`), which puts
`data.noun` in /usr/share/wordnet. The output is deterministic: the same data.noun, sizes and
seed give the same bytes. Each split is a JSON-lines file with one row per candidate:
`{"query", "passage", "query_id", "label", "word"}`, a query's candidates in a shuffled order.

    python scripts/build_wordnet_relevance.py [--wordnet-dir DIR] [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

from wordnet import licence_text, synset_lines

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT = REPO / "build" / "wordnet-relevance"
SPLITS = {"teach": 0.4, "pool": 0.4, "test": 0.2}        # share of the polysemous words
QUOTED = re.compile(r'"([^"]+)"')


def read_senses(data_noun: Path) -> tuple[list[dict], str]:
    """Every noun synset as {"id", "lemmas", "definition", "examples"}, and the licence text."""
    licence: list[str] = []
    senses = [{"id": fields[0],
               "lemmas": [re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in lemmas],
               "definition": gloss.split('; "')[0].strip().rstrip(";").strip(),
               "examples": [e.strip() for e in QUOTED.findall(gloss) if e.strip()]}
              for fields, lemmas, gloss in synset_lines(data_noun, licence)]
    return senses, licence_text(licence)


def passage(sense: dict) -> str:
    return ", ".join(sense["lemmas"]) + ": " + sense["definition"]


def uses(example: str, word: str) -> bool:
    """Whether `example` uses `word` as a whole word (case-insensitive; plurals with -s/-es)."""
    return re.search(rf"\b{re.escape(word)}(e?s)?\b", example, re.IGNORECASE) is not None


def queries_by_word(senses: list[dict]) -> dict[str, list[tuple[str, dict]]]:
    """word -> [(example, the sense it belongs to)] for words with two or more noun senses,
    where the example uses the word itself (so the query names the word it asks about)."""
    by_word = defaultdict(list)
    for sense in senses:
        for lemma in dict.fromkeys(lemma.lower() for lemma in sense["lemmas"]):
            by_word[lemma].append(sense)
    out = {}
    for word, word_senses in by_word.items():
        if len(word_senses) < 2:
            continue
        found = [(e, s) for s in word_senses for e in s["examples"] if uses(e, word)]
        if found:
            out[word] = found
    return dict(sorted(out.items()))


def build(senses: list[dict], seed: int, list_size: int, max_queries: dict[str, int]) -> dict:
    rng = random.Random(seed)
    by_word = defaultdict(list)
    for sense in senses:
        for lemma in dict.fromkeys(lemma.lower() for lemma in sense["lemmas"]):
            by_word[lemma].append(sense)
    queries = queries_by_word(senses)
    words = list(queries)
    rng.shuffle(words)
    cut, splits, start = {}, {}, 0
    for name, share in SPLITS.items():
        end = start + round(share * len(words)) if name != "test" else len(words)
        cut[name] = words[start:end]
        start = end
    owner = {w: name for name, ws in cut.items() for w in ws}
    for name, split_words in cut.items():
        # random negatives: senses none of whose lemmas is a word of another split
        pool = [s for s in senses if all(owner.get(lemma.lower(), name) == name for lemma in s["lemmas"])]
        rows, asked = [], [(w, e, s) for w in split_words for e, s in queries[w]]
        rng.shuffle(asked)
        for n, (word, example, sense) in enumerate(asked[:max_queries[name]]):
            hard = by_word[word][:list_size]
            if sense not in hard:
                hard = [sense] + hard[:list_size - 1]
            taken = {s["id"] for s in hard}
            extra = []
            while len(hard) + len(extra) < list_size:
                other = rng.choice(pool)
                if other["id"] not in taken:
                    taken.add(other["id"])
                    extra.append(other)
            candidates = hard + extra
            rng.shuffle(candidates)
            rows += [{"query": example, "passage": passage(c), "query_id": f"{name}-{n:05d}",
                      "label": int(c["id"] == sense["id"]), "word": word} for c in candidates]
        splits[name] = rows
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR,
                        help="folder holding WordNet 3.0's data.noun (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list-size", type=int, default=10, help="candidates per query")
    parser.add_argument("--teach", type=int, default=2000, help="queries in teach.jsonl")
    parser.add_argument("--pool", type=int, default=2000, help="queries in pool.jsonl")
    parser.add_argument("--test", type=int, default=500, help="queries in test.jsonl")
    args = parser.parse_args()

    data_noun = args.wordnet_dir / "data.noun"
    if not data_noun.exists():
        raise SystemExit(f"{data_noun} not found: install WordNet 3.0 "
                         "(apt-get install wordnet-base) or pass --wordnet-dir")
    senses, licence = read_senses(data_noun)
    splits = build(senses, args.seed, args.list_size,
                   {"teach": args.teach, "pool": args.pool, "test": args.test})
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        groups = len({r["query_id"] for r in rows})
        words = len({r["word"] for r in rows})
        print(f"{name}.jsonl: {groups} queries, {len(rows)} pairs, {words} words")
    (args.out / "LICENSE.wordnet").write_text(licence)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
