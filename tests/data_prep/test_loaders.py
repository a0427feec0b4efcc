"""Users' files: parquet, jsonl (image paths), save_to_disk folders; bad rows named by file and row."""

import io
import json

import datasets
import pytest
from PIL import Image

from coldstart.common.config import DataConfig, config_from_dict
from coldstart.common.image_io import decode_image
from coldstart.common.image_store import ImageStore
from coldstart.common.saved_datasets import load_with_images
from coldstart.data_prep.arrow_files import part_path, read_rows
from coldstart.data_prep.records import DataError, fit_pixels
from coldstart.data_prep.shard import prepare_shard
from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep


def png(color: str, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


GOOD = [
    {"q": "How many red?", "a": "3", "img": png("red")},
    {"q": "How many blue?", "a": "4", "img": png("blue")},
]


def write_parquet(path, rows):
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


class Stats:
    skipped = 0


def load(
    uri,
    fmt="auto",
    skip=False,
    needs_solution=False,
    columns=None,
    stats=None,
    tmp=None,
    split=None,
):
    """The records one source yields (as the SFT split when it needs a solution), images decoded."""
    source = {
        "uri": str(uri),
        "format": fmt,
        "split": split,
        "columns": {"problem": "q", "answer": "a", "images": "img"} if columns is None else columns,
    }
    name = "sft" if needs_solution else "rl"
    data = DataConfig(source="files", skip_invalid=skip, num_proc=1, **{f"{name}_files": [source]})
    counts = prepare_shard(data, 0, 1, tmp / "shard", tmp)
    if stats is not None:
        stats.skipped = counts["skipped_invalid"]
    rows = list(read_rows(part_path(tmp / "shard", name)))
    return [dict(r, images=[decode_image(i, None) for i in r["images"]]) for r in rows]


def test_parquet_with_column_mapping_and_resize(tmp_path):
    records = load(write_parquet(tmp_path / "d.parquet", GOOD), tmp=tmp_path)
    assert [r["problem"] for r in records] == ["How many red?", "How many blue?"]
    w, h = records[0]["images"][0].size
    assert 3136 <= w * h <= 12544 and abs(w / h - 40 / 30) < 0.1
    assert records[1]["id"] == "d.parquet-1"


def test_jsonl_with_relative_image_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (80, 80), "green").save(tmp_path / "imgs" / "a.png")
    rows = [
        {"problem": "P?", "answer": "1", "images": ["imgs/a.png"], "solution": "think \\boxed{1}"}
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (record,) = load(tmp_path / "d.jsonl", columns={}, needs_solution=True, tmp=tmp_path)
    assert record["solution"] == "think \\boxed{1}" and record["images"][0].size == (80, 80)


def test_hf_disk_datasetdict_with_image_feature(tmp_path):
    table = datasets.Dataset.from_dict(
        {"problem": ["A?"], "answer": ["B"], "images": [[Image.new("RGB", (60, 60))]]},
        features=datasets.Features(
            {
                "problem": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "images": datasets.List(datasets.Image()),
            }
        ),
    )
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "ds"))
    (record,) = load(tmp_path / "ds", columns={}, tmp=tmp_path)
    assert record["answer"] == "B"
    with pytest.raises(DataError, match="no split 'test'"):
        load(tmp_path / "ds", columns={}, tmp=tmp_path, split="test")


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"q": "x?", "a": "1", "img": b"not an image"}, "row 1: image bytes cannot be decoded"),
        ({"q": "x?", "a": "", "img": png("red")}, "row 1: empty answer"),
        ({"q": "", "a": "1", "img": png("red")}, "row 1: empty problem"),
    ],
)
def test_bad_row_is_named_or_skipped(tmp_path, bad_row, message):
    path = write_parquet(tmp_path / "bad.parquet", [GOOD[0], bad_row, GOOD[1]])
    with pytest.raises(DataError) as err:
        load(path, tmp=tmp_path)
    assert (
        str(path) in str(err.value)
        and message in str(err.value)
        and "skip_invalid" in str(err.value)
    )
    stats = Stats()
    assert len(load(path, skip=True, stats=stats, tmp=tmp_path)) == 2 and stats.skipped == 1


