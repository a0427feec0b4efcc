"""Benchmark adapters: each benchmark's published column layout -> `EvalSample`s.

Users mirror the benchmarks (parquet files as published on the hub, local or `s3://`);
nothing is downloaded at run time. Each adapter names the columns its layout must have,
so a mirror with a renamed or missing column fails with the file and the column named
(`BenchmarkSpec.columns` maps a renamed column back). Rows stream from the file in small
batches (`iter_benchmark`: parquet row batches, a memory-mapped `save_to_disk` folder) and
images stay undecoded until the batch that needs them (`load_images`), so memory does not
grow with the benchmark, and one corrupt image fails one sample, not the run.

Prompts are the official ones where the benchmark publishes them: MathVista's `query`
(hint, question with its unit, lettered choices; `official.mathvista.build_query`),
MathVerse's `query_cot` where the mirror has it.

Layouts (the published testmini/test files):
- MathVista: pid, question, image/decoded_image, choices, unit, precision, answer,
  question_type (multi_choice | free_form), answer_type (integer | float | text | list)
- We-Math: ID, split, knowledge concept, question, option ("A. ..; B. .."), answer (letter),
  image_path, key (2steps_1, 2steps_2, 2steps_multi, 3steps_1, ..)
- MathVerse: sample_index, problem_index, problem_version, question, image, answer,
  question_type (multi-choice | free-form); choices are written inside the question, and
  in `question_for_eval` (which also has them for Vision Only rows, whose question is empty)
- MathVision: id, question, options (list, empty for free-form), image/decoded_image,
  answer (letter or value), solution, level, subject
- synthetic: data_prep's eval set (id, images, problem, answer, category)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from coldstart.common.config import BenchmarkSpec
from coldstart.common.errors import InputError
from coldstart.common.image_io import decode_image
from coldstart.eval.official import mathverse as official_mathverse
from coldstart.eval.official.mathvista import build_query

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
    )  # benchmark-specific scoring/aggregation fields (small: kept per sample for aggregation)
    base_dir: Path | None = None  # relative image paths resolve against the data file's folder
    gold_variants: list[str] = field(default_factory=list)  # other forms of a right answer


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


def _mathvista(row: Mapping[str, Any], where: str) -> EvalSample:
    question_type, answer_type = _text(row["question_type"]), _text(row["answer_type"])
    if question_type not in ("multi_choice", "free_form"):
        raise BenchmarkError(
            f"{where}: question_type {question_type!r} is not multi_choice or free_form"
        )
    choices = [str(c) for c in (row["choices"] or [])] or None
    precision = None if row["precision"] is None else int(float(row["precision"]))
    if question_type == "multi_choice" and not choices:
        raise BenchmarkError(f"{where}: multi_choice question without choices")
    unit = row["unit"] or None
    query = build_query(str(row["question"]), choices, unit, precision, question_type, answer_type)
    info = {
        "question_type": question_type,
        "answer_type": answer_type,
        "precision": precision,
        "unit": _text(unit),
        "choices": choices,
        "answer": str(row["answer"]),  # as published: the official scorer compares strings
        "query": query,
    }
    shown = choices if question_type == "multi_choice" else None
    return EvalSample(
        _text(row.get("pid")), "mathvista", query, [], _text(row["answer"]), shown, info
    )


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
    question = _text(row["question"])
    for_eval = _text(row.get("question_for_eval")) or question
    prompt = _text(row.get("query_cot")) or question or "Solve the problem shown in the image."
    choices = None
    if question_type == "multi-choice":
        choices = mathverse_choices(for_eval) or mathverse_choices(question)
    gold, variants = official_mathverse.gold_forms(_text(row["answer"]), choices)
    return EvalSample(
        id=_text(row["sample_index"]),
        benchmark="mathverse",
        prompt=prompt,
        images=[],
        gold=gold,
        choices=choices,
        info={
            "question_type": question_type,
            "version": _text(row["problem_version"]),
            "problem": _text(row["problem_index"]),
            "answer": _text(row["answer"]),
            "question_for_eval": for_eval,
        },
        gold_variants=variants,
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
        info={
            "level": _text(row.get("level")),
            "subject": _text(row.get("subject")),
            "level_subject": f"{_text(row.get('level'))} {_text(row.get('subject'))}",
        },
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

ROW_BATCH = 64  # rows read from the file at a time


@dataclass
class Table:
    """An opened benchmark file: its columns, and its rows as a stream of small batches."""

    columns: list[str]
    where: str  # the file(s), for messages
    base_dir: Path
    batches: Callable[[], Iterator[list[dict[str, Any]]]]


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

    from coldstart.common.parquet_batches import iter_parquet_batches

    files = _parquet_files(path, split)
    columns: list[str] = []
    for file in files:
        names = pq.read_schema(file).names
        missing = [c for c in needed if c not in names]
        if missing:
            raise _missing(str(file), missing[0], names)
        columns = names

    def batches() -> Iterator[list[dict[str, Any]]]:
        for file in files:
            for batch in iter_parquet_batches(pq.ParquetFile(file), ROW_BATCH):
                yield batch.to_pylist()

    return Table(columns, str(path), path if path.is_dir() else path.parent, batches)


def _read_hf_disk(path: Path, split: str | None, images: Path | None) -> Table:
    """A `save_to_disk` folder: memory-mapped Arrow, read in batches without decoding images
    (data_prep's image keys become the store's encoded images, batch by batch)."""
    import datasets

    from coldstart.common.image_store import store_for

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        name = split or ("test" if "test" in loaded else next(iter(loaded)))
        if name not in loaded:
            raise BenchmarkError(f"{path}: no split {name!r}; splits: {list(loaded)}")
        loaded = loaded[name]
    store = store_for(loaded, images, str(path), BenchmarkError)
    arrow = loaded.with_format("arrow")

    def batches() -> Iterator[list[dict[str, Any]]]:
        for batch in arrow.iter(batch_size=ROW_BATCH):
            rows = batch.to_pylist()
            if store is not None:
                for row in rows:
                    row["images"] = store.encoded_row(row["images"])
            yield rows

    return Table(list(loaded.column_names), str(path), path, batches)


def _missing(where: str, column: str, present: list[str]) -> BenchmarkError:
    return BenchmarkError(
        f"{where}: missing column {column!r} (columns present: {present}); "
        f"rename it, or map it in the benchmark's config: columns: {{{column}: <column in the file>}}"
    )


@dataclass(frozen=True)
class EvalData:
    """data_prep's eval folder (the synthetic benchmark) and the image store its rows' image keys
    point into (data_prep's images/; None for a folder with its images inline)."""

    folder: str | Path
    images: str | Path | None = None


def _local(uri: str, cache_dir: Path, what: str) -> Path:
    """`uri` as a local path: s3:// is downloaded into the cache; a local path must exist."""
    if uri.startswith("s3://"):
        from coldstart.common.storage import materialize

        return Path(materialize(uri, cache_dir / "benchmarks"))
    path = Path(uri).expanduser()
    if not path.exists():
        raise BenchmarkError(f"{what}: {uri} does not exist")
    return path


def read_table(
    uri: str, spec: BenchmarkSpec, cache_dir: Path, images: str | Path | None = None
) -> Table:
    """Open a benchmark mirror: a parquet file/folder or a `save_to_disk` folder, local or s3://
    (`images`: the image store of a data_prep folder that holds image keys)."""
    path = _local(uri, cache_dir, f"benchmark {spec.name!r}")
    if path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    ):
        store = _local(str(images), cache_dir, "image store") if images is not None else None
        return _read_hf_disk(path, spec.split, store)
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


