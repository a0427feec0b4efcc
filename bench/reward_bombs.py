"""Reward bombs: how long the GRPO accuracy reward takes on 1,000 completions, ordinary and adversarial.

    .venv/bin/python bench/reward_bombs.py                          # this checkout, 3 repeats
    .venv/bin/python bench/reward_bombs.py --baseline /work/main    # and another checkout, interleaved

Sets of 1,000 boxed answers (bench/reward_completions.py): *ordinary* (right and wrong
answers in the forms models write, all different), *rollout* (the same kinds shaped as a GRPO
batch: 100 problems x 10 samples, answers repeating within a group), *adversarial* (that batch
with 40% of the answers replaced by bombs such as ``\\binom{10^8}{5 \\cdot 10^7}``,
``99999999999^{99999}``, ``\\Gamma(10^{7})``, ``(10^9)!``, towers, huge products, each bomb
different) and *adversarial_unique* (bombs and ordinary answers, no two alike).
Each measurement runs in a fresh interpreter
that imports the checkout under test, warms the verifier up (not timed), then scores the whole
set through the reward's own path; it records the batch's wall time, each completion's own
time (max, p99, how many over the 1 s bound), the rewards, and the verifier's counters.
Checkouts without the parallel pool are timed one completion after another, as their
``accuracy_reward`` does. The baseline runs ``--baseline-repeats`` times and its adversarial
sets are cut to ``--baseline-adversarial`` completions: each bomb there costs a timeout plus
a fresh worker (about 3 s).

Results go to bench/results/reward_bombs.{json,md}; the median over repeats is reported. The
machine is shared: the load average before and after is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME_BOUND_S = 1.0
SETS = ("ordinary", "rollout", "adversarial", "adversarial_unique")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="completions per set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="checkout to compare with")
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--baseline-adversarial", type=int, default=50, help="0 = skip")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated subset")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "reward_bombs")
    parser.add_argument("--measure", choices=SETS, help=argparse.SUPPRESS)  # child mode
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- child: one measurement


def measure(set_name: str, n: int) -> dict:
    """Score one set in this interpreter (whose ``components`` is the checkout under test)."""
    sys.path.insert(0, str(Path(__file__).parent))  # a sibling module; `components` stays the
    from reward_completions import SETS as BUILDERS  # checkout's
    from reward_completions import as_completion

    from coldstart.common import rewards
    from coldstart.common.answers import warm_up

    cases = BUILDERS[set_name](n)
    jobs = [(as_completion(answer), gold, None) for answer, gold in cases]
    warm_up()
    if hasattr(rewards, "score_response"):
        result = _measure_pool(jobs)
    else:
        result = _measure_serial(jobs, rewards.accuracy_reward)
    latencies = sorted(result.pop("latencies"))
    return {
        **result,
        "n": len(jobs),
        "max_completion_s": latencies[-1],
        "p99_completion_s": latencies[int(0.99 * (len(latencies) - 1))],
        "over_bound": sum(t > TIME_BOUND_S for t in latencies),
    }


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process, its reaped children and the live worker subprocess
    of a checkout without the pool. (The pool's workers are the zygote's children, reaped by
    the kernel: their seconds cannot be read from here, so the pool's runs report none.)"""
    from coldstart.common import answers

    pids = [answers._VERIFIER._process.pid]
    self_, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    out = {
        "self": self_.ru_utime + self_.ru_stime,
        "children": children.ru_utime + children.ru_stime,
    }
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[str(pid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _scoring_cpu_seconds(verifier) -> float:
    """CPU seconds so far of this process and its answer-checking processes. Pebble's workers
    are children of multiprocessing's fork server: the live ones are read in /proc, a worker
    killed on a timeout takes its seconds with it (the report counts timeouts). (A checkout
    with the zygote pool reads its own: its workers are the zygote's children.)"""
    used = resource.getrusage(resource.RUSAGE_SELF)
    own = used.ru_utime + used.ru_stime
    if hasattr(verifier, "pool_cpu_seconds"):
        return own + verifier.pool_cpu_seconds()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = os.sysconf("SC_CLK_TCK")
    live = 0
    for pid in verifier.worker_pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # it has just exited
            continue
        live += int(fields[11]) + int(fields[12])  # utime, stime
    return own + reaped.ru_utime + reaped.ru_stime + live / tick


def _measure_pool(jobs: list[tuple]) -> dict:
    """The reward's path: ``score_response`` mapped over the pool (what ``accuracy_reward`` runs)."""
    from coldstart.common import verifier
    from coldstart.common.rewards import score_response

    latencies = [0.0] * len(jobs)

    def timed(item: tuple[int, tuple], timeout_s: float) -> float:
        index, (response, gold, choices) = item
        start = time.perf_counter()
        reward = score_response(response, gold, choices, timeout_s=timeout_s)
        latencies[index] = time.perf_counter() - start
        return reward

    before = verifier.counts()
    cpu_before = _scoring_cpu_seconds(verifier)
    start = time.perf_counter()
    scores = verifier.map_within_deadline(
        timed, list(enumerate(jobs)), timeout_s=TIME_BOUND_S, deadline_s=None, default=0.0
    )
    total = time.perf_counter() - start
    cpu = _scoring_cpu_seconds(verifier) - cpu_before
    after = verifier.counts()
    return {
        "total_s": total,
        "cpu_s": cpu,
        "latencies": latencies,
        "rewards": scores,
        "counts": {k: after[k] - before[k] for k in after},
        "workers": verifier.pool_size(),
    }


def _measure_serial(jobs: list[tuple], accuracy_reward) -> dict:
    """A checkout without the pool: one completion after another, as its ``accuracy_reward``."""
    latencies, scores = [], []
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    for response, gold, _ in jobs:
        t = time.perf_counter()
        scores.extend(accuracy_reward([response], [gold]))
        latencies.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    cpu = sum(_cpu_seconds().values()) - sum(cpu_before.values())
    return {"total_s": total, "cpu_s": cpu, "latencies": latencies, "rewards": scores}


# --------------------------------------------------------------------------- parent: interleave, report


def run_child(checkout: Path, set_name: str, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", set_name, "--n", str(n)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {set_name} in {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    keys = ("total_s", "max_completion_s", "p99_completion_s", "over_bound")
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["cpu_s"] = statistics.median(r["cpu_s"] for r in runs) if "cpu_s" in runs[0] else None
    out["total_s_all"] = [round(r["total_s"], 3) for r in runs]
    out["n"] = runs[0]["n"]
    out["reward_sum"] = runs[0]["rewards"] and sum(runs[0]["rewards"])
    for extra in ("counts", "workers"):
        if extra in runs[0]:
            out[extra] = runs[-1][extra]
    return out


def disagreements(a: list[float], b: list[float]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=False))


def run(args: argparse.Namespace) -> dict:
    from bench.machine import machine_facts

    load_before = os.getloadavg()
    impls = {"this": ROOT} | ({"baseline": args.baseline} if args.baseline else {})
    runs: dict[str, dict[str, list[dict]]] = {i: {s: [] for s in SETS} for i in impls}
    sets = args.sets.split(",")
    for repeat in range(args.repeats):
        for impl, checkout in impls.items():
            for set_name in sets:
                n = args.n
                if impl == "baseline":
                    if set_name.startswith("adversarial"):
                        n = args.baseline_adversarial
                    if n == 0 or repeat >= args.baseline_repeats:
                        continue
                result = run_child(checkout, set_name, n)
                runs[impl][set_name].append(result)
                print(
                    f"repeat {repeat} {impl:8s} {set_name:11s} n={n}: {result['total_s']:.2f} s, "
                    f"max {result['max_completion_s']:.3f} s per completion",
                    flush=True,
                )
    report = {
        "bench": "reward_bombs",
        "time_bound_s": TIME_BOUND_S,
        "repeats": args.repeats,
        "results": {
            impl: {s: summarize(r) for s, r in sets.items() if r} for impl, sets in runs.items()
        },
        "machine": machine_facts(load_before),
    }
    if args.baseline:
        report["reward_disagreements"] = {
            s: disagreements(runs["this"][s][0]["rewards"], runs["baseline"][s][0]["rewards"])
            for s in sets
            if runs["this"][s] and runs["baseline"][s]
        }
    return report


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Reward bombs ({m['time']})",
        "",
        f"`python bench/reward_bombs.py`: median of {report['repeats']} runs on {m['cpus']} CPUs "
        f"(shared machine: load average {m['load_avg_before'][0]} before, "
        f"{m['load_avg_after'][0]} after). Per-completion time bound "
        f"{report['time_bound_s']} s.",
        "",
        "| code | set | completions | batch s (median) | runs | CPU s | max s per completion "
        "| over bound | timeouts | rejected too big |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for impl, sets in report["results"].items():
        for set_name, r in sets.items():
            counts = r.get("counts", {})
            lines.append(
                f"| {impl} | {set_name} | {r['n']} | {r['total_s']:.2f} | {r['total_s_all']} "
                f"| {'-' if r['cpu_s'] is None else format(r['cpu_s'], '.1f')} "
                f"| {r['max_completion_s']:.3f} | {r['over_bound']} "
                f"| {counts.get('timeouts', '-')} | {counts.get('too_big', '-')} |"
            )
    lines += [
        "",
        "CPU s: seconds of CPU the scoring used, this process and its answer-checking "
        "processes together (the pool's workers, live and reaped); unlike the batch "
        "time, the load of a shared machine hardly changes it, and CPU s / CPUs is the batch "
        "time on idle cores with perfect parallelism. Over bound: completions whose own wall time passed the "
        "bound (its check plus waiting for a CPU on a loaded machine). Timeouts: checks cut off "
        "at the bound, scored 0, their worker killed and replaced.",
    ]
    for set_name, n_differ in report.get("reward_disagreements", {}).items():
        lines.append(
            f"\n{set_name}: {n_differ} rewards differ between this code and the baseline "
            "(over the completions both scored)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.n)))
        return 0
    sys.path.insert(0, str(ROOT))
    report = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.output.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
