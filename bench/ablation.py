"""The paper's ablation in miniature: base, SFT-only, RL-only and SFT+RL on the synthetic held-out set.

    .venv/bin/python bench/ablation.py                  # the tuning seeds (bench/configs/ablation.yaml)
    .venv/bin/python bench/ablation.py --heldout        # the held-out seeds: run once, never tuned on
    .venv/bin/python bench/ablation.py --quick          # CI smoke run: 1 seed, few steps, no ordering check
    .venv/bin/python bench/ablation.py --seeds 0,1 --set grpo.total_steps=20

Every model comes out of the stages' own `main(...)` functions, called as the kfp components call
them (data_prep -> base model -> sft -> grpo from SFT and grpo from base -> eval of all four), with
the held-out split that data_prep draws first and keeps out of training. One seed sets the tiny
model's initialisation, the problem draw, SFT and GRPO (`seed_keys` in the config). SFT sees only
the first `cold_start_rows` problems of the SFT split (the paper's small cold-start set); GRPO sees
the whole RL split. The claims are about paired per-seed differences:

    SFT+RL > SFT-only,   SFT+RL > RL-only > base

A claim holds when its paired difference is at least `criteria.min_margin` (accuracy / 100) in
every seed; each claim also gets a 95% paired t-interval over seeds. The other criteria: the std
over seeds of SFT and SFT+RL at most `criteria.max_std`, and SFT+RL above the answer prior (the most
frequent training answer given to every problem) by `criteria.min_over_prior` in every seed.

Protocol: the configuration is tuned on `tuning_seeds` only; `heldout_seeds` run once with the final
configuration (`--heldout`). Both sets land in one results file, each under its name, as long as
their configuration digest (which leaves the seeds out) is the same.

`base.kind` picks what "base" is: `random` is the tiny preset as the pipeline builds it (it never
writes a `\\boxed{}` answer, so GRPO from it gets no reward at all); `instruct` first tunes that
model with the SFT stage on short direct answers (`The answer is \\boxed{N}.`) to problems of
*other* synthetic families, standing in for the paper's instruction-tuned base
(Qwen2.5-VL-Instruct): it knows the answer format, not these tasks.
Results: bench/results/ablation[_quick].json and .md (date, config digest, per-seed numbers).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # each seed logs to a sqlite store in its own folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine_facts  # noqa: E402
from coldstart.common.config import PipelineConfig, apply_overrides, config_from_dict  # noqa: E402

VARIANTS = ("base", "SFT", "RL", "SFT+RL")  # the paper's rows, its order
CLAIMS = (("SFT+RL", "SFT"), ("SFT+RL", "RL"), ("RL", "base"))  # (better, worse)
DEFAULT_CONFIG = ROOT / "bench" / "configs" / "ablation.yaml"
PRIOR_ROW = "prior: always the most frequent training answer"  # the reference row of the table


@dataclass
class BaseSpec:
    """What the ablation's "base" model is (see the module docstring)."""

    kind: str = "random"  # random | instruct
    families: list[str] = field(
        default_factory=list
    )  # instruct data: families disjoint from the target's
    difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])
    train_per_family: int = 128
    seed_offset: int = 1000  # the instruct draw uses data.seed + this
    response: str = "The answer is \\boxed{{{answer}}}."
    sft: dict[str, Any] = field(default_factory=dict)  # sft.* keys of the instruct tuning


@dataclass
class Criteria:
    """What "the ordering holds" means (accuracy fractions: 0.03 = 3 points)."""

    min_margin: float = 0.03  # every claim's paired difference, in every seed
    max_std: float = 0.10  # std over seeds of SFT and of SFT+RL
    min_over_prior: float = 0.20  # SFT+RL minus the answer prior, in every seed


@dataclass
class BenchConfig:
    seeds: list[int]  # the seeds of this run
    seed_set: str  # tuning | held_out | quick | custom: which set `seeds` are
    tuning_seeds: list[int]
    heldout_seeds: list[int]
    seed_keys: list[str]
    criteria: Criteria
    cold_start_rows: (
        int  # SFT on the first N rows of the SFT split (0 = all); GRPO on the whole RL split
    )
    base: BaseSpec
    pipeline: dict[str, Any]  # a PipelineConfig as a dict (output_dir and seeds filled per seed)
    digest: str  # of everything but the seeds: one digest, one configuration


