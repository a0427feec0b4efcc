"""Score responses in two modes, each a scorer per benchmark in one registry.

- `strict`: the answer in the last `\\boxed{}`, checked exactly as the GRPO accuracy reward
  checks it (`coldstart.common.rewards.accuracy_reward`: math-verify equivalence, option
  letter or text). What training optimises, measured on the benchmarks.
- `official`: each benchmark's official scorer (`coldstart.eval.official.*`), GPT steps
  sent to `eval.extractor` when one is configured, else rule-based extraction in their
  place (`ScoringContext.extraction` says which, and the report shows it).

Scorers work on a batch (`(samples, responses, context) -> judgements`) so that LLM calls
can run concurrently; `register_scorer` adds or replaces one (a custom judge).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coldstart.common.answers import extract_answer, extract_boxed, is_equivalent
from coldstart.common.rewards import accuracy_reward
from coldstart.eval.benchmarks import EvalSample
from coldstart.eval.extractor import ChatClient
from coldstart.eval.official import mathverse, mathvision, mathvista, wemath

MODES = ("official", "strict")


@dataclass(frozen=True)
class Judgement:
    extracted: str | None
    correct: bool


@dataclass
class ScoringContext:
    extractor: ChatClient | None = None
    timeout_s: float = 1.0

    @property
    def extraction(self) -> str:
        """How `official` mode extracts where the official pipeline asks GPT."""
        return f"LLM ({self.extractor.cfg.model})" if self.extractor else "rules"


Scorer = Callable[[Sequence[EvalSample], Sequence[str], ScoringContext], list[Judgement]]
SCORERS: dict[str, dict[str, Scorer]] = defaultdict(dict)


def register_scorer(mode: str, benchmark: str, scorer: Scorer) -> None:
    """Use `scorer` for `benchmark` in `mode` (replaces the built-in one)."""
    SCORERS[mode][benchmark] = scorer


def get_scorer(mode: str, benchmark: str) -> Scorer:
    try:
        return SCORERS[mode][benchmark]
    except KeyError:
        known = {m: sorted(b) for m, b in SCORERS.items()}
        raise KeyError(
            f"no scorer for mode {mode!r}, benchmark {benchmark!r}; known: {known}"
        ) from None


def score(
    mode: str, samples: Sequence[EvalSample], responses: Sequence[str], ctx: ScoringContext
) -> list[Judgement]:
    """Judge each response to its sample in `mode`; samples of one benchmark."""
    if not samples:
        return []
    return get_scorer(mode, samples[0].benchmark)(samples, [r or "" for r in responses], ctx)


# --------------------------------------------------------------------------- strict


def strict_verdict(sample: EvalSample, response: str) -> Judgement:
    """The GRPO accuracy reward's verdict, against the gold and its accepted variants."""
    golds = [sample.gold, *sample.gold_variants]
    choices = [sample.choices] * len(golds)
    rewards = accuracy_reward([response] * len(golds), golds, choices=choices)
    return Judgement(extract_boxed(response[-20_000:]) or None, max(rewards) > 0)


def score_strict(
    samples: Sequence[EvalSample], responses: Sequence[str], ctx: ScoringContext
) -> list[Judgement]:
    return [strict_verdict(s, r) for s, r in zip(samples, responses, strict=True)]


# --------------------------------------------------------------------------- official


def _rule_extraction(sample: EvalSample, response: str) -> str:
    """Stand-in for GPT extraction: last box, else "the answer is", else the last line."""
    return extract_answer(response, sample.choices) or ""


def _mathvista_rule_extraction(sample: EvalSample, response: str) -> str:
    """GPT's part without GPT: the stated answer; for number answers the bare number."""
    answer = _rule_extraction(sample, response)
    if sample.info["answer_type"] in ("integer", "float"):
        return mathvista.bare_number(answer, sample.info["unit"]) or answer
    return answer


