"""How far eval's scoring is from the official scorers, on published model outputs.

    PYTHONPATH=. python bench/eval_parity.py      # -> bench/results/eval_parity.{json,md}
    PYTHONPATH=. python bench/eval_parity.py --mathvision ../MATH-V   # also MathVision

For each official output file (tests/eval/fixtures/mathvista_reference): the official
accuracy, and eval's accuracy and per-item agreement with the official verdicts in
- `official` mode with GPT's extractions played back by a local chat-completions server
  (what a user gets with `eval.extractor` pointing at the judge model),
- `official` mode with no extractor (rule-based extraction in GPT's place),
- `strict` mode (the last `\\boxed{}`, as the GRPO reward checks it; these models were not
  asked to box their answers, so it is low by design).
MathVision (`--mathvision`, a checkout of mathllm/MATH-V: `data/test.jsonl` and `outputs/`):
`official` mode's verdicts against the official `correct` of each output file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coldstart.common.answers import warm_up  # noqa: E402
from coldstart.common.config import BenchmarkSpec, ExtractorConfig  # noqa: E402
from coldstart.eval.benchmarks import load_benchmark  # noqa: E402
from coldstart.eval.extractor import ChatClient  # noqa: E402
from coldstart.eval.scoring import ScoringContext, score  # noqa: E402
from tests.eval import reference  # noqa: E402
from tests.eval.chat_server import ChatServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def compare(judged, verdicts) -> dict[str, float]:
    n = len(verdicts)
    return {
        "accuracy": round(100 * sum(j.correct for j in judged) / n, 2),
        "agreement": round(
            100 * sum(j.correct == v for j, v in zip(judged, verdicts, strict=True)) / n, 2
        ),
    }


def measure(samples, model: str, tmp: Path) -> dict:
    official = reference.read(model)
    responses = [official["items"][s.id]["response"] for s in samples]
    verdicts = [official["items"][s.id]["true_false"] for s in samples]
    row = {"model": model, "official": round(100 * official["official_correct"] / len(samples), 2)}
    with ChatServer(reference.replay_extractions(model)) as server:
        cfg = ExtractorConfig(base_url=server.base_url, model="gpt-replay", max_concurrency=8)
        client = ChatClient(cfg, tmp / f"{model}.sqlite")
        row["official_llm"] = compare(
            score("official", samples, responses, ScoringContext(client)), verdicts
        )
        row["llm_requests"] = client.sent
        client.close()
    row["official_rules"] = compare(
        score("official", samples, responses, ScoringContext()), verdicts
    )
    row["strict"] = compare(score("strict", samples, responses, ScoringContext()), verdicts)
    return row


def _table(title: str, note: str, header: list[str], body: list[list[str]]) -> str:
    lines = [f"# {title}", "", note, "", "| " + " | ".join(header) + " |"]
    lines.append("|---|" + "---:|" * (len(header) - 1))
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict]) -> str:
    modes = ("official_llm", "official_rules", "strict")
    return _table(
        "Eval scoring vs MathVista's official scorer (testmini, 1,000 problems)",
        "Accuracy in %, in brackets the share of per-item verdicts equal to the official ones. "
        "`bench/eval_parity.py`; official outputs from lupantech/MathVista `results/`.",
        [
            "output file",
            "official",
            "official mode, LLM extraction",
            "official mode, rules",
            "strict mode",
        ],
        [
            [r["model"], f"{r['official']:.1f}"]
            + [f"{r[k]['accuracy']:.1f} ({r[k]['agreement']:.1f})" for k in modes]
            for r in rows
        ],
    )


MATHVISION_OUTPUTS = (
    "open-source/LLavA/LLaVA-v1.5-13B",
    "closed-source/Qwen/Qwen-VL-Max-CoT",
    "closed-source/GPT/GPT4-CoT (Text Only)",
)


def measure_mathvision(checkout: Path) -> list[dict]:
    """Official-mode verdicts vs the official `correct` of MATH-V's published outputs."""
    from coldstart.eval.official.mathvision import is_correct

    problems = {}
    for line in (checkout / "data" / "test.jsonl").read_text().splitlines():
        problem = json.loads(line)
        problems[problem["id"]] = problem
    rows = []
    for name in MATHVISION_OUTPUTS:
        lines = (checkout / "outputs" / f"{name}.jsonl").read_text().splitlines()
        items = [json.loads(line) for line in lines]
        ours = [
            is_correct(
                x["response"],
                str(problems[x["id"]]["answer"]),
                problems[x["id"]]["options"] or None,
                1.0,
            )
            for x in items
        ]
        n = len(items)
        rows.append(
            {
                "model": Path(name).name,
                "official": round(100 * sum(x["correct"] for x in items) / n, 2),
                "official_mode": round(100 * sum(ours) / n, 2),
                "agreement": round(
                    100 * sum(o == x["correct"] for o, x in zip(ours, items, strict=True)) / n, 2
                ),
            }
        )
        print(rows[-1], flush=True)
    return rows


def markdown_mathvision(rows: list[dict]) -> str:
    return "\n" + _table(
        "MathVision: official mode vs MATH-V's official scorer (test, 3,040 problems)",
        "Accuracy in %; official outputs and verdicts from mathllm/MATH-V `outputs/`.",
        ["output file", "official", "official mode", "verdicts equal"],
        [
            [
                r["model"],
                f"{r['official']:.2f}",
                f"{r['official_mode']:.2f}",
                f"{r['agreement']:.2f}",
            ]
            for r in rows
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mathvision", type=Path, help="a checkout of mathllm/MATH-V")
    args = parser.parse_args()
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        path = reference.benchmark_file(Path(tmp))
        samples = load_benchmark(BenchmarkSpec(name="mathvista", uri=str(path)), None, Path(tmp))
        rows = [measure(samples, model, Path(tmp)) for model in reference.MODELS]
    result = {"source": "lupantech/MathVista results/ @ 53d5258", "rows": rows}
    text = markdown(rows)
    if args.mathvision:
        result["mathvision"] = measure_mathvision(args.mathvision)
        text += markdown_mathvision(result["mathvision"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_parity.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "eval_parity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
