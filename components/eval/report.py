"""The eval outputs people read: tables in the paper's shape, a chart, the reflection table.

Rows are models (base, SFT, RL, SFT+RL), columns the benchmarks and their average, numbers
in percent with one decimal, the best of each column in bold, as in the paper's tables.
One table per scoring mode, each titled with its mode; then the "aha moment" table
(share of responses with reflection phrases, accuracy with and without them).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coldstart.eval.benchmarks import display_name

AVERAGE = "Avg."

# {model display name: {benchmark: {metric: value}}}; each benchmark's metrics carry its "score".
PerBenchmark = Mapping[str, Mapping[str, float]]
Results = Mapping[str, PerBenchmark]

MODE_TITLES = {
    "official": "official scoring (each benchmark's official scorer)",
    "strict": "strict scoring (last \\boxed{} answer, as the GRPO reward checks it)",
}


@dataclass
class ReportInputs:
    """What the report and chart show: `results[model][mode][benchmark]` metrics and more."""

    results: Mapping[str, Mapping[str, PerBenchmark]] = field(default_factory=dict)  # model, mode
    modes: Sequence[str] = ("official", "strict")
    benchmarks: Sequence[str] = ()
    headline_of: Mapping[str, str] = field(default_factory=dict)
    reflection: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    extraction: str = "rules"

    def of_mode(self, mode: str) -> dict[str, PerBenchmark]:
        return {
            model: per_mode[mode] for model, per_mode in self.results.items() if mode in per_mode
        }


def score_table(results: Results, benchmarks: Sequence[str]) -> dict[str, dict[str, float]]:
    """{model: {benchmark display name: score in %, ..., "Avg.": mean of the scores}}."""
    table: dict[str, dict[str, float]] = {}
    for model, per_bench in results.items():
        row = {display_name(b): 100.0 * per_bench[b]["score"] for b in benchmarks if b in per_bench}
        finite = [v for v in row.values() if not math.isnan(v)]
        row[AVERAGE] = sum(finite) / len(finite) if finite else float("nan")
        table[model] = row
    return table


def _cell(value: float | None, best: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:.1f}"
    return f"**{text}**" if best else text


def markdown_table(table: Mapping[str, Mapping[str, float]]) -> str:
    """`| Model | MathVista | ... | Avg. |` with the best value of each column in bold."""
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    best = {}
    for column in columns:
        values = [row.get(column) for row in table.values()]
        finite = [v for v in values if v is not None and not math.isnan(v)]
        best[column] = max(finite) if len(set(finite)) > 1 else None  # no bold when all are equal
    lines = ["| Model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for model, row in table.items():
        cells = [_cell(row.get(c), best[c] is not None and row.get(c) == best[c]) for c in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_SKIP = {
    "score",
    "accuracy",
    "n",
    "correct",
    "no_answer",
    "errors",
    "groups",
    "samples_per_s",
    "seconds",
    "generated",
    "versions",
}


def _details(inputs: ReportInputs) -> list[str]:
    lines = ["## Details", ""]
    for bench in inputs.benchmarks:
        column = inputs.headline_of.get(bench, "accuracy")
        lines += [f"### {display_name(bench)} (column: {column})", ""]
        lines.append("| Model | mode | n | accuracy | no answer | failed | other |")
        lines.append("|---|---|---:|---:|---:|---:|---|")
        for model, per_mode in inputs.results.items():
            for mode in inputs.modes:
                m = per_mode.get(mode, {}).get(bench)
                if m is None:
                    continue
                other = ", ".join(
                    f"{k} {100 * v:.1f}"
                    for k, v in m.items()
                    if k not in _SKIP and not math.isnan(v)
                )
                lines.append(
                    f"| {model} | {mode} | {int(m['n'])} | {100 * m['accuracy']:.1f} | "
                    f"{int(m['no_answer'])} | {int(m['errors'])} | {other} |"
                )
        if bench == "mathverse":
            versions = [
                int(m["versions"])
                for per_mode in inputs.results.values()
                for m in [per_mode.get(inputs.modes[0], {}).get(bench)]
                if m and "versions" in m
            ]
            if versions and min(versions) < 5:
                lines += [
                    "",
                    "MathVerse's official overall covers all five versions; "
                    f"this run has {min(versions)}.",
                ]
        lines.append("")
    return lines


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def reflection_table(reflection: Mapping[str, Mapping[str, float]]) -> str:
    """Per model: responses, share with a reflection phrase, accuracy with and without."""
    lines = [
        "| Model | responses | with reflection (%) | accuracy with (%) | accuracy without (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, m in reflection.items():
        lines.append(
            f"| {model} | {int(m.get('responses', 0))} | {_percent(m.get('share'))} | "
            f"{_percent(m.get('accuracy_with'))} | {_percent(m.get('accuracy_without'))} |"
        )
    return "\n".join(lines)


def markdown_report(
    inputs: ReportInputs,
    chart_png: bytes | None = None,
    chart_link: str | None = None,
) -> str:
    """The whole report: a paper-shaped table per scoring mode, the chart (embedded or
    linked), the reflection table and per-benchmark details.

    `chart_png` embeds the chart as a data URI (the KFP UI renders one Markdown artifact, no
    side files); `chart_link` links a file next to the report instead.
    """
    lines = [
        "# Evaluation",
        "",
        "Greedy decoding. Scores in %. Every number says which scoring mode produced it "
        "(docs/stages/eval.md, section Scoring modes).",
        "",
    ]
    for mode in inputs.modes:
        title = MODE_TITLES.get(mode, mode)
        if mode == "official":
            title += f"; extraction: {inputs.extraction}"
        lines += [
            f"## Scores: {title}",
            "",
            markdown_table(score_table(inputs.of_mode(mode), inputs.benchmarks)),
            "",
        ]
    if chart_png is not None:
        lines += [f"![scores](data:image/png;base64,{base64.b64encode(chart_png).decode()})", ""]
    elif chart_link:
        lines += [f"![scores]({chart_link})", ""]
    if inputs.reflection:
        lines += [
            f'## Reflection ("aha moment") patterns, accuracy by {inputs.modes[0]} scoring',
            "",
            reflection_table(inputs.reflection),
            "",
        ]
    lines += _details(inputs)
    return "\n".join(lines)


def bar_chart(inputs: ReportInputs, path: str | Path) -> Path:
    """Left: grouped bars of the first mode's scores (benchmarks + average) per model;
    right: per model, the share of reflective responses and the accuracy with / without."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = score_table(inputs.of_mode(inputs.modes[0]), inputs.benchmarks)
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    models = list(table)
    width = 0.8 / max(len(models), 1)
    panels = 2 if inputs.reflection else 1
    score_width = max(5.0, 1.4 * len(columns) * max(1, len(models)) ** 0.5)
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(score_width + 4.5 * (panels - 1), 3.6),
        dpi=110,
        squeeze=False,
        gridspec_kw={"width_ratios": [score_width, 4.5][:panels]},
    )
    ax = axes[0][0]
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(columns))]
        ys = [0.0 if math.isnan(v := table[model].get(c, float("nan"))) else v for c in columns]
        bars = ax.bar(xs, ys, width, label=model)
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=7, padding=1)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel(f"score (%), {inputs.modes[0]} scoring")
    top = max([100.0, *(v for row in table.values() for v in row.values() if not math.isnan(v))])
    ax.set_ylim(0, top * 1.08)
    ax.legend(fontsize=8, ncols=min(4, len(models)), loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    if inputs.reflection:
        _reflection_panel(axes[0][1], inputs.reflection)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _reflection_panel(ax, reflection: Mapping[str, Mapping[str, float]]) -> None:
    keys = (
        ("share", "reflective share"),
        ("accuracy_with", "acc. with"),
        ("accuracy_without", "acc. without"),
    )
    models = list(reflection)
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(models))]
        ys = [
            100 * v if not math.isnan(v := reflection[m].get(key, float("nan"))) else 0.0
            for m in models
        ]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=6, padding=1)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylim(0, 108)
    ax.set_ylabel("%")
    ax.set_title("reflection phrases", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
