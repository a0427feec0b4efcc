"""The knobs people change per run, as typed pipeline parameters with descriptions.

In the KFP UI's "Create run" form a 7 KB `config_json` is no way to change a learning rate. So the
pipeline also takes the few values people do change from run to run as typed parameters (their
descriptions come from KNOBS, through the pipeline's docstring). A small first task,
`resolve_config_op` (pipelines/ops.py), writes them into the config and validates the result; every stage gets that
resolved config. The full config stays editable as `config_json`; where both set a value, the
typed parameter wins (its default is the compiled config's value, so leaving it alone keeps it).

No kfp import here: `resolve_config_op` (pipelines/ops.py) imports this module inside its pod.
"""

import json
from dataclasses import dataclass
from typing import Any

from coldstart.common.config import PipelineConfig, config_from_dict


@dataclass(frozen=True)
class Knob:
    name: str  # the pipeline parameter
    path: str  # dotted config key it sets ("" = handled by name, see apply_knobs)
    kind: type
    description: str


KNOBS = (
    Knob("model_uri", "model.name_or_path", str,
         "base model: s3:// prefix, model directory, hub id, or 'tiny'"),
    Knob("sft_data_uri", "", str,
         "SFT dataset (parquet, jsonl or HF folder; s3:// or path); empty = the config's data"),
    Knob("rl_data_uri", "", str,
         "RL dataset (parquet, jsonl or HF folder; s3:// or path); empty = the config's data"),
    Knob("sft_learning_rate", "sft.learning_rate", float, "SFT peak learning rate"),
    Knob("sft_epochs", "sft.num_train_epochs", float, "SFT epochs over the SFT set"),
    Knob("grpo_learning_rate", "grpo.learning_rate", float, "GRPO learning rate"),
    Knob("grpo_total_steps", "grpo.total_steps", int, "GRPO rollout batches (training steps)"),
    Knob("eval_max_new_tokens", "eval.max_new_tokens", int, "eval: tokens generated per answer"),
)  # fmt: skip
CONFIG_DESCRIPTION = (
    "the full config as JSON (configs/*.yaml, validated by components/common/config.py); "
    "the typed parameters above override their keys"
)
ABLATION_DESCRIPTION = "also train RL-only (GRPO from the base) and evaluate all four models"


def knob_defaults(cfg: PipelineConfig) -> dict[str, Any]:
    """The compiled config's value of every knob (data URIs: '' = keep the config's list)."""
    out: dict[str, Any] = {}
    for knob in KNOBS:
        if not knob.path:
            out[knob.name] = ""
            continue
        value: Any = cfg
        for part in knob.path.split("."):
            value = getattr(value, part)
        out[knob.name] = value
    return out


def pipeline_docstring(summary: str) -> str:
    """A Google-style docstring: kfp turns its Args into the parameters' descriptions."""
    args = [f"    {k.name}: {k.description}" for k in KNOBS]
    args += [f"    config_json: {CONFIG_DESCRIPTION}", f"    ablation: {ABLATION_DESCRIPTION}"]
    return "\n".join([summary, "", "Args:", *args])


def apply_knobs(config_json: str, knobs: dict[str, Any]) -> str:
    """The config with the knobs written in, validated (errors name the parameter's key)."""
    data = json.loads(config_json)
    unknown = sorted(set(knobs) - {k.name for k in KNOBS})
    if unknown:
        raise ValueError(f"unknown run parameters {unknown}; valid: {[k.name for k in KNOBS]}")
    for knob in KNOBS:
        if knob.name not in knobs or not knob.path:
            continue
        *parents, leaf = knob.path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = knobs[knob.name]
    for name, key in (("sft_data_uri", "sft_files"), ("rl_data_uri", "rl_files")):
        if knobs.get(name):
            data.setdefault("data", {})[key] = [{"uri": knobs[name]}]
            data["data"]["source"] = "files"
    return config_from_dict(data, "pipeline parameters").to_json()
