"""One runner for the training stages (SFT, GRPO): everything around a stage's training.

A stage gives a `StageRequest` (its inputs, output, run id, and a digest of what decides its
weights) and a function that trains from local paths (`StageContext`). The runner does the
rest, the same way for both stages:

1. **finished output**: an output that already holds `coldstart_result.json` with the same
   digest is returned as is (a retried pod that died during the upload, a rerun of the CLI);
2. **several GPUs**: re-run the stage under torchrun, one worker per GPU (launcher.py);
3. **inputs**: materialise `s3://` inputs into the scratch cache; an `s3://` output is trained
   into a local staging folder;
4. **checkpoints**: one root per run (`checkpoint_root`), never shared by two runs;
5. **tracking**: the stage's MLflow run on rank 0 only (one run, not one per GPU);
6. **completion**: rank 0 writes the result file, then uploads an `s3://` output (the
   checkpoints excluded, they are published as they are written), the result file last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldstart.common import storage
from coldstart.common.config import PipelineConfig, flatten
from coldstart.common.digests import content_digest, json_digest
from coldstart.common.errors import InputError
from coldstart.common.launcher import is_rank_zero, processes_to_launch, run_under_torchrun
from coldstart.common.run_id import require_run_id, run_path
from coldstart.common.stage_cli import config_from_args, default_run_id, stage_parser

if TYPE_CHECKING:  # tracking imports mlflow: imported when a tracked run starts
    from coldstart.common.tracking import StageTracker

log = logging.getLogger(__name__)

RESULT_FILE = "coldstart_result.json"  # written (and uploaded) last: the output is complete
CHECKPOINTS = "checkpoints"
DIGEST_FILE = "inputs_digest.json"  # in a checkpoint root: whose checkpoints these are
RESULT_FLAG = "--result-json"


@dataclass(frozen=True)
class StageRequest:
    """What one training stage is asked to do; every rank of a torchrun group gets the same."""

    stage: str  # "sft" / "grpo": the package (coldstart.<stage>) and the config section
    inputs: Mapping[str, str]  # CLI flag name (e.g. "base-model") -> local path or s3:// URI
    output_dir: str  # local folder or s3:// prefix for the trained model
    run_id: str  # the pipeline run: keys the checkpoints and the MLflow runs
    run_name: str  # the MLflow run's name: the stage, or a variant ("grpo_from_base")
    digest: str  # of what decides the trained weights: settings and inputs' bytes
    inputs_key: str = ""  # `inputs_digest`: keys the checkpoint root (`claim_checkpoints`)

    def cli_args(self) -> dict[str, str]:
        """The stage's own command-line arguments, for a torchrun worker to receive the request."""
        return {
            **{f"--{flag}": uri for flag, uri in self.inputs.items()},
            "--output": self.output_dir,
            "--run-id": self.run_id,
            "--run-name": self.run_name,
        }


@dataclass(frozen=True)
class StageContext:
    """Local paths a stage trains with, and rank 0's tracker (None on the other ranks)."""

    inputs: dict[str, Path]  # materialised inputs, by flag name
    output: Path  # where the final model is written (the output itself, or its local staging)
    checkpoint_root: str  # this run's checkpoints: a local folder or an s3:// prefix
    scratch: Path  # room of this run for downloads and checkpoint staging
    run_id: str
    tracker: StageTracker | None


def scratch_root() -> Path:
    """Local room for downloaded inputs and staging ($COLDSTART_SCRATCH, else the temp dir)."""
    return Path(os.environ.get("COLDSTART_SCRATCH") or Path(tempfile.gettempdir()) / "coldstart")


def checkpoint_root(cfg: PipelineConfig, request: StageRequest) -> str:
    """Where this run's checkpoints live: `<output>/checkpoints/<run id>`; under an `s3://`
    `output_dir` when the output is a local artifact folder of a pod (its disk does not survive a
    restart, the object store does): `<output_dir>/<run id>/<run name>/checkpoints`.

    Keyed by the run: a retried pod of the same run resumes from them, another run that shares
    the output never does (`<stage>.resume_from` asks for that explicitly).
    """
    run_id = require_run_id(request.run_id)
    if storage.is_s3(request.output_dir) or not storage.is_s3(cfg.output_dir):
        return run_path(storage.join(request.output_dir, CHECKPOINTS), run_id)
    return run_path(cfg.output_dir, run_id, request.run_name, CHECKPOINTS)


