"""GPU check: SFT and GRPO at Qwen2.5-VL-3B shape on one GPU, within one short device run.

    python bench/gpu_check.py --out $OUT --budget-s 480     # on the GPU machine (bench/gpu_check.sh)
    python bench/gpu_check.py --out /tmp/gc --dry-run        # CPU, toy sizes, same code paths

Parts, in this order, each in its own process with its own time box (a part that fails or runs
out of time is recorded, and the others still run; none starts once the global budget is spent):

- setup      a randomly initialised Qwen2.5-VL-3B (the published config, no weights, no hub)
             saved in bf16, and SFT/RL sets of 1.2-MP images through data_prep
- sft        SFT with the paper's recipe (configs/qwen2.5-vl-3b.yaml: bf16, gradient
             checkpointing, frozen vision tower, 8192-token sequences, batch 1 x accumulation 8):
             tokens/s, peak GPU memory, MFU
- sft_zero2  the same through DeepSpeed ZeRO-2 (components/common/zero2.json) on the one GPU
- grpo       GRPO steps at 3B shape with the HF generation backend: rollout tokens/s, update
             time, peak memory (the first step is warm-up)
- smoke      the tiny pipeline's stages (data_prep, SFT, GRPO, eval; then SFT and GRPO under
             ZeRO-2) for a few steps: every `.to(device)` path on CUDA, no kfp

MFU = model FLOPs per token x tokens/s / peak, with model FLOPs per token = 6 N + 12 L d s
(N: language-model weights including lm_head, vision tower left out; L layers, d width,
s sequence length; causal masking not discounted; recomputation under gradient checkpointing
not counted) over the H100/H200 SXM dense bf16 peak of 989 TFLOP/s (--peak-tflops).
Writes gpu_check.json, gpu_check.md and gpu_check.log (the parts' log tails) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_parts import LEFTOVERS, PARTS, SHAPES, run_part  # noqa: E402

PEAK_BF16_TFLOPS = 989.0  # H100 / H200 SXM, dense bf16, vendor datasheet
MFU_FORMULA = "(6 N + 12 L d s) x tokens/s / peak; N = LM weights incl. lm_head (vision excluded)"
BOX_S = {"smoke": 150, "setup": 120, "sft": 120, "sft_zero2": 120, "grpo": 180}
NEEDS_SETUP = ("sft", "sft_zero2", "grpo")
DRY_RUN_BOX_FACTOR = (
    5  # boxes are sized for the GPU machine; on a shared CPU imports alone take a minute
)
MIN_PART_S = 30  # a part with less time left than this is skipped, not started
LOG_TAIL_LINES = 150
SET_HELP = "KEY=VALUE config override for the 3B parts, after the check's own (repeatable)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="folder for gpu_check.{json,md,log}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="all parts together")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, seconds")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {list(PARTS)}"
    )
    parser.add_argument("--peak-tflops", type=float, default=PEAK_BF16_TFLOPS)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help=SET_HELP)
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one part
    parser.add_argument("--ctx", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.out is None:
        parser.error("--out is required")
    unknown = sorted(set(args.parts.split(",")) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; valid: {list(PARTS)}")
    args.parts = [p for p in PARTS if p in args.parts.split(",")]
    return args


# --------------------------------------------------------------------------- one part in a process


@dataclass
class PartOutcome:
    status: str  # ok | failed | timeout | skipped
    seconds: float
    result: dict[str, Any]
    error: str | None = None


def run_worker(name: str, ctx: dict[str, Any], timeout: float, log_path: Path) -> PartOutcome:
    """Run part `name` in a new process group; kill the whole group at `timeout` seconds."""
    result_path = Path(ctx["work"]) / f"{name}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
           "--ctx", json.dumps(ctx), "--result", str(result_path)]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    if ctx["shape"] == "dry-run":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path even on a GPU machine
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            stop_group(proc)
            status, code = "timeout", None
        except BaseException:  # the driver is stopped: its part, in its own session, goes too
            stop_group(proc)
            raise
    seconds = time.perf_counter() - start
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    error = None
    if status == "failed":
        error = last_error(log_path) or f"exit code {code}"
    elif status == "timeout":
        error = f"stopped after its time box of {timeout:.0f} s"
    return PartOutcome(status, round(seconds, 1), result, error)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the part's process group, SIGKILL it if still there after 15 s (frees the GPU)."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def last_error(log_path: Path) -> str | None:
    """The exception line that ended the part (the last line naming an Error or Exception)."""
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()[:1000]
    return None


def tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------- driver


def check_device(dry_run: bool) -> None:
    """Refuse a GPU run without CUDA (`is_available` creates no CUDA context in this process)."""
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --dry-run for the CPU path")


def device_name(outcomes: dict[str, PartOutcome]) -> str:
    """The device the parts ran on, as they report it."""
    for outcome in outcomes.values():
        name = outcome.result.get("process", {}).get("device")
        if name:
            return name
    return "unknown (no part reported)"


def run_parts(args: argparse.Namespace, work: Path) -> dict[str, PartOutcome]:
    ctx = {"work": str(work), "shape": "dry-run" if args.dry_run else "3b",
           "peak_tflops": args.peak_tflops, "overrides": args.overrides}  # fmt: skip
    deadline = time.monotonic() + args.budget_s
    outcomes: dict[str, PartOutcome] = {}
    for name in args.parts:
        left = deadline - time.monotonic()
        if name in NEEDS_SETUP and "setup" in outcomes and outcomes["setup"].status != "ok":
            outcomes[name] = PartOutcome("skipped", 0.0, {}, "setup did not finish")
        elif left < MIN_PART_S:
            outcomes[name] = PartOutcome(
                "skipped", 0.0, {}, f"global budget spent ({left:.0f} s left)"
            )
        else:
            timeout = min(BOX_S[name] * (DRY_RUN_BOX_FACTOR if args.dry_run else 1), left)
            print(f"[gpu_check] {name}: start (time box {timeout:.0f} s)", flush=True)
            outcomes[name] = run_worker(name, ctx, timeout, work / f"{name}.log")
            for leftover in LEFTOVERS.get(name, ()):  # the 3B GRPO checkpoint alone is ~22 GB
                shutil.rmtree(work / leftover, ignore_errors=True)
        o = outcomes[name]
        print(f"[gpu_check] {name}: {o.status} in {o.seconds:.0f} s"
              + (f" - {o.error}" if o.error else ""), flush=True)  # fmt: skip
    return outcomes


def build_report(
    args: argparse.Namespace, outcomes: dict[str, PartOutcome], total_s: float
) -> dict[str, Any]:
    from bench.machine import software_facts

    return {
        "benchmark": "gpu_check",
        "dry_run": args.dry_run,
        "device": device_name(outcomes),
        "budget_s": args.budget_s,
        "total_s": round(total_s, 1),
        "peak_tflops": args.peak_tflops,
        "mfu_formula": MFU_FORMULA,
        "overrides": args.overrides,
        "shape": asdict(SHAPES["dry-run" if args.dry_run else "3b"]),
        **software_facts(),
        "parts": {name: asdict(o) for name, o in outcomes.items()},
    }


def fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The headline numbers per part, then each part's status."""
    parts = report["parts"]
    lines = [
        f"# GPU check ({'dry run, CPU' if report['dry_run'] else report['device']})",
        "",
        f"{report['time']}, torch {report['torch']}, budget {report['budget_s']:.0f} s, "
        f"took {report['total_s']:.0f} s. MFU = {report['mfu_formula']}; "
        f"peak {report['peak_tflops']:.0f} TFLOP/s (dense bf16). Peak memory: torch's peak "
        "allocated on a GPU, the process's peak RSS on a CPU.",
        "",
        "| SFT | DeepSpeed | seq len | tokens/s | TFLOP/s | MFU | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("sft", "sft_zero2"):
        r = parts.get(name, {}).get("result", {}).get("result")
        if r:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            lines.append(
                f"| {name} | {r['deepspeed']} | {r['seq_len']:.0f} | {r['tokens_per_s']:.0f} | "
                f"{r['model_tflops_per_s']:.1f} | {mfu} | "
                f"{fmt(r['peak_mem_mib'])} |"
            )
    steps = parts.get("grpo", {}).get("result", {}).get("steps", [])
    if steps:
        lines += ["", "| GRPO step | rollout s | rollout tokens/s | update s | peak MiB |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for s in steps:
            lines.append(
                f"| {s['step']} | {s['rollout_s']:.1f} | {s['rollout_tokens_per_s']:.0f} | "
                f"{s['update_s']:.1f} | {fmt(s['peak_mem_mib'])} |"
            )
    lines += ["", "| part | status | seconds | note |", "|---|---|---|---|"]
    for name, p in parts.items():
        lines.append(f"| {name} | {p['status']} | {p['seconds']:.0f} | {p['error'] or ''} |")
    smoke = parts.get("smoke", {}).get("result", {})
    stages = {k: v for k, v in smoke.items() if isinstance(v, dict) and "status" in v}
    if stages:
        lines += ["", "| smoke stage | status | seconds | peak MiB |", "|---|---|---|---|"]
        for name, st in stages.items():
            lines.append(f"| {name} | {st['status']} | {fmt(st.get('seconds'), '.1f')} | "
                         f"{fmt(st.get('peak_mem_mib'))} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, report: dict[str, Any], work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    logs = [f"===== {name} =====\n{tail(work / f'{name}.log', LOG_TAIL_LINES)}"
            for name in report["parts"]]  # fmt: skip
    (out / "gpu_check.log").write_text("\n\n".join(logs) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_part(args.worker, args.ctx, args.result)
    start = time.perf_counter()
    check_device(args.dry_run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the running part is stopped
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.work) as tmp:
        outcomes = run_parts(args, Path(tmp))
        report = build_report(args, outcomes, time.perf_counter() - start)
        write_outputs(args.out, report, Path(tmp))
    print(markdown(report))
    print(f"wrote {args.out}/gpu_check.{{json,md,log}}")
    return 0 if all(o.status == "ok" for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
