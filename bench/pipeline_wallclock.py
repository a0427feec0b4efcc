"""Pipeline wall clock: the local `coldstart run` (kfp.local), stage by stage wall time and peak memory.

    .venv/bin/python bench/pipeline_wallclock.py                    # configs/tiny.yaml, the whole DAG
    .venv/bin/python bench/pipeline_wallclock.py --ablation         # + RL-only branch and 4-model eval
    .venv/bin/python bench/pipeline_wallclock.py --quick            # a minute or two, for CI
    .venv/bin/python bench/pipeline_wallclock.py --config FILE --set grpo.total_steps=5

The run is the real command (`python -m coldstart.pipelines.cli run`) in a subprocess, with its output in a
fresh folder. While it runs, the process tree is polled with psutil: every kfp task is a
`python -m kfp.dsl.executor_main ... --function_to_execute <component>` process, and each sample
sums the RSS of that process and its descendants (answer-checking workers, torchrun ranks) into
the task's peak. A task's wall time is its process lifetime, first to last sample (python
start-up and imports included; resolution: the poll interval); the MLflow column is the stage's own run (start to end of
`stage_run`, read from the store the run prints), i.e. without start-up. kfp.local runs tasks
one after another, so "orchestration" is the total minus the tasks: compiling, the executor
hand-offs and the launcher. Results go to bench/results/pipeline_wallclock[_quick].json (+ .md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine_facts  # noqa: E402
from coldstart.common.config import load_config  # noqa: E402

GOAL_S = 300.0  # the whole tiny DAG under 5 minutes on 2 cores
# The same shrinking as tests/pipelines/test_local_run.py: every stage runs, each for seconds.
QUICK_OVERRIDES = [
    "data.synthetic.train_per_family=12", "data.synthetic.test_per_family=4", "sft.max_steps=12",
    "grpo.total_steps=2", "eval.max_new_tokens=24", "eval.benchmarks=[{name: synthetic, limit: 8}]",
]  # fmt: skip
EXECUTOR_MODULE = "kfp.dsl.executor_main"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        default=str(ROOT / "configs" / "tiny.yaml"),
        help="pipeline config (default configs/tiny.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed to `coldstart run` (repeatable)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: few rows and steps ({})".format(" ".join(QUICK_OVERRIDES)),
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="run the ablation DAG (RL-only branch, 4-model eval)",
    )
    parser.add_argument(
        "--interval", type=float, default=0.2, help="seconds between process-tree samples"
    )
    parser.add_argument(
        "--workdir", default=None, help="output_dir of the run (default: a temp dir, deleted)"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON path (default bench/results/pipeline_wallclock[_quick].json)",
    )
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    args.output = Path(
        args.output or ROOT / "bench" / "results" / f"pipeline_wallclock{suffix}.json"
    )
    return args


# --------------------------------------------------------------------------- process sampling


@dataclass
class TaskStats:
    """One kfp task as seen from outside: its executor process and everything it starts."""

    task: str  # stage label: data_prep, base_model, sft, grpo, grpo_from_base, eval
    component: str  # the kfp component function, e.g. grpo_op
    task_dir: str  # the task's folder under the pipeline root, e.g. grpo-op-2
    pid: int
    start: (
        float  # first time it was seen (epoch s; psutil's create_time can be ~1 s off time.time())
    )
    end: float = 0.0  # last time it was seen alive
    peak_rss_mb: float = 0.0  # largest sum of RSS over the task's process tree in one sample
    peak_procs: int = 0
    cpu_s: float = 0.0  # user + system of the task's processes, at the last sample

    @property
    def wall_s(self) -> float:
        return self.end - self.start


def describe_task(cmdline: list[str]) -> tuple[str, str, str] | None:
    """(label, component, task dir) of a kfp executor process's command line, else None.

    >>> describe_task(["python", "-m", "kfp.dsl.executor_main", "--executor_input",
    ...     '{"inputs": {"parameterValues": {"run_name": "grpo_from_base"}},'
    ...     ' "outputs": {"outputFile": "/r/run-1/grpo-op-2/executor_output.json"}}',
    ...     "--function_to_execute", "grpo_op"])
    ('grpo_from_base', 'grpo_op', 'grpo-op-2')
    >>> describe_task(["sh", "-c", "python3 -m kfp.dsl.executor_main"]) is None
    True
    """
    if EXECUTOR_MODULE not in cmdline or "--function_to_execute" not in cmdline:
        return None
    component = cmdline[cmdline.index("--function_to_execute") + 1]
    executor_input: dict = {}
    if "--executor_input" in cmdline:
        try:
            executor_input = json.loads(cmdline[cmdline.index("--executor_input") + 1])
        except (ValueError, IndexError):
            executor_input = {}
    run_name = executor_input.get("inputs", {}).get("parameterValues", {}).get("run_name")
    output_file = executor_input.get("outputs", {}).get("outputFile", "")
    task_dir = Path(output_file).parent.name if output_file else component
    label = run_name if component == "grpo_op" and run_name else component.removesuffix("_op")
    return label, component, task_dir


class TreeSampler:
    """Polls the process tree under `root_pid` on a thread; per-task peaks and lifetimes."""

    def __init__(self, root_pid: int, interval_s: float) -> None:
        self.root = psutil.Process(root_pid)
        self.interval_s = interval_s
        self.tasks: dict[int, TaskStats] = {}
        self.peak_total_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.NoSuchProcess):  # the run ended under us
                self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        now = time.time()
        procs = [self.root, *self.root.children(recursive=True)]
        rss: dict[int, float] = {}
        for proc in procs:
            try:
                rss[proc.pid] = proc.memory_info().rss / 2**20
                if proc.pid not in self.tasks:
                    self._maybe_register(proc, now)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.peak_total_mb = max(self.peak_total_mb, sum(rss.values()))
        self.samples += 1
        for pid, stats in self.tasks.items():
            if pid not in rss:
                continue
            try:
                tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
                stats.cpu_s = sum(sum(p.cpu_times()[:2]) for p in tree)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            total = sum(rss.get(p.pid, 0.0) for p in tree)
            stats.peak_rss_mb = max(stats.peak_rss_mb, total)
            stats.peak_procs = max(stats.peak_procs, len(tree))
            stats.end = now

    def _maybe_register(self, proc: psutil.Process, now: float) -> None:
        described = describe_task(proc.cmdline())
        # A process forked by a task (data_prep's workers, the reward zygote's) keeps the task's
        # command line: it is part of that task's tree, not a task of its own.
        if described is not None and not any(p.pid in self.tasks for p in proc.parents()):
            label, component, task_dir = described
            self.tasks[proc.pid] = TaskStats(label, component, task_dir, proc.pid, now, now)
            for child in proc.children(recursive=True):  # seen before their parent this sample
                self.tasks.pop(child.pid, None)


# --------------------------------------------------------------------------- MLflow stage runs


def mlflow_stage_times(tracking_uri: str, experiment: str) -> dict[str, float]:
    """Seconds from start to end of each stage's MLflow run (tag coldstart.stage), from the run's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    times: dict[str, float] = {}
    for run in client.search_runs(
        [found.experiment_id], filter_string="tags.`coldstart.role` = 'stage'"
    ):
        stage = run.data.tags.get("coldstart.stage", run.info.run_name)
        if run.info.end_time and run.info.start_time:
            times[stage] = (run.info.end_time - run.info.start_time) / 1000.0
    return times