def inputs_digest(inputs: Mapping[str, str]) -> str:
    """The bytes of every input (local files, or the ETags of an s3 prefix; a model's
    checkpoints are not the model)."""
    contents = {flag: content_digest(uri, skip_dirs=(CHECKPOINTS,)) for flag, uri in inputs.items()}
    return json_digest(contents)[:16]


def claim_checkpoints(root: str, digest: str) -> None:
    """Mark a checkpoint root as trained on these inputs (`DIGEST_FILE`), or refuse one of others.

    A retried pod of the same run finds its own digest and resumes (also with a longer schedule:
    a run cut short and continued is how the resume drills work); the same run id used again on
    other data or another model (a reused `--run-id`, a rerun of changed data at the same URIs)
    would otherwise resume from weights trained on something else.
    """
    marker = storage.join(root, DIGEST_FILE)
    if storage.exists(marker):
        found = json.loads(storage.read_text(marker)).get("digest")
        if found != digest:
            raise InputError(
                f"{root}: holds the checkpoints of a training on other inputs under this run id "
                f"(inputs digest {found}, this one {digest}); give the run another id "
                f"(--run-id; `coldstart rerun --no-cache`), or delete {root} to start over"
            )
        return
    storage.write_text(marker, json.dumps({"digest": digest}))


def training_digest(cfg: PipelineConfig, section: str, **extra: Any) -> str:
    """Hash of what decides a stage's trained weights: its config section (not its resources),
    the model settings and `extra`; not tracking, not where things are stored."""
    stage_cfg = getattr(cfg, section).model_dump(mode="json", exclude={"resources"})
    parts = {section: stage_cfg, "model": cfg.model.model_dump(mode="json"), **extra}
    return json_digest(parts)[:16]


def finished_result(request: StageRequest) -> dict[str, float] | None:
    """The metrics of a finished run of the same digest at the output, else None.

    A rerun of a finished stage then returns at once instead of resuming: a Trainer resumed at
    its last step would take one step more, and GRPO would redo its final save and upload.
    """
    uri = storage.join(request.output_dir, RESULT_FILE)
    if not storage.exists(uri):
        return None
    result: dict[str, Any] = json.loads(storage.read_text(uri))
    if result.get("digest") != request.digest:
        log.info(
            "%s: %s holds a run of another training config; training",
            request.stage,
            request.output_dir,
        )
        return None
    log.info(
        "%s: %s already holds this config's model; nothing to do",
        request.stage,
        request.output_dir,
    )
    return dict(result["metrics"])


def stage_context(
    cfg: PipelineConfig, request: StageRequest, tracker: StageTracker | None
) -> StageContext:
    """Materialise the inputs and pick the local output, staging and checkpoint root."""
    key = hashlib.sha1(f"{request.output_dir}|{request.run_id}".encode()).hexdigest()[:12]
    scratch = scratch_root() / f"{request.run_name}-{key}"
    output = scratch / "output" if storage.is_s3(request.output_dir) else Path(request.output_dir)
    cache = scratch_root() / "inputs"
    return StageContext(
        inputs={flag: storage.materialize(uri, cache) for flag, uri in request.inputs.items()},
        output=output,
        checkpoint_root=checkpoint_root(cfg, request),
        scratch=scratch,
        run_id=request.run_id,
        tracker=tracker,
    )


@contextmanager
def rank_zero_tracking(cfg: PipelineConfig, request: StageRequest) -> Iterator[StageTracker | None]:
    """The stage's MLflow run on rank 0, with the stage's settings as params; None elsewhere."""
    if not is_rank_zero():
        yield None
        return
    from coldstart.common.tracking import stage_run

    with stage_run(cfg, request.run_name, request.run_id) as tracker:
        params = {
            k: v for k, v in flatten(cfg).items() if k.startswith((f"{request.stage}.", "model."))
        }
        params.update({f"{request.stage}.input.{k}": v for k, v in request.inputs.items()})
        tracker.log_params(params)
        yield tracker


def upload_output(local: Path, output_dir: str) -> None:
    """Upload the final model to an s3 output without its checkpoints, the result file last.

    The output becomes a mirror of the model: files an earlier model left there (other shards,
    an old adapter) are deleted, or a loader would read a mix of two runs' weights.
    """
    ckpt = local / CHECKPOINTS
    skip = [p.relative_to(local).as_posix() for p in ckpt.rglob("*") if p.is_file()]
    storage.delete(storage.join(output_dir, RESULT_FILE))  # incomplete until the end
    storage.sync_up(local, output_dir, exclude=(*skip, RESULT_FILE))
    model_files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    prefix = output_dir.rstrip("/") + "/"
    for uri in storage.list_prefix(output_dir):
        rel = uri.removeprefix(prefix)
        if rel not in model_files and not rel.startswith(f"{CHECKPOINTS}/"):
            log.info("%s: not part of this model; deleted", uri)
            storage.delete(uri)
    storage.upload_file(local / RESULT_FILE, storage.join(output_dir, RESULT_FILE))