def iter_benchmark(
    spec: BenchmarkSpec, eval_data: EvalData | None, cache_dir: Path
) -> Iterator[EvalSample]:
    """The samples of one benchmark in file order, after `where` and `limit`, read lazily.

    Only a batch of rows is in memory at a time (plus the ids seen, to refuse duplicates);
    the file is checked for its layout's columns before the first sample.
    """
    uri = spec.uri or (str(eval_data.folder) if spec.name == "synthetic" and eval_data else None)
    if uri is None:
        raise BenchmarkError(
            "benchmark 'synthetic' without a uri needs the eval data folder from data_prep"
        )
    layout = LAYOUTS[spec.name]
    table = read_table(uri, spec, cache_dir, eval_data.images if eval_data else None)
    for column in (*layout.required, *spec.where):
        if spec.columns.get(column, column) not in table.columns:
            raise _missing(table.where, spec.columns.get(column, column), table.columns)
    image_column = next(
        (c for c in layout.image_columns if spec.columns.get(c, c) in table.columns), None
    )
    if image_column is None and spec.name != "mathverse":
        raise _missing(table.where, " or ".join(layout.image_columns), table.columns)
    return _samples(spec, layout, table, image_column)


def _samples(
    spec: BenchmarkSpec, layout: Layout, table: Table, image_column: str | None
) -> Iterator[EvalSample]:
    seen: set[str] = set()
    index = -1
    for batch in table.batches():
        for raw in batch:
            index += 1
            row = _renamed(raw, spec.columns)
            if spec.where and not _keep(row, spec.where):
                continue
            where = f"{table.where}: row {index}"
            sample = _sample(layout, row, where, image_column, index, table.base_dir)
            if sample.id in seen:
                raise BenchmarkError(f"{where}: id {sample.id!r} appears more than once")
            seen.add(sample.id)
            yield sample
            if spec.limit and len(seen) >= spec.limit:
                return
    if not seen:
        raise BenchmarkError(
            f"benchmark {spec.name!r}: no rows in {table.where} (after where={spec.where})"
        )
    log.info("benchmark %s: %d samples from %s", spec.name, len(seen), table.where)


def load_benchmark(
    spec: BenchmarkSpec, eval_data: EvalData | None, cache_dir: Path
) -> list[EvalSample]:
    """All samples of one benchmark at once (small benchmarks, tests); `iter_benchmark` streams."""
    return list(iter_benchmark(spec, eval_data, cache_dir))


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


# --------------------------------------------------------------------------- images


def load_images(sample: EvalSample) -> list[Image.Image]:
    """Decode a sample's images; raises ValueError naming the problem (scored as a failed sample)."""
    return [decode_image(value, sample.base_dir) for value in sample.images]
