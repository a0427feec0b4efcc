"""What SFT reports while it runs: MLflow metrics each logging step and the loss curve at the end.

The Trainer's own MLflow integration is off (`report_to="none"`): it would log under its own
key names into whatever run is active. This callback logs the fixed, slash-namespaced keys every
stage uses (`sft/train/loss`, ...) through the stage's tracker, plus tokens per second, which the
Trainer only reports as an end-of-run average.
"""

from __future__ import annotations

import time
from typing import Any

from matplotlib.figure import Figure
from transformers import TrainerCallback

# Trainer log key -> metric key.
METRIC_KEYS = {
    "loss": "sft/train/loss",
    "learning_rate": "sft/train/learning_rate",
    "grad_norm": "sft/train/grad_norm",
    "epoch": "sft/train/epoch",
    "eval_loss": "sft/eval/loss",
    "train_loss": "sft/train/loss_mean",
    "train_runtime": "sft/train/runtime_s",
}


class TrackerCallback(TrainerCallback):
    """Logs each Trainer log event to the stage tracker (rank 0 only) and counts the steps run here."""

    def __init__(self, tracker: Any | None) -> None:
        self.tracker = tracker
        self.steps_run = 0  # optimizer steps taken by this process (a resumed run starts at 0)
        self.tokens_per_second: list[float] = []
        self._mark = (time.perf_counter(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark = (time.perf_counter(), state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_run += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = {METRIC_KEYS[k]: float(v) for k, v in (logs or {}).items() if k in METRIC_KEYS}
        if "loss" in (logs or {}):
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            rate = (tokens - self._mark[1]) / max(now - self._mark[0], 1e-9)
            self._mark = (now, tokens)
            self.tokens_per_second.append(rate)
            metrics["sft/train/tokens_per_second"] = rate
            metrics["sft/train/tokens_seen"] = float(tokens)
        if self.tracker is not None and state.is_world_process_zero and metrics:
            self.tracker.log_metrics(metrics, step=state.global_step)


def loss_points(log_history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [
        (entry["step"], float(entry[key]))
        for entry in log_history
        if key in entry and "step" in entry
    ]
    return [s for s, _ in points], [v for _, v in points]


def loss_curve(log_history: list[dict[str, Any]]) -> Figure:
    """Training loss per logging step, with eval loss points; built without pyplot (no GUI state)."""
    fig = Figure(figsize=(6, 4), tight_layout=True)
    ax = fig.subplots()
    steps, losses = loss_points(log_history, "loss")
    ax.plot(steps, losses, label="train loss")
    eval_steps, eval_losses = loss_points(log_history, "eval_loss")
    if eval_steps:
        ax.plot(eval_steps, eval_losses, "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("SFT loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
