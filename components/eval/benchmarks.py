"""Benchmark adapters: each benchmark's published column layout -> `EvalSample`s.

Users mirror the benchmarks (parquet files as published on the hub, local or `s3://`);
nothing is downloaded at run time. Each adapter names the columns its layout must have,
so a mirror with a renamed or missing column fails with the file and the column named
(`BenchmarkSpec.columns` maps a renamed column back). Images stay undecoded until the
batch that needs them (`load_images`), so a 4k-row benchmark does not sit in memory as
pixels, and one corrupt image fails one sample, not the run.

Layouts (the published testmini/test files):
- MathVista: pid, question, image/decoded_image, choices, unit, precision, answer,
  question_type (multi_choice | free_form), answer_type (integer | float | text | list)
- We-Math: ID, split, knowledge concept, question, option ("A. ..; B. .."), answer (letter),
  image_path, key (2steps_1, 2steps_2, 2steps_multi, 3steps_1, ..)
- MathVerse: sample_index, problem_index, problem_version, question, image, answer,
  question_type (multi-choice | free-form); choices are written inside the question
- MathVision: id, question, options (list, empty for free-form), image/decoded_image,
  answer (letter or value), solution, level, subject
- synthetic: data_prep's eval set (id, images, problem, answer, category)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from components.common.config import BenchmarkSpec
from components.common.errors import InputError
from components.common.image_io import decode_image

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BenchmarkError(InputError):
    """A benchmark file that does not have its published layout; names the file, row or column."""


@dataclass
class EvalSample:
    """One question as the model sees it, with what scoring needs to judge the answer."""

    id: str
    benchmark: str
    prompt: str
    images: list[Any]  # undecoded: bytes, {bytes, path} dicts, paths or PIL images
    gold: str
    choices: list[str] | None = None  # option texts in letter order (A, B, ...)
    info: dict[str, Any] = field(
        default_factory=dict
    )  # benchmark-specific scoring/aggregation fields
    base_dir: Path | None = None  # relative image paths resolve against the data file's folder


@dataclass(frozen=True)
class Layout:
    display: str
    required: tuple[str, ...]
    image_columns: tuple[str, ...]  # the first one present holds the image(s)
    build: Callable[[Mapping[str, Any], str], EvalSample]


# --------------------------------------------------------------------------- helpers


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def letter_choices(choices: list[str]) -> str:
    """`(A) 3\n(B) 4` - how options are shown in prompts."""
    return "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


_LABEL = r"\(?[A-H]\)?\s*[.:：．、)]"  # an option label: "A.", "(B)", "C:", "D、"
_OPTION_RE = re.compile(
    rf"(?:^|[;\n])\s*\(?([A-H])\)?\s*[.:：．、)]\s*(.*?)\s*(?=[;\n]\s*{_LABEL}|$)", re.DOTALL
)


def parse_options(text: str) -> list[str] | None:
    """Option texts from an inline list ("A. 3cm; B. 4cm" or "A:145°\\nB:165°"); None unless A, B, ... in order.

    >>> parse_options("A. 2cm;B. 3cm; C. No correct answer")
    ['2cm', '3cm', 'No correct answer']
    >>> parse_options("A:145°\\nB:165°"), parse_options("just text") is None
    (['145°', '165°'], True)
    """
    found = _OPTION_RE.findall(text.strip())
    if len(found) < 2 or "".join(letter for letter, _ in found) != LETTERS[: len(found)]:
        return None
    return [option for _, option in found]


def mathverse_choices(question: str) -> list[str] | None:
    """MathVerse writes options into the question after a "Choices:" line.

    >>> mathverse_choices("Find x.\\nChoices:\\nA:145°\\nB:165°")
    ['145°', '165°']
    """
    _, sep, tail = question.rpartition("Choices:")
    return parse_options(tail) if sep else None


# --------------------------------------------------------------------------- adapters


def _synthetic(row: Mapping[str, Any], where: str) -> EvalSample:
    category = _text(row.get("category"))
    return EvalSample(
        id=_text(row["id"]),
        benchmark="synthetic",
        prompt=_text(row["problem"]),
        images=list(row["images"] or []),
        gold=_text(row["answer"]),
        info={"family": category.split("/")[0] if category else ""},
    )


def _mathvista_hint(answer_type: str, precision: int | None) -> str:
    if answer_type == "integer":
        return "Answer with an integer."
    if answer_type == "float":
        places = precision if precision is not None else 1
        return f"Answer with a number with {places} decimal place{'s' if places != 1 else ''}."
    if answer_type == "list":
        return "Answer with a Python list."
    return ""


def _mathvista(row: Mapping[str, Any], where: str) -> EvalSample:
    question_type, answer_type = _text(row["question_type"]), _text(row["answer_type"])
    if question_type not in ("multi_choice", "free_form"):
        raise BenchmarkError(
            f"{where}: question_type {question_type!r} is not multi_choice or free_form"
        )
    choices = [_text(c) for c in (row["choices"] or [])] or None
    precision = None if row["precision"] is None else int(float(row["precision"]))
    gold = _text(row["answer"])
    info = {
        "question_type": question_type,
        "answer_type": answer_type,
        "precision": precision,
        "unit": _text(row["unit"]),
    }
    if question_type == "multi_choice":
        if not choices:
            raise BenchmarkError(f"{where}: multi_choice question without choices")
        if gold in choices:  # the gold answer is the option's text; score by its letter
            gold = LETTERS[choices.index(gold)]
        prompt = f"{_text(row['question'])}\nChoices:\n{letter_choices(choices)}"
    else:
        prompt = " ".join(
            p for p in (_text(row["question"]), _mathvista_hint(answer_type, precision)) if p
        )
    shown = choices if question_type == "multi_choice" else None
    return EvalSample(_text(row.get("pid")), "mathvista", prompt, [], gold, shown, info)


def _wemath(row: Mapping[str, Any], where: str) -> EvalSample:
    key = _text(row["key"])
    steps, _, part = key.partition("_")
    option = _text(row["option"])
    return EvalSample(
        id=f"{key}-{_text(row['ID'])}",
        benchmark="wemath",
        prompt=f"{_text(row['question'])}\nOptions: {option}",
        images=[],
        gold=_text(row["answer"]),
        choices=parse_options(option),
        info={
            "group": f"{steps}-{_text(row['ID'])}",
            "steps": steps,
            "part": part,
            "concept": _text(row.get("knowledge concept")),
        },
    )


def _mathverse(row: Mapping[str, Any], where: str) -> EvalSample:
    question_type = _text(row["question_type"])
    question = _text(row["question"]) or "Solve the problem shown in the image."
    choices = mathverse_choices(question) if question_type == "multi-choice" else None
    return EvalSample(
        id=_text(row["sample_index"]),
        benchmark="mathverse",
        prompt=question,
        images=[],
        gold=_text(row["answer"]),
        choices=choices,
        info={
            "question_type": question_type,
            "version": _text(row["problem_version"]),
            "problem": _text(row["problem_index"]),
        },
    )


def _mathvision(row: Mapping[str, Any], where: str) -> EvalSample:
    options = [_text(o) for o in (row["options"] or [])]
    question = _text(row["question"])
    prompt = f"{question}\nOptions:\n{letter_choices(options)}" if options else question
    return EvalSample(
        id=_text(row["id"]),
        benchmark="mathvision",
        prompt=prompt,
        images=[],
        gold=_text(row["answer"]),
        choices=options or None,
        info={"level": _text(row.get("level")), "subject": _text(row.get("subject"))},
    )


LAYOUTS: dict[str, Layout] = {
    "synthetic": Layout("Synthetic", ("id", "problem", "answer"), ("images",), _synthetic),
    "mathvista": Layout(
        "MathVista",
        ("question", "choices", "unit", "precision", "answer", "question_type", "answer_type"),
        ("decoded_image", "image"),
        _mathvista,
    ),
    "wemath": Layout(
        "We-Math", ("ID", "question", "option", "answer", "key"), ("image_path",), _wemath
    ),
    "mathverse": Layout(
        "MathVerse",
        ("sample_index", "problem_index", "problem_version", "question", "answer", "question_type"),
        ("image",),
        _mathverse,
    ),
    "mathvision": Layout(
        "MathVision",
        ("id", "question", "options", "answer"),
        ("decoded_image", "image"),
        _mathvision,
    ),
}


def display_name(benchmark: str) -> str:
    return LAYOUTS[benchmark].display


# --------------------------------------------------------------------------- files


@dataclass
class Table:
    rows: list[dict[str, Any]]
    columns: list[str]
    where: str  # the file(s), for messages
    base_dir: Path


def _parquet_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet"))
    if split:
        files = [f for f in files if f.name.startswith(split)]
    if not files:
        raise BenchmarkError(
            f"{path}: no *.parquet files{f' starting with {split!r}' if split else ''}"
        )
    return files


def _read_parquet(path: Path, split: str | None, needed: list[str]) -> Table:
    import pyarrow.parquet as pq

    files = _parquet_files(path, split)
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    for file in files:
        names = pq.read_schema(file).names
        missing = [c for c in needed if c not in names]
        if missing:
            raise _missing(str(file), missing[0], names)
        columns = names
        rows.extend(pq.read_table(file).to_pylist())
    return Table(rows, columns, str(path), path if path.is_dir() else path.parent)


def _read_hf_disk(path: Path, split: str | None) -> Table:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        name = split or ("test" if "test" in loaded else next(iter(loaded)))
        if name not in loaded:
            raise BenchmarkError(f"{path}: no split {name!r}; splits: {list(loaded)}")
        loaded = loaded[name]
    return Table(list(loaded), list(loaded.column_names), str(path), path)


def _missing(where: str, column: str, present: list[str]) -> BenchmarkError:
    return BenchmarkError(
        f"{where}: missing column {column!r} (columns present: {present}); "
        f"rename it, or map it in the benchmark's config: columns: {{{column}: <column in the file>}}"
    )


def read_table(uri: str, spec: BenchmarkSpec, cache_dir: Path) -> Table:
    """Open a benchmark mirror: a parquet file/folder or a `save_to_disk` folder, local or s3://."""
    if uri.startswith("s3://"):
        from components.common.storage import materialize

        path = Path(materialize(uri, cache_dir / "benchmarks"))
    else:
        path = Path(uri).expanduser()
        if not path.exists():
            raise BenchmarkError(f"benchmark {spec.name!r}: {uri} does not exist")
    if path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    ):
        return _read_hf_disk(path, spec.split)
    if path.suffix != ".parquet" and not path.is_dir():
        raise BenchmarkError(
            f"benchmark {spec.name!r}: {uri} is neither a .parquet file nor a folder"
        )
    file_columns = [spec.columns.get(c, c) for c in LAYOUTS[spec.name].required]
    return _read_parquet(path, spec.split, file_columns)


