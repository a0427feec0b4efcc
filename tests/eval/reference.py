"""The official MathVista outputs (fixtures/mathvista_reference) as eval sees them.

`benchmark_file` writes testmini in the published parquet layout; `replay_extractions` is
the answer function of a chat server that plays GPT's part with the official extractions:
it finds the response the official extraction prompt carries and answers with what GPT
answered for it. Shared by the parity tests and `bench/eval_parity.py`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.eval.fixtures import FIXTURES

REFERENCE = FIXTURES / "mathvista_reference"
MODELS = (
    "bard",
    "chatgpt_2shot_solution",
    "claude_2shot_solution",
    "gpt4_2shot_solution",
    "llava_llama_2_13b",
)
EXTRACTION_SUFFIX = "\n\nExtracted answer: "


def read(name: str) -> Any:
    with gzip.open(REFERENCE / f"{name}.json.gz", "rt", encoding="utf-8") as f:
        return json.load(f)


def benchmark_file(folder: Path) -> Path:
    """testmini (1,000 problems) as a parquet in MathVista's published column layout."""
    import pandas as pd

    problems = read("testmini")
    rows = [
        {**{k: p[k] for k in p}, "image": f"images/{pid}.jpg", "precision": p["precision"]}
        for pid, p in problems.items()
    ]
    frame = pd.DataFrame(rows)
    frame["precision"] = frame["precision"].astype("float64")
    path = folder / "mathvista" / "testmini.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def replay_extractions(model: str) -> Callable[[str], str]:
    """prompt -> the official extraction for the (query, response) the prompt ends with."""
    queries = read("query")
    by_tail: dict[str, str] = {}
    for pid, item in read(model)["items"].items():
        by_tail[f"{queries[pid]}\n\n{item['response']}{EXTRACTION_SUFFIX}"] = item["extraction"]
    lengths = sorted({len(k) for k in by_tail}, reverse=True)

    def answer(prompt: str) -> str:
        for length in lengths:
            found = by_tail.get(prompt[-length:])
            if found is not None:
                return found
        raise KeyError(prompt[-200:])

    return answer