def test_missing_column_is_named(tmp_path):
    path = write_parquet(tmp_path / "m.parquet", [{"q": "x", "img": png("red")}])
    with pytest.raises(
        DataError, match=r"missing column 'a' for 'answer'.*columns present: \['q', 'img'\]"
    ):
        load(path, tmp=tmp_path)


def test_missing_image_file_and_missing_solution(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"problem": "p", "answer": "1", "images": "gone.png"})
    )
    with pytest.raises(DataError, match=r"row 0: image file .*gone.png does not exist"):
        load(tmp_path / "d.jsonl", columns={}, tmp=tmp_path)
    Image.new("RGB", (60, 60)).save(tmp_path / "ok.png")
    (tmp_path / "s.jsonl").write_text(
        json.dumps({"problem": "p", "answer": "1", "images": "ok.png"})
    )
    with pytest.raises(DataError, match="row 0: no assistant answer"):
        load(tmp_path / "s.jsonl", columns={}, needs_solution=True, tmp=tmp_path)


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "d.csv").write_text("a,b")
    with pytest.raises(DataError, match="cannot tell the format"):
        load(tmp_path / "d.csv", tmp=tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "nope.parquet", tmp=tmp_path)


def test_fit_pixels_bounds():
    assert fit_pixels(Image.new("RGB", (10, 10)), 3136, 12544).size == (56, 56)
    big = fit_pixels(Image.new("RGB", (1000, 500)), 3136, 12544)
    assert big.size[0] * big.size[1] <= 12544 and big.size[0] > big.size[1]


def test_files_source_dedups_and_removes_eval_overlap(tmp_path):
    sft = [dict(r, s=f"ok \\boxed{{{r['a']}}}") for r in GOOD + GOOD]  # every row twice
    rl = [*GOOD, {"q": "How many green?", "a": "5", "img": png("green")}]
    cols = {"problem": "q", "answer": "a", "images": "img"}
    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path),
            "data": {
                "source": "files",
                "sft_files": [
                    {
                        "uri": str(write_parquet(tmp_path / "sft.parquet", sft)),
                        "columns": dict(cols, solution="s"),
                    }
                ],
                "rl_files": [
                    {"uri": str(write_parquet(tmp_path / "rl.parquet", rl)), "columns": cols}
                ],
                "eval_files": [
                    {"uri": str(write_parquet(tmp_path / "ev.parquet", [GOOD[0]])), "columns": cols}
                ],
                "sft_holdout_fraction": 0.0,
            },
        }
    )
    out = DataPrepOutputs.under(tmp_path)
    metrics = run_data_prep(cfg, out, tmp_path / "cache")
    assert (
        metrics["data/sft_rows"] == 1
        and metrics["data/rl_rows"] == 2
        and metrics["data/eval_rows"] == 1
    )
    assert metrics["data/duplicates_removed"] == 1 and metrics["data/eval_overlap_removed"] == 3
    rl_out = datasets.load_from_disk(str(out.rl))
    assert sorted(rl_out["problem"]) == ["How many blue?", "How many green?"]


def test_synthetic_outputs(synthetic_data_dir):
    sft = load_with_images(synthetic_data_dir / "sft")
    rl = load_with_images(synthetic_data_dir / "rl")
    ev = load_with_images(synthetic_data_dir / "eval")
    assert set(sft) == {"train", "validation"} and len(sft["validation"]) >= 1
    assert len(sft["train"]) + len(sft["validation"]) == len(rl) == 48 and len(ev) == 16
    assert not set(ev["problem"]) & set() and not set(ev["id"]) & set(rl["id"])
    row = sft["train"][0]
    assert "\\boxed{" + row["answer"] + "}" in row["solution"] and row["images"][0].size == (56, 56)
    assert rl[0]["solution"] == ""
    # SFT and RL rows are the same problems: one stored image each, shared by both sets
    keys = {name: datasets.load_from_disk(str(synthetic_data_dir / name)) for name in ("sft", "rl")}
    sft_keys = list(keys["sft"]["train"]["images"]) + list(keys["sft"]["validation"]["images"])
    assert sorted(sft_keys) == sorted(keys["rl"]["images"])
    assert len(ImageStore(synthetic_data_dir / "images")) == len(rl) + len(ev)


