"""The paper's ablation in miniature: base, SFT-only, RL-only and SFT+RL on the synthetic held-out set.

    .venv/bin/python bench/ablation.py                  # bench/configs/ablation.yaml, its seeds
    .venv/bin/python bench/ablation.py --quick          # CI smoke run: 1 seed, few steps, no ordering check
    .venv/bin/python bench/ablation.py --seeds 0,1 --set grpo.total_steps=20

Every model comes out of the stages' own `main(...)` functions, called as the kfp components call
them (data_prep -> base model -> sft -> grpo from SFT and grpo from base -> eval of all four), with
the held-out split that data_prep draws first and keeps out of training. One seed sets the tiny
model's initialisation, the problem draw, SFT and GRPO (`seed_keys` in the config); the table gives
mean +- std over seeds and the paired per-seed differences the paper's claim is about:

    SFT+RL > SFT-only,   SFT+RL > RL-only > base

A claim holds when its paired difference is positive in every seed and its mean is at least
`min_margin` (accuracy points / 100). `base.kind` picks what "base" is: `random` is the tiny preset
as the pipeline builds it (it never writes a `\\boxed{}` answer, so GRPO from it gets no reward at
all); `instruct` first tunes that model with the SFT stage on short direct answers
(`The answer is \\boxed{N}.`) to problems of *other* synthetic families, standing in for the paper's
instruction-tuned base (Qwen2.5-VL-Instruct): it knows the answer format, not these tasks.
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
class BenchConfig:
    seeds: list[int]
    seed_keys: list[str]
    min_margin: float
    base: BaseSpec
    pipeline: dict[str, Any]  # a PipelineConfig as a dict (output_dir and seeds filled per seed)
    digest: str  # of everything above: two results with one digest came from one configuration


def load_bench_config(
    path: Path,
    quick: bool,
    overrides: list[str],
    seeds: list[int] | None,
    base_kind: str | None = None,
) -> BenchConfig:
    """The YAML's sections, with `quick:` (if --quick) and then `--set` applied to `pipeline:`."""
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - {"seeds", "seed_keys", "min_margin", "base", "pipeline", "quick"})
    if unknown:
        raise SystemExit(f"{path}: unknown top-level keys {unknown}")
    pipeline = copy.deepcopy(raw.get("pipeline") or {})
    base = dict(raw.get("base") or {})
    quick_section = raw.get("quick") or {}
    if quick:
        apply_overrides(pipeline, list(quick_section.get("set", [])))
        base["sft"] = {**base.get("sft", {}), **quick_section.get("base_sft", {})}
        seeds = seeds or list(quick_section.get("seeds", [0]))
    apply_overrides(pipeline, overrides)
    if base_kind:
        base["kind"] = base_kind
    seeds = seeds or list(raw.get("seeds", [0, 1, 2]))
    spec = BaseSpec(**base)
    if spec.kind not in ("random", "instruct"):
        raise SystemExit(f"{path}: base.kind must be random or instruct, got {spec.kind!r}")
    keys = list(raw.get("seed_keys", ["model.tiny.seed", "data.seed", "sft.seed", "grpo.seed"]))
    margin = float(raw.get("min_margin", 0.03))
    blob = json.dumps(
        {
            "seeds": seeds,
            "seed_keys": keys,
            "min_margin": margin,
            "base": base,
            "pipeline": pipeline,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    config_from_dict(pipeline, str(path))  # fail now, not after the first seed
    return BenchConfig(seeds, keys, margin, spec, pipeline, digest)


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
    out = DataPrepOutputs(
        work / "instruct_data" / "sft",
        work / "instruct_data" / "rl",
        work / "instruct_data" / "eval",
    )
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
    sft_main(icfg, random_base, data, work / "instruct_base", run_id)
    timings["instruct_base"] = time.perf_counter() - start
    return work / "instruct_base"


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

    data = DataPrepOutputs(work / "data" / "sft", work / "data" / "rl", work / "data" / "eval")
    data_metrics = data_prep_main(cfg, data, run_id)
    lap("data_prep")
    base = make_base(cfg, bench.base, work, run_id, timings)
    clock = time.perf_counter()
    sft_metrics = sft_main(cfg, base, data.sft, work / "sft", run_id)
    lap("sft")
    rl_sft = grpo_main(cfg, work / "sft", data.rl, work / "sft_rl", run_id, "grpo")
    lap("grpo")
    rl_base = grpo_main(cfg, base, data.rl, work / "rl", run_id, "grpo_from_base")
    lap("grpo_from_base")
    models = {
        "base": str(base),
        "SFT": str(work / "sft"),
        "RL": str(work / "rl"),
        "SFT+RL": str(work / "sft_rl"),
    }
    metrics = eval_main(cfg, models, data.eval, work / "eval", run_id)
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


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(per_seed: list[dict[str, Any]], min_margin: float) -> dict[str, Any]:
    """Mean +- std per variant, and each claim's paired differences (better - worse, per seed)."""
    table = {
        m: dict(zip(("mean", "std"), mean_std([s["accuracy"][m] for s in per_seed]), strict=False))
        for m in VARIANTS
    }
    if all("prior_accuracy" in s for s in per_seed):
        prior = mean_std([s["prior_accuracy"] for s in per_seed])
        table[PRIOR_ROW] = {"mean": prior[0], "std": prior[1]}
    claims = []
    for better, worse in CLAIMS:
        diffs = [s["accuracy"][better] - s["accuracy"][worse] for s in per_seed]
        mean, std = mean_std(diffs)
        holds = all(d > 0 for d in diffs) and mean >= min_margin
        claims.append(
            {
                "claim": f"{better} > {worse}",
                "diffs": diffs,
                "mean_diff": mean,
                "std_diff": std,
                "min_diff": min(diffs),
                "holds": holds,
            }
        )
    return {"table": table, "claims": claims, "ordering_holds": all(c["holds"] for c in claims)}


def reads_images(per_seed: list[dict[str, Any]], tolerance: float = 0.005) -> list[str]:
    """The trained variants that beat their own constant answer in some seed (see answer_diagnostics)."""
    return [
        m
        for m in VARIANTS[1:]
        if any(s.get("gain_over_constant", {}).get(m, 0.0) > tolerance for s in per_seed)
    ]


def prior_remark(report: dict[str, Any]) -> str:
    readers = reads_images(report["per_seed"])
    if readers:
        return f"Answers that depend on the problem beyond a constant guess: {', '.join(readers)}."
    return (
        "No trained model beats its own most frequent answer given to every problem: the accuracies are "
        "answer frequencies (the answer prior), with no sign of reading the image."
    )


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table_lines(report: dict[str, Any]) -> list[str]:
    seeds = [s["seed"] for s in report["per_seed"]]
    lines = [
        "| model | accuracy % (mean ± std) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---:|" + "---:|" * len(seeds),
    ]
    for m in VARIANTS:
        row = report["summary"]["table"][m]
        per = " | ".join(pct(s["accuracy"][m]) for s in report["per_seed"])
        lines.append(f"| {m} | {pct(row['mean'])} ± {pct(row['std'])} | {per} |")
    prior = report["summary"]["table"].get(PRIOR_ROW)
    if prior is not None:
        per = " | ".join(pct(s["prior_accuracy"]) for s in report["per_seed"])
        lines.append(f"| *{PRIOR_ROW}* | {pct(prior['mean'])} ± {pct(prior['std'])} | {per} |")
    return lines


def claim_lines(report: dict[str, Any]) -> list[str]:
    lines = ["| claim | mean diff (points) | per seed | holds |", "|---|---:|---|---|"]
    for c in report["summary"]["claims"]:
        per = ", ".join(f"{100 * d:+.1f}" for d in c["diffs"])
        lines.append(
            f"| {c['claim']} | {100 * c['mean_diff']:+.1f} ± {100 * c['std_diff']:.1f} | {per} | "
            f"{'yes' if c['holds'] else 'no'} |"
        )
    return lines


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nablation ({report['config']}{', quick' if report['quick'] else ''}; digest {report['config_digest']}; "
        f"base: {report['base_kind']}; {len(report['per_seed'])} seeds; {report['total_s']:.0f}s; "
        f"load {report['load_avg_before'][0]:.1f} -> {report['load_avg_after'][0]:.1f})"
    )
    print("\n".join(table_lines(report)))
    print()
    print("\n".join(claim_lines(report)))
    verdict = "holds" if report["summary"]["ordering_holds"] else "does NOT hold"
    print(
        f"ordering SFT+RL > SFT, SFT+RL > RL > base {verdict} (margin >= {pct(report['min_margin'])} points, every seed)"
    )
    print(prior_remark(report))


def write_markdown(report: dict[str, Any], path: Path) -> None:
    s0 = report["per_seed"][0]
    lines = [
        f"# Ablation in miniature ({report['time']})",
        "",
        f"`python bench/ablation.py --config {report['config']}`{' --quick' if report['quick'] else ''}; "
        f"config digest `{report['config_digest']}`; base: `{report['base_kind']}`; seeds {report['seeds']}; "
        f"{s0['eval_rows']} held-out problems and {s0['rl_rows']} RL problems per seed; total {report['total_s']:.0f} s on "
        f"{report['cpus']} CPUs (torch {report['torch_threads']} threads, load average {report['load_avg_before'][0]:.1f} "
        f"before, {report['load_avg_after'][0]:.1f} after).",
        "",
        "Accuracy on the synthetic held-out split (greedy decoding, the eval stage's scoring):",
        "",
        *table_lines(report),
        "",
        "Paired differences (a claim holds when positive in every seed and >= "
        f"{pct(report['min_margin'])} points on average):",
        "",
        *claim_lines(report),
        "",
        f"Ordering {'holds' if report['summary']['ordering_holds'] else 'does not hold'}. {prior_remark(report)}",
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
    path.write_text("\n".join(lines) + "\n")


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
        "--seeds", default=None, help="comma-separated seeds (default: the config's)"
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
        "--no-assert", action="store_true", help="exit 0 even if the ordering does not hold"
    )
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    args.output = Path(
        args.output or ROOT / "bench" / "results" / f"ablation{'_quick' if args.quick else ''}.json"
    )
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    config_path = Path(args.config).resolve()
    bench = load_bench_config(config_path, args.quick, args.overrides, args.seeds, args.base_kind)
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
                + f" ({time.perf_counter() - seed_start:.0f}s)",
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
        "seeds": bench.seeds,
        "min_margin": bench.min_margin,
        "summary": summarize(per_seed, bench.min_margin),
        "per_seed": per_seed,
        "total_s": round(time.perf_counter() - start, 1),
        **machine_facts(load_before),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.output.with_suffix(".md"))
    print_report(report)
    print(f"\nwrote {args.output} and {args.output.with_suffix('.md').name}")
    if args.quick or args.no_assert or report["summary"]["ordering_holds"]:
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