TOP_LEVEL_KEYS = {
    "tuning_seeds",
    "heldout_seeds",
    "seed_keys",
    "criteria",
    "cold_start_rows",
    "base",
    "pipeline",
    "quick",
}


def pick_seeds(
    raw: dict[str, Any], quick: bool, heldout: bool, seeds: list[int] | None
) -> tuple[list[int], str]:
    """The run's seeds and the name of their set; explicit seeds that equal a set take its name."""
    tuning = list(raw.get("tuning_seeds", [0, 1, 2]))
    held = list(raw.get("heldout_seeds", []))
    if quick:
        return seeds or list((raw.get("quick") or {}).get("seeds", [0])), "quick"
    if heldout:
        if not held:
            raise SystemExit("--heldout: the config names no heldout_seeds")
        return held, "held_out"
    if seeds is None or seeds == tuning:
        return tuning, "tuning"
    return seeds, "held_out" if seeds == held else "custom"


def load_bench_config(
    path: Path,
    quick: bool,
    overrides: list[str],
    seeds: list[int] | None,
    base_kind: str | None = None,
    heldout: bool = False,
) -> BenchConfig:
    """The YAML's sections, with `quick:` (if --quick) and then `--set` applied to `pipeline:`."""
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise SystemExit(
            f"{path}: unknown top-level keys {unknown}; valid: {sorted(TOP_LEVEL_KEYS)}"
        )
    pipeline = copy.deepcopy(raw.get("pipeline") or {})
    base = dict(raw.get("base") or {})
    quick_section = raw.get("quick") or {}
    cold_start_rows = int(raw.get("cold_start_rows", 0))
    if quick:
        apply_overrides(pipeline, list(quick_section.get("set", [])))
        base["sft"] = {**base.get("sft", {}), **quick_section.get("base_sft", {})}
        cold_start_rows = int(quick_section.get("cold_start_rows", cold_start_rows))
    apply_overrides(pipeline, overrides)
    if base_kind:
        base["kind"] = base_kind
    run_seeds, seed_set = pick_seeds(raw, quick, heldout, seeds)
    spec = BaseSpec(**base)
    if spec.kind not in ("random", "instruct"):
        raise SystemExit(f"{path}: base.kind must be random or instruct, got {spec.kind!r}")
    try:
        criteria = Criteria(**(raw.get("criteria") or {}))
    except TypeError as err:
        raise SystemExit(f"{path}: criteria: {err}") from None
    if cold_start_rows < 0:
        raise SystemExit(f"{path}: cold_start_rows must be >= 0, got {cold_start_rows}")
    keys = list(raw.get("seed_keys", ["model.tiny.seed", "data.seed", "sft.seed", "grpo.seed"]))
    blob = json.dumps(
        {
            "seed_keys": keys,
            "criteria": vars(criteria),
            "cold_start_rows": cold_start_rows,
            "base": base,
            "pipeline": pipeline,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    config_from_dict(pipeline, str(path))  # fail now, not after the first seed
    return BenchConfig(
        seeds=run_seeds,
        seed_set=seed_set,
        tuning_seeds=list(raw.get("tuning_seeds", [0, 1, 2])),
        heldout_seeds=list(raw.get("heldout_seeds", [])),
        seed_keys=keys,
        criteria=criteria,
        cold_start_rows=cold_start_rows,
        base=spec,
        pipeline=pipeline,
        digest=digest,
    )


def seed_config(bench: BenchConfig, seed: int, output_dir: Path) -> PipelineConfig:
    data = apply_overrides(copy.deepcopy(bench.pipeline), [f"{k}={seed}" for k in bench.seed_keys])
    data = apply_overrides(data, [f"output_dir={output_dir}"])
    return config_from_dict(data, f"ablation seed {seed}")


# --------------------------------------------------------------------------- one seed


def instruct_data(cfg: PipelineConfig, spec: BaseSpec, work: Path, run_id: str) -> Path:
    """data_prep on the instruct families; every SFT response replaced by the short direct answer."""
    import datasets

    from coldstart.data_prep.cli import main as data_prep_main
    from coldstart.data_prep.stage import DataPrepOutputs

    overlap = set(spec.families) & set(cfg.data.synthetic.families)
    if overlap or not spec.families:
        raise SystemExit(
            f"base.families must be given and disjoint from the target's families (shared: {sorted(overlap)})"
        )
    icfg = config_from_dict(apply_overrides(cfg.model_dump(mode="json"), [
        f"data.synthetic.families={json.dumps(spec.families)}",
        f"data.synthetic.difficulties={json.dumps(spec.difficulties)}",
        f"data.synthetic.train_per_family={spec.train_per_family}",
        "data.synthetic.test_per_family=1",
        f"data.seed={cfg.data.seed + spec.seed_offset}",
    ]), "instruct data")  # fmt: skip
    out = DataPrepOutputs.under(work / "instruct_data")
    data_prep_main(icfg, out, run_id)
    direct = datasets.load_from_disk(str(out.sft)).map(
        lambda row: {"solution": spec.response.format(answer=row["answer"])}
    )
    direct.save_to_disk(str(work / "instruct_data" / "direct"))
    return work / "instruct_data" / "direct"


def make_base(
    cfg: PipelineConfig, spec: BaseSpec, work: Path, run_id: str, timings: dict[str, float]
) -> Path:
    """The tiny preset (data_prep's base model task); `instruct`: then the SFT stage on direct answers."""
    from coldstart.data_prep.cli import base_model_main
    from coldstart.sft.cli import main as sft_main

    start = time.perf_counter()
    random_base = base_model_main(cfg, work / "random_base")
    timings["base_model"] = time.perf_counter() - start
    if spec.kind == "random":
        return random_base
    start = time.perf_counter()
    data = instruct_data(cfg, spec, work, run_id)
    sft_keys = [f"sft.{k}={json.dumps(v)}" for k, v in spec.sft.items()]
    icfg = config_from_dict(apply_overrides(cfg.model_dump(mode="json"), sft_keys), "instruct sft")
    sft_main(
        icfg, random_base, data, work / "instruct_base", run_id, work / "instruct_data" / "images"
    )
    timings["instruct_base"] = time.perf_counter() - start
    return work / "instruct_base"


def cold_start_subset(sft_data: Path, rows: int, out: Path) -> Path:
    """The first `rows` training rows of data_prep's SFT split (its validation split kept whole).

    The paper's cold start is a small SFT set next to a larger RL set; here both come from one
    draw, so the cold start is a prefix of the same problems GRPO later sees (0 = all of them).
    """
    import datasets

    if rows == 0:
        return sft_data
    splits = datasets.load_from_disk(str(sft_data))
    train = splits["train"] if isinstance(splits, datasets.DatasetDict) else splits
    if rows > len(train):
        raise SystemExit(f"cold_start_rows={rows} but the SFT split has only {len(train)} rows")
    if isinstance(splits, datasets.DatasetDict):
        splits["train"] = train.select(range(rows))
    else:
        splits = train.select(range(rows))
    splits.save_to_disk(str(out))
    return out


def sft_rows(sft_data: Path) -> int:
    import datasets

    splits = datasets.load_from_disk(str(sft_data))
    return len(splits["train"] if isinstance(splits, datasets.DatasetDict) else splits)


def run_seed(bench: BenchConfig, seed: int, work: Path) -> dict[str, Any]:
    """Data, base, SFT, GRPO from SFT and from base, eval of the four; accuracies and timings."""
    from coldstart.data_prep.cli import main as data_prep_main
    from coldstart.data_prep.stage import DataPrepOutputs
    from coldstart.eval.cli import main as eval_main
    from coldstart.eval.scoring import slug
    from coldstart.grpo.cli import main as grpo_main
    from coldstart.sft.cli import main as sft_main

    cfg = seed_config(bench, seed, work)
    run_id = f"ablation-{bench.digest}-seed{seed}"
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    data = DataPrepOutputs.under(work / "data")
    data_metrics = data_prep_main(cfg, data, run_id)
    lap("data_prep")
    base = make_base(cfg, bench.base, work, run_id, timings)
    clock = time.perf_counter()
    cold_start = cold_start_subset(data.sft, bench.cold_start_rows, work / "cold_start")
    sft_metrics = sft_main(cfg, base, cold_start, work / "sft", run_id, data.images)
    lap("sft")
    rl_sft = grpo_main(cfg, work / "sft", data.rl, work / "sft_rl", run_id, "grpo", data.images)
    lap("grpo")
    rl_base = grpo_main(cfg, base, data.rl, work / "rl", run_id, "grpo_from_base", data.images)
    lap("grpo_from_base")
    models = {
        "base": str(base),
        "SFT": str(work / "sft"),
        "RL": str(work / "rl"),
        "SFT+RL": str(work / "sft_rl"),
    }
    metrics = eval_main(cfg, models, data.eval, work / "eval", run_id, images_dir=data.images)
    lap("eval")

    def of(model: str, key: str) -> float:
        return metrics.get(f"eval/{slug(model)}/synthetic/{key}", float("nan"))

    answers = answer_diagnostics(work / "eval" / "predictions" / "predictions.parquet", data.rl)
    return {
        "seed": seed,
        "config_digest": cfg.digest(),
        "accuracy": {m: of(m, "accuracy") for m in VARIANTS},
        "no_answer": {m: of(m, "no_answer") for m in VARIANTS},
        **answers,
        "eval_rows": data_metrics.get("data/eval_rows"),
        "rl_rows": data_metrics.get("data/rl_rows"),
        "sft_rows": sft_rows(cold_start),
        "sft_loss_last": sft_metrics.get("sft/train/loss_last"),
        "grpo_reward": {
            name: {
                "first_steps": s.get("grpo/reward/mean_first_steps"),
                "last_steps": s.get("grpo/reward/mean_last_steps"),
            }
            for name, s in (("SFT+RL", rl_sft), ("RL", rl_base))
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }


def answer_diagnostics(predictions: Path, rl_data: Path) -> dict[str, Any]:
    """What the accuracies are made of: the answer prior, and whether a model's answer depends on the image.

    `prior_accuracy`: answering every held-out problem with the most frequent training answer.
    `gain_over_constant`: a model's accuracy minus the accuracy its own most frequent answer would
    get if given to every problem; 0 for a model that says the same thing whatever the image,
    > 0 only when its answers vary with the problem and the variation is right more often.
    `top_answers`: each model's three most frequent answers (cut to 12 characters) with counts.
    """
    from collections import Counter

    import datasets
    import pandas as pd

    prior, _ = Counter(datasets.load_from_disk(str(rl_data))["answer"]).most_common(1)[0]
    frame = pd.read_parquet(predictions)
    frame["extracted"] = frame.extracted.fillna("<none>")
    golds = frame[frame.model == VARIANTS[0]].gold
    gain, tops = {}, {}
    for model in VARIANTS:
        rows = frame[frame.model == model]
        counts = Counter(rows.extracted).most_common(3)
        gain[model] = float(rows.correct.mean() - (golds == counts[0][0]).mean())
        tops[model] = [[_short(answer), n] for answer, n in counts]
    return {
        "prior_answer": prior,
        "prior_accuracy": float((golds == prior).mean()),
        "gain_over_constant": gain,
        "top_answers": tops,
    }


def _short(answer: str, width: int = 12) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in answer)
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------- summary

# Two-sided 95% quantiles of Student's t, by degrees of freedom (scipy.stats.t.ppf(0.975, df)).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip
CI_METHOD = "95% paired t-interval over seeds: mean diff ± t(0.975, n-1) · sd / sqrt(n)"


def t_quantile(df: int) -> float:
    """t(0.975, df) from the table, rounding df down to a tabulated value (wider, never narrower)."""
    if df < 1:
        return float("nan")
    return T_975[max(k for k in T_975 if k <= df)] if df <= 30 else 1.96


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_interval(diffs: list[float]) -> tuple[float, float]:
    """The 95% t-interval of the mean of per-seed paired differences (nan for one seed)."""
    mean, std = mean_std(diffs)
    half = t_quantile(len(diffs) - 1) * std / len(diffs) ** 0.5
    return mean - half, mean + half


def claim_summary(
    per_seed: list[dict[str, Any]], better: str, worse: str, margin: float
) -> dict[str, Any]:
    """One claim `better > worse`: the paired differences, their mean, std, CI; holds when every seed clears `margin`."""
    diffs = [s["accuracy"][better] - s["accuracy"][worse] for s in per_seed]
    mean, std = mean_std(diffs)
    return {
        "claim": f"{better} > {worse}",
        "diffs": diffs,
        "mean_diff": mean,
        "std_diff": std,
        "ci95": list(paired_interval(diffs)),
        "min_diff": min(diffs),
        "holds": min(diffs) >= margin,
    }


def summarize(per_seed: list[dict[str, Any]], criteria: Criteria) -> dict[str, Any]:
    """Mean +- std per variant (and its lead over the answer prior), the claims, and every criterion."""
    has_prior = all("prior_accuracy" in s for s in per_seed)
    table: dict[str, dict[str, float]] = {}
    for m in VARIANTS:
        mean, std = mean_std([s["accuracy"][m] for s in per_seed])
        table[m] = {"mean": mean, "std": std}
        if has_prior:
            table[m]["over_prior"] = mean_std(
                [s["accuracy"][m] - s["prior_accuracy"] for s in per_seed]
            )[0]
    if has_prior:
        prior = mean_std([s["prior_accuracy"] for s in per_seed])
        table[PRIOR_ROW] = {"mean": prior[0], "std": prior[1]}
    claims = [claim_summary(per_seed, b, w, criteria.min_margin) for b, w in CLAIMS]
    checks = [
        {
            "check": f"claim {c['claim']}: >= {pct(criteria.min_margin)} points in every seed",
            "value": c["min_diff"],
            "holds": c["holds"],
        }
        for c in claims
    ]
    for m in ("SFT", "SFT+RL"):
        checks.append(
            {
                "check": f"std of {m} over seeds <= {pct(criteria.max_std)} points",
                "value": table[m]["std"],
                "holds": table[m]["std"] <= criteria.max_std,
            }
        )
    if has_prior:
        lead = min(s["accuracy"]["SFT+RL"] - s["prior_accuracy"] for s in per_seed)
        checks.append(
            {
                "check": f"SFT+RL above the answer prior by >= {pct(criteria.min_over_prior)} points in every seed",
                "value": lead,
                "holds": lead >= criteria.min_over_prior,
            }
        )
    return {
        "table": table,
        "claims": claims,
        "checks": checks,
        "ordering_holds": all(c["holds"] for c in claims),
        "all_criteria_hold": all(c["holds"] for c in checks),
        "ci_method": CI_METHOD,
    }


def reads_images(per_seed: list[dict[str, Any]], tolerance: float = 0.03) -> list[str]:
    """The trained variants that beat their own constant answer by `tolerance` on average (see answer_diagnostics)."""
    return [
        m
        for m in VARIANTS[1:]
        if statistics.fmean(s.get("gain_over_constant", {}).get(m, 0.0) for s in per_seed)
        > tolerance
    ]


def prior_remark(report: dict[str, Any]) -> str:
    readers = reads_images(report["per_seed"])
    others = [m for m in VARIANTS[1:] if m not in readers]
    if not readers:
        return (
            "No trained model beats its own most frequent answer given to every problem: the accuracies are "
            "answer frequencies (the answer prior), with no sign of reading the image."
        )
    text = f"Answers that depend on the image (beat the model's own constant answer by > 3 points on average): {', '.join(readers)}."
    if others:
        text += f" Not: {', '.join(others)}."
    return text


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table_lines(report: dict[str, Any]) -> list[str]:
    seeds = [s["seed"] for s in report["per_seed"]]
    table = report["summary"]["table"]
    lines = [
        "| model | accuracy % (mean ± std) | minus prior (mean) | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " |",
        "|---|---:|---:|" + "---:|" * len(seeds),
    ]
    for m in VARIANTS:
        row = table[m]
        per = " | ".join(pct(s["accuracy"][m]) for s in report["per_seed"])
        over = f"{100 * row['over_prior']:+.1f}" if "over_prior" in row else "-"
        lines.append(f"| {m} | {pct(row['mean'])} ± {pct(row['std'])} | {over} | {per} |")
    prior = table.get(PRIOR_ROW)
    if prior is not None:
        per = " | ".join(pct(s["prior_accuracy"]) for s in report["per_seed"])
        lines.append(f"| *{PRIOR_ROW}* | {pct(prior['mean'])} ± {pct(prior['std'])} | 0 | {per} |")
    return lines


def claim_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "| claim | mean diff ± std (points) | 95% paired t-interval | per seed | min | holds |",
        "|---|---:|---:|---|---:|---|",
    ]
    for c in report["summary"]["claims"]:
        per = ", ".join(f"{100 * d:+.1f}" for d in c["diffs"])
        lo, hi = c.get("ci95", [float("nan")] * 2)
        lines.append(
            f"| {c['claim']} | {100 * c['mean_diff']:+.1f} ± {100 * c['std_diff']:.1f} | "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {per} | {100 * c['min_diff']:+.1f} | {'yes' if c['holds'] else 'no'} |"
        )
    return lines


def check_lines(report: dict[str, Any]) -> list[str]:
    return [
        f"- {'holds' if c['holds'] else 'FAILS'}: {c['check']} (measured {100 * c['value']:.1f})"
        for c in report["summary"]["checks"]
    ]


SET_TITLES = {
    "tuning": "Tuning seeds (the configuration was chosen on these)",
    "held_out": "Held-out seeds (not used to choose the configuration; run once with it)",
    "quick": "Quick smoke run (few steps; no claim is checked)",
    "custom": "Other seeds",
}


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nablation {report['seed_set']} seeds ({report['config']}; digest {report['config_digest']}; "
        f"base: {report['base_kind']}; {len(report['per_seed'])} seeds; {report['total_s']:.0f}s; "
        f"load {report['load_avg_before'][0]:.1f} -> {report['load_avg_after'][0]:.1f})"
    )
    print("\n".join(table_lines(report)))
    print()
    print("\n".join(claim_lines(report)))
    print("\n".join(check_lines(report)))
    print(prior_remark(report))


def set_lines(report: dict[str, Any]) -> list[str]:
    """One seed set's section of the Markdown: where it ran, the table, the claims, the checks, per seed."""
    s0 = report["per_seed"][0]
    lines = [
        f"## {SET_TITLES[report['seed_set']]}: seeds {report['seeds']}",
        "",
        f"{report['time']}; {s0['eval_rows']} held-out problems, {s0.get('sft_rows')} cold-start (SFT) problems and "
        f"{s0['rl_rows']} RL problems per seed; {report['total_s']:.0f} s in all on {report['cpus']} CPUs "
        f"(OMP_NUM_THREADS={report.get('omp_num_threads')}, torch {report['torch_threads']} threads, load average "
        f"{report['load_avg_before'][0]:.1f} before, {report['load_avg_after'][0]:.1f} after).",
        "",
        *table_lines(report),
        "",
        f"Paired differences ({report['summary'].get('ci_method', CI_METHOD)}):",
        "",
        *claim_lines(report),
        "",
        *check_lines(report),
        "",
        prior_remark(report),
        "",
        "Per seed: each model's most frequent answers (answer x count); its gain over answering every problem with",
        "its own most frequent answer (0 = the answer does not depend on the image); GRPO mean reward (first ->",
        "last 5 steps); stage seconds:",
        "",
    ]
    for s in report["per_seed"]:
        rewards = ", ".join(
            f"{k} {v['first_steps']:.2f} -> {v['last_steps']:.2f}"
            for k, v in s["grpo_reward"].items()
        )
        times = ", ".join(f"{k} {v:.0f}" for k, v in s["timings_s"].items())
        tops = "; ".join(
            f"{m}: " + " ".join(f"{a}x{n}" for a, n in top)
            for m, top in s.get("top_answers", {}).items()
        )
        off = ", ".join(f"{m} {100 * v:+.1f}" for m, v in s.get("gain_over_constant", {}).items())
        lines.append(
            f"- seed {s['seed']} (prior answer {s.get('prior_answer')}): answers {tops}; "
            f"gain over constant {off}; reward {rewards}; seconds {times}"
        )
    return [*lines, ""]


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Every seed set of one configuration, tuning first, with the protocol stated once."""
    sets = [
        results["sets"][k]
        for k in ("tuning", "held_out", "custom", "quick")
        if k in results["sets"]
    ]
    first = sets[0]
    lines = [
        "# Ablation in miniature",
        "",
        f"`python bench/ablation.py --config {first['config']}` (`--heldout` for the held-out seeds); "
        f"config digest `{results['config_digest']}`; base: `{first['base_kind']}`. Accuracy on the synthetic "
        "held-out split (greedy decoding, the eval stage's scoring). Protocol: every configuration tried "
        f"was run on the tuning seeds {first.get('tuning_seeds')} only; the held-out seeds "
        f"{first.get('heldout_seeds')} ran once with this configuration, which was not chosen on them. "
        "How the configuration was found, what did not work, and every earlier run of the held-out "
        "seeds: docs/benchmarks.md and bench/results/ablation_tuning_log.md.",
        "",
    ]
    for report in sets:
        lines += set_lines(report)
    path.write_text("\n".join(lines))


def merge_results(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """This run's seed set added to the results file; sets of another configuration digest are dropped."""
    results = {"benchmark": "ablation", "config_digest": report["config_digest"], "sets": {}}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("config_digest") == report["config_digest"] and "sets" in old:
            results["sets"] = old["sets"]
        elif old.get("sets"):
            print(
                f"note: {path.name} held sets of digest {old.get('config_digest')}; replaced",
                flush=True,
            )
    results["sets"][report["seed_set"]] = report
    return results


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="bench config (default bench/configs/ablation.yaml)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: the config's quick section, 1 seed, no ordering check",
    )
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="run the config's heldout_seeds (once, with the final configuration)",
    )
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds (default: the config's tuning_seeds)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pipeline config value, e.g. --set grpo.total_steps=20 (repeatable)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="keep every seed's models and data here (default: a temp dir)",
    )
    parser.add_argument(
        "--output", default=None, help="JSON path (default bench/results/ablation[_quick].json)"
    )
    parser.add_argument(
        "--base-kind",
        choices=("random", "instruct"),
        default=None,
        help="override the config's base.kind",
    )
    parser.add_argument(
        "--no-assert", action="store_true", help="exit 0 even if a criterion does not hold"
    )
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    args.output = Path(
        args.output or ROOT / "bench" / "results" / f"ablation{'_quick' if args.quick else ''}.json"
    )
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    config_path = Path(args.config).resolve()
    bench = load_bench_config(
        config_path, args.quick, args.overrides, args.seeds, args.base_kind, args.heldout
    )
    load_before = os.getloadavg()
    start = time.perf_counter()
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="coldstart-ablation-") as tmp:
        root = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        for seed in bench.seeds:
            seed_start = time.perf_counter()
            per_seed.append(run_seed(bench, seed, root / f"seed{seed}"))
            print(
                f"seed {seed}: "
                + ", ".join(f"{m} {pct(a)}%" for m, a in per_seed[-1]["accuracy"].items())
                + f", prior {pct(per_seed[-1]['prior_accuracy'])}% ({time.perf_counter() - seed_start:.0f}s)",
                flush=True,
            )
    shown = config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path
    return {
        "benchmark": "ablation",
        "config": str(shown),
        "config_digest": bench.digest,
        "overrides": args.overrides,
        "quick": args.quick,
        "base_kind": bench.base.kind,
        "seed_set": bench.seed_set,
        "seeds": bench.seeds,
        "tuning_seeds": bench.tuning_seeds,
        "heldout_seeds": bench.heldout_seeds,
        "criteria": vars(bench.criteria),
        "summary": summarize(per_seed, bench.criteria),
        "per_seed": per_seed,
        "total_s": round(time.perf_counter() - start, 1),
        **machine_facts(load_before),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = merge_results(args.output, report)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.output.with_suffix(".md"))
    print_report(report)
    print(f"\nwrote {args.output} and {args.output.with_suffix('.md').name}")
    if args.quick or args.no_assert or report["summary"]["all_criteria_hold"]:
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