# --------------------------------------------------------------------------- the run


def run_overrides(args: argparse.Namespace, output_dir: Path) -> list[str]:
    return [*(QUICK_OVERRIDES if args.quick else []), *args.overrides, f"output_dir={output_dir}"]


def run_command(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "coldstart.pipelines.cli",
        "run",
        "--config",
        str(Path(args.config).resolve()),
    ]
    for item in overrides:
        cmd += ["--set", item]
    return cmd + (["--ablation"] if args.ablation else [])


def timed_run(args: argparse.Namespace, workdir: Path) -> dict:
    """Run `coldstart run` once under the sampler; returns the report (raises if the run fails)."""
    overrides = run_overrides(args, workdir / "out")
    cmd = run_command(args, overrides)
    cfg = load_config(
        args.config, overrides + (["ablation=true"] if args.ablation else [])
    )  # as `coldstart run`
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's own sqlite store under output_dir
    log_path = workdir / "run.log"
    load_before = os.getloadavg()
    start = time.time()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, args.interval)
        sampler.start()
        code = proc.wait()
        sampler.stop()
    total = time.time() - start
    printed = log_path.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(
            f"coldstart run failed (exit {code}); last lines:\n"
            + "\n".join(printed.splitlines()[-40:])
        )
    match = re.search(r"^MLflow:\s+(\S+)", printed, re.MULTILINE)
    mlflow_s = mlflow_stage_times(match.group(1), cfg.tracking.experiment) if match else {}
    tasks = sorted(sampler.tasks.values(), key=lambda t: t.start)
    return report_of(args, cfg, tasks, mlflow_s, total, sampler, load_before, bool(match))


