"""The report in the paper's shape: rows base / SFT / RL / SFT+RL, columns the benchmarks and the average."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from coldstart.eval.report import (
    ReportInputs,
    bar_chart,
    markdown_report,
    markdown_table,
    reflection_table,
    score_table,
)

BENCHMARKS = ["mathvista", "wemath", "mathverse", "mathvision"]
SCORES = {  # made-up fractions; the paper's 7B table has this shape
    "base": [0.663, 0.629, 0.460, 0.250],
    "SFT": [0.700, 0.650, 0.480, 0.270],
    "RL": [0.690, 0.660, 0.470, 0.265],
    "SFT+RL": [0.734, 0.704, 0.500, 0.300],
}


def results(scores=SCORES):
    return {
        model: {
            b: {
                "score": s,
                "accuracy": s,
                "n": 10.0,
                "no_answer": 1.0,
                "errors": 0.0,
                "correct": 7.0,
            }
            for b, s in zip(BENCHMARKS, values, strict=False)
        }
        for model, values in scores.items()
    }


def inputs(scores=SCORES, reflection=None) -> ReportInputs:
    """Both modes; strict scores 10 points below the official ones."""
    strict = {m: [v - 0.1 for v in values] for m, values in scores.items()}
    per_mode = {m: {"official": results(scores)[m], "strict": results(strict)[m]} for m in scores}
    return ReportInputs(
        per_mode,
        ["official", "strict"],
        BENCHMARKS,
        {"wemath": "strict"},
        reflection or {},
        "LLM (judge)",
    )


def test_score_table_rows_columns_and_average():
    table = score_table(results(), BENCHMARKS)
    assert list(table) == ["base", "SFT", "RL", "SFT+RL"]
    assert list(table["base"]) == ["MathVista", "We-Math", "MathVerse", "MathVision", "Avg."]
    assert table["SFT+RL"]["MathVista"] == 73.4
    assert math.isclose(table["base"]["Avg."], (66.3 + 62.9 + 46.0 + 25.0) / 4)


def test_markdown_table_marks_the_best_of_each_column():
    lines = markdown_table(score_table(results(), BENCHMARKS)).splitlines()
    assert lines[0] == "| Model | MathVista | We-Math | MathVerse | MathVision | Avg. |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    assert lines[2] == "| base | 66.3 | 62.9 | 46.0 | 25.0 | 50.0 |"
    assert lines[5] == "| SFT+RL | **73.4** | **70.4** | **50.0** | **30.0** | **56.0** |"
    assert len(lines) == 6


def test_missing_score_is_na_and_left_out_of_the_average():
    scores = {"base": [0.5, float("nan"), 0.3, 0.1], "SFT": [0.6, 0.2, 0.3, 0.1]}
    table = score_table(results(scores), BENCHMARKS)
    assert math.isclose(table["base"]["Avg."], 30.0)
    assert "| base | 50.0 | n/a |" in markdown_table(table)


def test_report_embeds_or_links_the_chart():
    embedded = markdown_report(inputs(), chart_png=b"\x89PNG")
    assert "(data:image/png;base64,iVBORw==)" in embedded and "### We-Math" in embedded
    assert "![scores](chart.png)" in markdown_report(inputs(), chart_link="chart.png")


def test_report_has_a_table_per_mode_each_titled_with_its_mode():
    report = markdown_report(inputs())
    official = report.index("## Scores: official scoring")
    strict = report.index("## Scores: strict scoring")
    assert official < strict and "extraction: LLM (judge)" in report
    assert "| SFT+RL | **73.4** |" in report[official:strict]
    assert "| SFT+RL | **63.4** |" in report[strict:]
    assert "### We-Math (column: strict)" in report


REFLECTION = {
    "base": {"responses": 10.0, "share": 0.2, "accuracy_with": 0.5, "accuracy_without": 0.25},
    "SFT+RL": {
        "responses": 10.0,
        "share": 0.0,
        "accuracy_with": float("nan"),
        "accuracy_without": 0.7,
    },
}


def test_reflection_table_in_the_report():
    table = reflection_table(REFLECTION).splitlines()
    assert table[2] == "| base | 10 | 20.0 | 50.0 | 25.0 |"
    assert table[3] == "| SFT+RL | 10 | 0.0 | n/a | 70.0 |"
    report = markdown_report(inputs(reflection=REFLECTION))
    assert "## Reflection" in report and table[2] in report


@pytest.mark.parametrize("reflection", [{}, REFLECTION])
def test_bar_chart_png(tmp_path, reflection):
    path = bar_chart(inputs(reflection=reflection), tmp_path / "chart.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > height >= 300  # five groups of four bars, readable (+ the reflection panel)


def test_no_bold_when_all_models_tie():
    table = markdown_table(score_table(results({"base": [0.0] * 4, "SFT": [0.0] * 4}), BENCHMARKS))
    assert "**" not in table