def score_mathvista(
    samples: Sequence[EvalSample], responses: Sequence[str], ctx: ScoringContext
) -> list[Judgement]:
    extractions = [
        mathvista.quick_extraction(r, s.info) for s, r in zip(samples, responses, strict=True)
    ]
    pending = [i for i, e in enumerate(extractions) if e is None]
    if ctx.extractor is not None:
        prompts = [
            mathvista.extraction_prompt(samples[i].info["query"], responses[i]) for i in pending
        ]
        answers = ctx.extractor.complete(prompts, desc="mathvista extraction")
    else:
        answers = [_mathvista_rule_extraction(samples[i], responses[i]) for i in pending]
    for i, answer in zip(pending, answers, strict=True):
        extractions[i] = answer
    out = []
    for sample, extraction in zip(samples, extractions, strict=True):
        info = sample.info
        prediction = mathvista.normalize_extraction(
            extraction,
            info["choices"],
            info["question_type"],
            info["answer_type"],
            info["precision"],
        )
        out.append(Judgement(extraction, mathvista.is_correct(prediction, info["answer"])))
    return out


def score_mathverse(
    samples: Sequence[EvalSample], responses: Sequence[str], ctx: ScoringContext
) -> list[Judgement]:
    if ctx.extractor is None:
        extractions = [_rule_extraction(s, r) for s, r in zip(samples, responses, strict=True)]
        verdicts = [
            _mathverse_rule_match(s, e, ctx.timeout_s)
            for s, e in zip(samples, extractions, strict=True)
        ]
        return [Judgement(e or None, v) for e, v in zip(extractions, verdicts, strict=True)]
    raw = ctx.extractor.complete(
        [mathverse.extraction_prompt(r) for r in responses], desc="mathverse extraction"
    )
    extractions = [mathverse.clean_extraction(text) for text in raw]
    prompts = [
        mathverse.judge_prompt(s.info["question_for_eval"], s.info["answer"], e)
        for s, e in zip(samples, extractions, strict=True)
    ]
    judged = ctx.extractor.complete(prompts, desc="mathverse judge")
    return [
        Judgement(e or None, mathverse.parse_judgement(j) is True)
        for e, j in zip(extractions, judged, strict=True)
    ]


def _mathverse_rule_match(sample: EvalSample, extraction: str, timeout_s: float) -> bool:
    """Stand-in for the GPT judge: the official quick match (equal strings), else equivalence."""
    if not extraction:
        return False
    if extraction == sample.info["answer"]:
        return True
    return any(
        is_equivalent(extraction, gold, choices=sample.choices, timeout_s=timeout_s)
        for gold in (sample.gold, *sample.gold_variants)
    )


def score_mathvision(
    samples: Sequence[EvalSample], responses: Sequence[str], ctx: ScoringContext
) -> list[Judgement]:
    return [
        Judgement(
            mathvision.model_answer(r) or None,
            mathvision.is_correct(r, s.gold, s.choices, ctx.timeout_s),
        )
        for s, r in zip(samples, responses, strict=True)
    ]


def score_wemath(
    samples: Sequence[EvalSample], responses: Sequence[str], ctx: ScoringContext
) -> list[Judgement]:
    letters = [wemath.read_letter(r) for r in responses]
    return [Judgement(x, x == s.gold) for s, x in zip(samples, letters, strict=True)]


def score_synthetic(
    samples: Sequence[EvalSample], responses: Sequence[str], ctx: ScoringContext
) -> list[Judgement]:
    """No official scorer exists: the answer stated last (box, "the answer is", last line)."""
    out = []
    for sample, response in zip(samples, responses, strict=True):
        pred = _rule_extraction(sample, response) or None
        ok = pred is not None and is_equivalent(pred, sample.gold, timeout_s=ctx.timeout_s)
        out.append(Judgement(pred, ok))
    return out


for _name in ("synthetic", "mathvista", "wemath", "mathverse", "mathvision"):
    register_scorer("strict", _name, score_strict)
register_scorer("official", "mathvista", score_mathvista)
register_scorer("official", "mathverse", score_mathverse)
register_scorer("official", "mathvision", score_mathvision)
register_scorer("official", "wemath", score_wemath)
register_scorer("official", "synthetic", score_synthetic)


# --------------------------------------------------------------------------- aggregation

