"""Reading WordNet 3.0's `data.noun` (Debian's `wordnet-base`), shared by the build scripts.

One line per synset: `offset lex_filenum ss_type w_cnt word lex_id ... | gloss`, after a
licence header whose lines start with two spaces.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator


def synset_lines(data_noun: Path, licence: list[str]) -> Iterator[tuple[list[str], list[str], str]]:
    """(head fields, lemmas as written, gloss) per synset; the licence header's text is added
    to `licence`. Lemmas keep WordNet's underscores and markers, for the caller to clean."""
    with open(data_noun, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):  # licence header: "  12 text  "
                licence.append(re.sub(r"^\s*\d+ ?", "", line.rstrip()))
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            lemmas = [fields[4 + 2 * i] for i in range(int(fields[3], 16))]
            yield fields, lemmas, gloss


def licence_text(licence: list[str]) -> str:
    return "\n".join(licence).strip() + "\n"
