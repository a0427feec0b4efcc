"""pipelines/local_tasks.py through a real kfp.local pipeline: per-task logs, quiet console,
the first failure stops the run and carries the task's own error.

The components are small stand-ins (a few seconds each) so the hooks into kfp.local are
exercised for real. (No `from __future__ import annotations`: this module defines components.)
"""

import builtins
from pathlib import Path

import pytest
from kfp import dsl
from kfp.dsl import Dataset, Output

from coldstart.common.errors import one_line
from coldstart.pipelines.caching import run_local_pipeline
from coldstart.pipelines.local_tasks import TaskFailed, last_error, supervise


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def noisy_op(marker: str, data: Output[Dataset]) -> None:
    import sys
    from pathlib import Path

    print("NOISE " * 50)
    for i in range(3):
        sys.stderr.write(f"\rprogress {i}/3")
    sys.stderr.write("\n")
    Path(data.path).write_text("rows")
    Path(marker).write_text("ran")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def validate_rows_op(where: str) -> None:
    from coldstart.common.errors import InputError

    raise InputError(f"{where}: row 3: image is not a PNG: fix or drop the row")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def worker_crash_op() -> None:
    raise RuntimeError("out of cheese")


def first_fails_then_independent(tmp_path: Path, failing):
    """A pipeline whose first task fails and whose next task kfp.local would still start.

    kfp.local orders independent tasks by hash order, so the stand-in for "a task that does not
    depend on the failed one" is a task after it that ignores upstream failures: left alone,
    kfp.local starts it once the first task has failed.
    """
    marker = str(tmp_path / "independent-ran")

    @dsl.pipeline(name="fail-fast")
    def pipeline():
        first = failing().set_display_name("data_prep")
        after = noisy_op(marker=marker).set_display_name("base_model").after(first)
        after.ignore_upstream_failure()

    return pipeline, Path(marker)


def test_a_failed_task_stops_the_run_with_its_own_input_error(tmp_path, capsys):
    failing = lambda: validate_rows_op(where="data.rl_files[0]")  # noqa: E731
    pipeline, marker = first_fails_then_independent(tmp_path, failing)
    logs = tmp_path / "logs"
    with pytest.raises(TaskFailed) as failed, supervise(logs):
        run_local_pipeline(pipeline, tmp_path / "root", cache=False)
    assert failed.value.stage == "data_prep" and failed.value.exit_code == 2
    assert str(failed.value) == "data.rl_files[0]: row 3: image is not a PNG: fix or drop the row"
    assert failed.value.log == logs / "data_prep.log"
    assert "Traceback" in failed.value.log.read_text()  # the full story is in the task's log
    assert not marker.exists()  # nothing started after the failure
    out, err = capsys.readouterr()
    assert "executor_input" not in out + err and "Traceback" not in out + err
    assert "data_prep" in err and "failed" in err


def test_a_crash_is_exit_code_1_and_named_with_its_class(tmp_path):
    pipeline, _ = first_fails_then_independent(tmp_path, worker_crash_op)
    with pytest.raises(TaskFailed) as failed, supervise(tmp_path / "logs"):
        run_local_pipeline(pipeline, tmp_path / "root", cache=False)
    assert failed.value.exit_code == 1
    assert str(failed.value) == "out of cheese [RuntimeError]"


def test_task_output_goes_to_its_log_and_the_console_gets_one_line_per_task(tmp_path, capsys):
    marker = tmp_path / "ran"

    @dsl.pipeline(name="quiet")
    def pipeline():
        noisy_op(marker=str(marker)).set_display_name("data_prep")

    with supervise(tmp_path / "logs") as run:
        run_local_pipeline(pipeline, tmp_path / "root", cache=True)
    out, err = capsys.readouterr()
    assert "NOISE" not in out + err and "Executing task" not in out + err
    assert "data_prep" in err and "done" in err
    log = (tmp_path / "logs" / "data_prep.log").read_text()
    assert "NOISE" in log and "progress 2/3" in log and "executor_input" in log
    assert "Running pipeline" in (tmp_path / "logs" / "kfp.log").read_text()
    (task,) = run.tasks
    assert task.status == "done" and Path(task.outputs["data"].path).read_text() == "rows"
    assert run.run_dir is not None and run.run_dir.parent == tmp_path / "root"

    with supervise(tmp_path / "logs-2") as again:  # unchanged: kfp.local's cache serves it
        run_local_pipeline(pipeline, tmp_path / "root", cache=True)
    assert [t.status for t in again.tasks] == ["cached"] and again.run_dir is None
    assert "cached" in capsys.readouterr().err


def test_verbose_streams_the_task_output(tmp_path, capsys):
    @dsl.pipeline(name="loud")
    def pipeline():
        noisy_op(marker=str(tmp_path / "ran"))

    with supervise(tmp_path / "logs", verbose=True):
        run_local_pipeline(pipeline, tmp_path / "root", cache=False)
    assert "NOISE" in capsys.readouterr().err


CONFIG_ERROR_LOG = """[KFP Executor 2026-12-02 11:33:13,614 INFO]: Looking for component
Traceback (most recent call last):
  File "/x/ephemeral_component.py", line 9, in data_prep_op
    cfg = config_from_json(config_json)
          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
coldstart.common.config.ConfigError: invalid config (pipeline parameter config_json):
  sft.learning_rate: Input should be greater than 0 (got -1.0)
  grpo.total_steps: Input should be a valid integer (got 'x')

"""


def test_last_error_keeps_a_multi_line_message():
    cls, message = last_error(CONFIG_ERROR_LOG)
    assert cls == "coldstart.common.config.ConfigError"
    assert one_line(message) == (
        "invalid config (pipeline parameter config_json): "
        "sft.learning_rate: Input should be greater than 0 (got -1.0); "
        "grpo.total_steps: Input should be a valid integer (got 'x')"
    )
    assert last_error("no traceback here\n") is None


def test_a_print_swapped_during_the_run_is_put_back(tmp_path):
    """kfp.local's per-task indenting print leaks when threaded tasks restore each other's."""
    original = builtins.print

    def pipeline() -> None:
        builtins.print = lambda *args, **kwargs: original("    ", *args, **kwargs)

    run_local_pipeline(pipeline, tmp_path / "root", False)
    assert builtins.print is original