def write_result(output: Path, digest: str, metrics: Mapping[str, float]) -> None:
    """Mark the output complete: the final model is saved, these are its metrics."""
    text = json.dumps({"digest": digest, "metrics": dict(metrics)}, indent=2)
    (output / RESULT_FILE).write_text(text)


def run_stage(
    cfg: PipelineConfig,
    request: StageRequest,
    train: Callable[[StageContext], dict[str, float]],
) -> dict[str, float]:
    """Run a training stage (see the module docstring); returns rank 0's final metrics."""
    request = replace(request, run_id=require_run_id(request.run_id))
    done = finished_result(request)
    if done is not None:
        return done
    nproc = processes_to_launch()
    if nproc > 1:
        return run_under_torchrun(
            f"coldstart.{request.stage}", cfg, request.cli_args(), nproc, RESULT_FLAG
        )
    with rank_zero_tracking(cfg, request) as tracker:
        ctx = stage_context(cfg, request, tracker)
        if is_rank_zero():
            claim_checkpoints(ctx.checkpoint_root, request.inputs_key)
        if tracker is not None:
            tracker.log_params({f"{request.stage}.checkpoint_root": ctx.checkpoint_root})
        metrics = train(ctx)
        if tracker is not None:
            from coldstart.common.tracking import log_final_model

            log_final_model(tracker, cfg, ctx.output)
    if is_rank_zero():
        write_result(ctx.output, request.digest, metrics)
        if storage.is_s3(request.output_dir):
            upload_output(ctx.output, request.output_dir)
    return metrics


# --------------------------------------------------------------------------- a stage, its CLI


@dataclass(frozen=True)
class TrainingStage:
    """A training stage as the runner and its command line see it: what it reads, what decides
    its weights, and how it trains from local paths."""

    name: str  # "sft" / "grpo": the package coldstart.<name> and the config section
    description: str  # the command's help
    inputs: Mapping[str, str]  # CLI flag name -> help
    digest: Callable[[PipelineConfig], str]  # see `training_digest`
    train: Callable[[PipelineConfig, StageContext], dict[str, float]]
    optional: tuple[str, ...] = ()  # flags of `inputs` a run may leave out (given as None)

    def run(
        self,
        cfg: PipelineConfig,
        inputs: Mapping[str, str | os.PathLike[str] | None],
        output_dir: str | os.PathLike[str],
        run_id: str,
        run_name: str | None = None,
    ) -> dict[str, float]:
        """Run the stage (see `run_stage`); `run_name` defaults to the stage's name."""
        given = {flag: str(uri) for flag, uri in inputs.items() if uri is not None}
        contents = inputs_digest(given)
        request = StageRequest(
            stage=self.name,
            inputs=given,
            output_dir=str(output_dir),
            run_id=run_id,
            run_name=run_name or self.name,
            digest=json_digest([self.digest(cfg), contents])[:16],
            inputs_key=contents,
        )
        return run_stage(cfg, request, lambda ctx: self.train(cfg, ctx))

    def cli(self) -> int:
        """`python -m coldstart.<stage>`: the inputs, --output, --run-name, --result-json; prints
        rank 0's metrics."""
        parser = stage_parser(self.name, self.description)
        for flag, help_text in self.inputs.items():
            parser.add_argument(f"--{flag}", required=flag not in self.optional, help=help_text)
        parser.add_argument(
            "--output", required=True, help="model output folder or s3:// prefix; rerun to resume"
        )
        parser.add_argument(
            "--run-name", default=self.name, help=f"MLflow run name (default {self.name})"
        )
        parser.add_argument(RESULT_FLAG, default=None, help="also write the final metrics here")
        args = parser.parse_args()
        given = {flag: getattr(args, flag.replace("-", "_")) for flag in self.inputs}
        run_id = args.run_id or default_run_id()
        metrics = self.run(config_from_args(args), given, args.output, run_id, args.run_name)
        if is_rank_zero():
            _write_metrics(args, metrics)
        return 0


def _write_metrics(args: argparse.Namespace, metrics: Mapping[str, float]) -> None:
    if args.result_json:
        Path(args.result_json).write_text(json.dumps(metrics))
    print(json.dumps(metrics, indent=2))