def test_parquet_from_s3(tmp_path, s3_env):
    """The same loader reads an s3:// object (moto's real S3 API) through the storage layer."""
    path = write_parquet(tmp_path / "remote.parquet", GOOD)
    s3_env.client().upload_file(str(path), s3_env.bucket, "data/remote.parquet")
    records = load(s3_env.uri("data/remote.parquet"), tmp=tmp_path / "cache")
    assert [r["answer"] for r in records] == ["3", "4"]


def test_jsonl_line_with_invalid_utf8_is_named_or_skipped(tmp_path):
    """A line that is not UTF-8 (or not JSON) is a bad row like any other: named with its line,
    or skipped and counted with skip_invalid while the good rows are kept."""
    Image.new("RGB", (60, 60), "red").save(tmp_path / "ok.png")
    good = [
        json.dumps({"problem": f"p{i}?", "answer": str(i), "images": "ok.png"}).encode()
        for i in range(3)
    ]
    lines = [
        good[0],
        b'{"problem": "caf\\xe9", "answer": "1", "images": "ok.png"}'.replace(b"\\xe9", b"\xe9"),
        good[1],
        b"{not json",
        good[2],
    ]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as err:
        load(tmp_path / "d.jsonl", columns={}, tmp=tmp_path)
    message = str(err.value)
    assert "d.jsonl: row 1: line 2 is not valid UTF-8" in message and "skip_invalid" in message
    stats = Stats()
    records = load(tmp_path / "d.jsonl", columns={}, skip=True, stats=stats, tmp=tmp_path / "skip")
    assert [r["problem"] for r in records] == ["p0?", "p1?", "p2?"] and stats.skipped == 2


def test_parquet_folder_from_s3_names_the_file(tmp_path, s3_env):
    """A folder of parquet files on S3: each file is downloaded (one ahead) and named in errors."""
    for i, rows in enumerate([GOOD, [GOOD[1], {"q": "x?", "a": "1", "img": b"broken"}]]):
        path = write_parquet(tmp_path / f"part-{i}.parquet", rows)
        s3_env.client().upload_file(str(path), s3_env.bucket, f"data/folder/part-{i}.parquet")
    uri = s3_env.uri("data/folder")
    stats = Stats()
    records = load(uri, skip=True, stats=stats, tmp=tmp_path / "skip")
    assert [r["id"] for r in records] == [
        "part-0.parquet-0",
        "part-0.parquet-1",
        "part-1.parquet-0",
    ]
    assert stats.skipped == 1
    with pytest.raises(DataError, match=rf"{uri}/part-1.parquet: row 1: image bytes cannot be"):
        load(uri, tmp=tmp_path / "fail")


def test_json_array_file_reads_like_jsonl_and_names_a_bad_element(tmp_path, monkeypatch):
    """A `.json` file holding one array (as many datasets ship) gives the same rows as JSON
    lines, read element by element (a tiny chunk size makes elements straddle the reads)."""
    from coldstart.data_prep import sources

    monkeypatch.setattr(sources, "JSON_CHUNK_CHARS", 7)
    Image.new("RGB", (60, 60), "red").save(tmp_path / "ok.png")
    rows = [{"problem": f"p{i}?", "answer": str(i), "images": ["ok.png"]} for i in range(3)]
    rows[1]["note"] = 'a [bracket], a {brace} and a "quote"'
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "array.json").write_text("\n  " + json.dumps(rows, indent=2) + "\n")
    as_lines = load(tmp_path / "lines.jsonl", columns={}, tmp=tmp_path / "l")
    as_array = load(tmp_path / "array.json", columns={}, tmp=tmp_path / "a")
    assert [r["problem"] for r in as_array] == ["p0?", "p1?", "p2?"]
    assert [r["id"].split("-")[-1] for r in as_array] == [r["id"].split("-")[-1] for r in as_lines]

    text = json.dumps(rows[:2])[:-1] + ', {"problem": oops}, ' + json.dumps(rows[2]) + "]"
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(DataError, match=r"bad.json: row 2: element 2 is not valid JSON"):
        load(tmp_path / "bad.json", columns={}, tmp=tmp_path / "b")
    stats = Stats()
    kept = load(tmp_path / "bad.json", columns={}, skip=True, stats=stats, tmp=tmp_path / "s")
    assert [r["problem"] for r in kept] == ["p0?", "p1?"] and stats.skipped == 1
