"""The eval outputs people read: one table in the paper's shape, a bar chart, the predictions.

Rows are models (base, SFT, RL, SFT+RL), columns the benchmarks and their average, numbers
in percent with one decimal, the best of each column in bold, as in the paper's tables.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from components.eval.benchmarks import display_name

AVERAGE = "Avg."

# {model display name: {benchmark: {metric: value}}}; each benchmark's metrics carry its "score".
Results = Mapping[str, Mapping[str, Mapping[str, float]]]


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


def _details(
    results: Results, benchmarks: Sequence[str], metrics_of: Mapping[str, str]
) -> list[str]:
    lines = ["## Details", ""]
    for bench in benchmarks:
        lines.append(f"### {display_name(bench)} (column: {metrics_of.get(bench, 'accuracy')})")
        lines.append("")
        lines.append("| Model | n | accuracy | no answer | failed | other |")
        lines.append("|---|---:|---:|---:|---:|---|")
        for model, per_bench in results.items():
            m = per_bench.get(bench)
            if m is None:
                continue
            other = ", ".join(
                f"{k} {100 * v:.1f}"
                for k, v in m.items()
                if k
                not in (
                    "score",
                    "accuracy",
                    "n",
                    "correct",
                    "no_answer",
                    "errors",
                    "groups",
                    "samples_per_s",
                    "seconds",
                )
                and not math.isnan(v)
            )
            lines.append(
                f"| {model} | {int(m['n'])} | {100 * m['accuracy']:.1f} | {int(m['no_answer'])} | "
                f"{int(m['errors'])} | {other} |"
            )
        lines.append("")
    return lines


def markdown_report(
    results: Results,
    benchmarks: Sequence[str],
    metrics_of: Mapping[str, str],
    chart_png: bytes | None = None,
    chart_link: str | None = None,
) -> str:
    """The whole report: the paper-shaped table, the chart (embedded or linked) and per-benchmark details.

    `chart_png` embeds the chart as a data URI (the KFP UI renders one Markdown artifact, no
    side files); `chart_link` links a file next to the report instead.
    """
    lines = [
        "# Evaluation",
        "",
        "Greedy decoding; answers scored by each benchmark's rules (coldstart README, section eval). Scores in %.",
        "",
        markdown_table(score_table(results, benchmarks)),
        "",
    ]
    if chart_png is not None:
        lines += [f"![scores](data:image/png;base64,{base64.b64encode(chart_png).decode()})", ""]
    elif chart_link:
        lines += [f"![scores]({chart_link})", ""]
    lines += _details(results, benchmarks, metrics_of)
    return "\n".join(lines)


def bar_chart(results: Results, benchmarks: Sequence[str], path: str | Path) -> Path:
    """Grouped bars: one group per benchmark (and the average), one bar per model; a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = score_table(results, benchmarks)
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    models = list(table)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(
        figsize=(max(5.0, 1.4 * len(columns) * max(1, len(models)) ** 0.5), 3.6), dpi=110
    )
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(columns))]
        ys = [0.0 if math.isnan(v := table[model].get(c, float("nan"))) else v for c in columns]
        bars = ax.bar(xs, ys, width, label=model)
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=7, padding=1)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("score (%)")
    ax.set_ylim(
        0,
        max(100.0, *(v for row in table.values() for v in row.values() if not math.isnan(v)))
        * 1.08,
    )
    ax.legend(fontsize=8, ncols=min(4, len(models)), loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
