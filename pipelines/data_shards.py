"""data_prep over several pods: kfp's own fan-out (`dsl.ParallelFor`), then one merge task.

Each shard task prepares every `data.shards`-th input file (decode, validate, resize on all of
its pod's CPUs); the merge task reads the shards' parts in the input's order, dedups across
them, removes eval leaks and writes the same three datasets the one-pod task writes, under the
same output names, so the rest of the DAG does not know which one ran.
"""

from kfp import dsl

from coldstart.common.config import PipelineConfig
from coldstart.data_prep.component import data_prep_merge_op, data_prep_shard_op
from coldstart.pipelines.resources import configure_task


def sharded_data_prep(cfg: PipelineConfig, config_json: str, run_id: str) -> dsl.PipelineTask:
    """Add the shard fan-out and the merge to the current pipeline; returns the merge task."""
    with dsl.ParallelFor(items=list(range(cfg.data.shards)), name="data-shards") as shard:
        part = data_prep_shard_op(config_json=config_json, shard_index=shard)
        configure_task(part.set_display_name("data_prep_shard"), cfg, "data_prep")
    merge = data_prep_merge_op(
        config_json=config_json,
        pipeline_run_id=run_id,
        parts=dsl.Collected(part.outputs["part"]),
    )
    return configure_task(merge.set_display_name("data_prep"), cfg, "data_prep")
