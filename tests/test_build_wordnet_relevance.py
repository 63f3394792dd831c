"""scripts/build_wordnet_relevance.py on a hand-written data.noun in WordNet's format."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "build_wordnet_relevance.py"

LINES = [
    "  1 This software and database is provided by Princeton University  ",
    '00000001 06 n 01 bank 0 000 | sloping land beside a river; "they pulled the canoe up on the bank"',
    '00000002 06 n 02 bank 1 depository_financial_institution 0 000 | a financial institution; '
    '"he cashed a check at the bank"; "that bank holds the mortgage"',
    '00000003 06 n 01 key 0 000 | metal device that opens a lock; "he lost his key"',
    '00000004 06 n 01 key 1 000 | a list of answers; "the key to the test"',
    '00000005 06 n 01 bat 0 000 | a club for hitting a ball; "swing the bat"',
    '00000006 06 n 01 bat 1 000 | a nocturnal flying mammal; "bats sleep by day"',
    *[f"0000001{i} 06 n 01 filler{i} 0 000 | filler sense number {i}" for i in range(8)],
]


def test_queries_rank_every_sense_of_their_word_with_one_relevant(tmp_path):
    (tmp_path / "data.noun").write_text("\n".join(LINES) + "\n", encoding="latin-1")
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(SCRIPT), "--wordnet-dir", str(tmp_path), "--out", str(out),
                    "--list-size", "4"], check=True, capture_output=True)
    rows = {name: [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
            for name in ("teach", "pool", "test")}
    words = {name: {r["word"] for r in split} for name, split in rows.items()}
    assert set().union(*words.values()) == {"bank", "key", "bat"}
    assert not (words["teach"] & words["pool"] or words["teach"] & words["test"]
                or words["pool"] & words["test"])                # no word crosses splits
    every = [r for split in rows.values() for r in split]
    assert len({r["query"] for r in every}) == 7                # each example is one query
    for qid in {r["query_id"] for r in every}:
        group = [r for r in every if r["query_id"] == qid]
        assert len(group) == 4 and sum(r["label"] for r in group) == 1
        relevant = next(r for r in group if r["label"])
        senses = [r for r in group if r["passage"].split(":")[0].split(", ")[0] == r["word"]]
        assert len(senses) == 2                                  # both senses are candidates
        if "canoe" in relevant["query"]:
            assert relevant["passage"] == "bank: sloping land beside a river"
        if "bats sleep" in relevant["query"]:                    # plurals count as the word
            assert relevant["passage"] == "bat: a nocturnal flying mammal"
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(SCRIPT), "--wordnet-dir", str(tmp_path), "--out", str(again),
                    "--list-size", "4"], check=True, capture_output=True)
    assert (again / "test.jsonl").read_bytes() == (out / "test.jsonl").read_bytes()   # deterministic