def report_of(
    args,
    cfg,
    tasks: list[TaskStats],
    mlflow_s: dict[str, float],
    total: float,
    sampler: TreeSampler,
    load_before: tuple[float, float, float],
    found_store: bool,
) -> dict:
    rows = [
        {
            **asdict(t),
            "wall_s": round(t.wall_s, 2),
            "mlflow_stage_s": _round(mlflow_s.get(t.task)),
            "share_of_total": round(t.wall_s / total, 3),
        }
        for t in tasks
    ]
    in_tasks = busy_seconds([(t.start, t.end) for t in tasks])
    dominant = max(rows, key=lambda r: r["wall_s"])["task"] if rows else None
    return {
        "benchmark": "pipeline_wallclock",
        "config": shown_path(Path(args.config)),
        "config_digest": cfg.digest(),
        "overrides": (QUICK_OVERRIDES if args.quick else []) + args.overrides,
        "quick": args.quick,
        "ablation": args.ablation,
        "total_s": round(total, 2),
        "tasks_s": round(in_tasks, 2),
        "orchestration_s": round(total - in_tasks, 2),
        "goal_s": GOAL_S,
        "within_goal": total <= GOAL_S,
        "dominant_stage": dominant,
        "peak_rss_total_mb": round(sampler.peak_total_mb, 1),
        "mlflow_store_read": found_store,
        "stages": rows,
        "samples": sampler.samples,
        "interval_s": args.interval,
        **machine_facts(load_before),
    }


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (tasks that overlap count once).

    >>> busy_seconds([(0.0, 2.0), (1.5, 3.0), (5.0, 6.0)])
    4.0
    """
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def shown_path(path: Path) -> str:
    """Relative to the repository when inside it (results stay comparable across checkouts)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --------------------------------------------------------------------------- output


def table_lines(report: dict) -> list[str]:
    lines = [
        "| stage | task | wall s | MLflow stage s | share | CPU s | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["stages"]:
        stage_s = "-" if r["mlflow_stage_s"] is None else f"{r['mlflow_stage_s']:.1f}"
        lines.append(
            f"| {r['task']} | {r['task_dir']} | {r['wall_s']:.1f} | {stage_s} | "
            f"{100 * r['share_of_total']:.0f}% | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    lines.append(
        f"| orchestration | kfp.local | {report['orchestration_s']:.1f} | - | "
        f"{100 * report['orchestration_s'] / report['total_s']:.0f}% | - | - |"
    )
    lines.append(
        f"| **total** | | **{report['total_s']:.1f}** | | | | {report['peak_rss_total_mb']:.0f} (tree) |"
    )
    return lines


def print_table(report: dict) -> None:
    goal = "within" if report["within_goal"] else "OVER"
    print(
        f"\npipeline wall clock: {report['config']}{' (quick)' if report['quick'] else ''}"
        f"{' --ablation' if report['ablation'] else ''}, {report['cpus']} CPUs, load before "
        f"{report['load_avg_before'][0]:.1f} after {report['load_avg_after'][0]:.1f}"
    )
    print("\n".join(table_lines(report)))
    print(
        f"total {report['total_s']:.0f}s: {goal} the {report['goal_s']:.0f}s goal; "
        f"dominant stage: {report['dominant_stage']}"
    )


def write_markdown(report: dict, path: Path) -> None:
    head = [
        f"# Pipeline wall clock ({report['time']})",
        "",
        f"`coldstart run --config {report['config']}`{' --ablation' if report['ablation'] else ''}"
        + (f" with `--set {' '.join(report['overrides'])}`" if report["overrides"] else "")
        + f"; config digest `{report['config_digest']}`; {report['cpus']} CPUs, OMP_NUM_THREADS="
        f"{report['omp_num_threads'] or 'unset'} (torch {report['torch_threads']} threads); load average "
        f"{report['load_avg_before'][0]:.1f} before, {report['load_avg_after'][0]:.1f} after.",
        "",
        "Wall = the task's process lifetime (start-up and imports included); MLflow stage = its `stage_run`;",
        "peak RSS = the largest sum over the task's process tree in one sample "
        f"(every {report['interval_s']} s).",
        "",
    ]
    goal = "within" if report["within_goal"] else "over"
    tail = [
        "",
        f"Total {report['total_s']:.0f} s ({goal} the {report['goal_s']:.0f} s goal); "
        f"dominant stage: {report['dominant_stage']}.",
        "",
    ]
    path.write_text("\n".join(head + table_lines(report) + tail))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        report = timed_run(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="coldstart-wallclock-") as tmp:
            report = timed_run(args, Path(tmp))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    if not args.quick:
        write_markdown(report, args.output.with_suffix(".md"))
    print_table(report)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