# --------------------------------------------------------------------------- loading


def _renamed(row: dict[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    if not columns:
        return row
    out = dict(row)
    for published, actual in columns.items():
        if actual in row:
            out[published] = row[actual]
    return out


def _keep(row: Mapping[str, Any], where: Mapping[str, list[str]]) -> bool:
    return all(
        _text(row.get(column)) in {str(v) for v in values} for column, values in where.items()
    )


def load_benchmark(
    spec: BenchmarkSpec, eval_data_dir: str | Path | None, cache_dir: Path
) -> list[EvalSample]:
    """All samples of one benchmark, in file order, after `where` and `limit`."""
    uri = spec.uri or (str(eval_data_dir) if spec.name == "synthetic" and eval_data_dir else None)
    if uri is None:
        raise BenchmarkError(
            "benchmark 'synthetic' without a uri needs the eval data folder from data_prep"
        )
    layout = LAYOUTS[spec.name]
    table = read_table(uri, spec, cache_dir)
    for column in (*layout.required, *spec.where):
        if spec.columns.get(column, column) not in table.columns:
            raise _missing(table.where, spec.columns.get(column, column), table.columns)
    image_column = next(
        (c for c in layout.image_columns if spec.columns.get(c, c) in table.columns), None
    )
    if image_column is None and spec.name != "mathverse":
        raise _missing(table.where, " or ".join(layout.image_columns), table.columns)
    samples: list[EvalSample] = []
    for index, raw in enumerate(table.rows):
        row = _renamed(raw, spec.columns)
        if spec.where and not _keep(row, spec.where):
            continue
        samples.append(
            _sample(layout, row, f"{table.where}: row {index}", image_column, index, table.base_dir)
        )
        if spec.limit and len(samples) >= spec.limit:
            break
    if not samples:
        raise BenchmarkError(
            f"benchmark {spec.name!r}: no rows in {table.where} (after where={spec.where})"
        )
    _check_unique_ids(samples, table.where)
    log.info("benchmark %s: %d samples from %s", spec.name, len(samples), table.where)
    return samples


def _sample(
    layout: Layout,
    row: Mapping[str, Any],
    where: str,
    image_column: str | None,
    index: int,
    base_dir: Path,
) -> EvalSample:
    sample = layout.build(row, where)
    if not sample.gold:
        raise BenchmarkError(
            f"{where}: empty answer (the MathVista/MathVision 'test' splits have no public answers; use testmini)"
        )
    if not sample.id:
        sample.id = str(index)
    if image_column is not None and image_column != "images":
        value = row.get(image_column)
        sample.images = [] if value in (None, "", b"") else [value]
    sample.base_dir = base_dir
    return sample


def _check_unique_ids(samples: list[EvalSample], where: str) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise BenchmarkError(f"{where}: id {sample.id!r} appears more than once")
        seen.add(sample.id)


# --------------------------------------------------------------------------- images


def load_images(sample: EvalSample) -> list[Image.Image]:
    """Decode a sample's images; raises ValueError naming the problem (scored as a failed sample)."""
    return [decode_image(value, sample.base_dir) for value in sample.images]