BREAKDOWNS = {
    "synthetic": ("family",),
    "mathvista": ("question_type", "answer_type"),
    "wemath": ("steps",),
    "mathverse": ("version", "question_type"),
    "mathvision": ("level", "subject", "level_subject"),
}


def slug(value: str) -> str:
    """A metric-name-safe form: `Vision Only` -> `vision_only`, `SFT+RL` -> `sft_rl`."""
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_") or "none"


def _mean(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def aggregate(
    benchmark: str,
    infos: Sequence[Mapping[str, Any]],
    correct: Sequence[bool],
    extracted: Sequence[str | None],
    errors: Sequence[bool],
) -> dict[str, float]:
    """Accuracy, counts, per-group accuracies (`version/vision_only`) and benchmark-specific scores.

    `infos` are the samples' `info` dicts (what scoring and breakdowns need, no images).
    """
    metrics = {
        "accuracy": _mean(correct),
        "n": float(len(infos)),
        "correct": float(sum(correct)),
        "no_answer": float(sum(e is None for e in extracted)),
        "errors": float(sum(errors)),
    }
    for key in BREAKDOWNS.get(benchmark, ()):
        groups: dict[str, list[bool]] = defaultdict(list)
        for info, ok in zip(infos, correct, strict=True):
            groups[slug(info.get(key, ""))].append(ok)
        for value, oks in sorted(groups.items()):
            metrics[f"{key}/{value}"] = _mean(oks)
    if benchmark == "mathverse":
        metrics["versions"] = float(len({info.get("version") for info in infos}))
    if benchmark == "wemath":
        metrics.update(wemath_scores(infos, correct))
    return metrics


def wemath_scores(infos: Sequence[Mapping[str, Any]], correct: Sequence[bool]) -> dict[str, float]:
    """We-Math's four-dimensional metrics over the problems whose sub-problems and composite are all present.

    For a problem with one-step sub-problems s_i and the multi-step composite m:
    IK = some s_i wrong and m wrong; IG = all s_i right, m wrong;
    CM strict = all s_i right and m right, loose = some s_i right and m right;
    RM strict = some s_i wrong and m right, loose = all s_i wrong and m right.
    Score = (N - 0.5 IG - RM - IK) / N; RM is reported as RM / (CM + RM), the others per N.
    """
    parts: dict[str, dict[str, bool]] = defaultdict(dict)
    for info, ok in zip(infos, correct, strict=True):
        parts[info["group"]][info["part"]] = bool(ok)
    counts: dict[str, int] = defaultdict(int)
    one_step: list[bool] = []
    multi: dict[str, list[bool]] = {"2steps": [], "3steps": []}
    for group, answers in parts.items():
        n_steps = 3 if group.startswith("3steps") else 2
        needed = [str(i) for i in range(1, n_steps + 1)]
        if "multi" not in answers or any(p not in answers for p in needed):
            continue
        subs, composite = [answers[p] for p in needed], answers["multi"]
        counts["groups"] += 1
        one_step.extend(subs)
        multi[f"{n_steps}steps"].append(composite)
        counts["ik"] += (not all(subs)) and not composite
        counts["ig"] += all(subs) and not composite
        counts["cm_strict"] += all(subs) and composite
        counts["rm_strict"] += (not all(subs)) and composite
        counts["cm_loose"] += any(subs) and composite
        counts["rm_loose"] += (not any(subs)) and composite
    n = counts["groups"]
    if not n:
        return {"groups": 0.0}
    out = {"groups": float(n), "ik": counts["ik"] / n, "ig": counts["ig"] / n}
    for mode in ("strict", "loose"):
        cm, rm = counts[f"cm_{mode}"], counts[f"rm_{mode}"]
        out[mode] = (n - 0.5 * counts["ig"] - rm - counts["ik"]) / n
        out[f"cm_{mode}"] = cm / n
        out[f"rm_{mode}"] = rm / (cm + rm) if cm + rm else 0.0
    out["one_step"] = _mean(one_step)
    for key, name in (("2steps", "two_step"), ("3steps", "three_step")):
        if multi[key]:
            out[name] = _mean(multi[key])
    return out
