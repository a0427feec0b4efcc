"""kfp component of the eval stage: a thin wrapper from artifacts to paths.

The body imports inside the function: kfp ships the function's source to the pod (and to the
kfp.local subprocess), where only the installed `components` package is available. All four
models are optional artifact inputs (`Input[Model] = None`, supported by kfp 2.17 in the
compiler, on the cluster and under kfp.local): the pipeline passes the ones it trained, a
`coldstart rerun eval` only the ones it was given, and the report lists what it got in the
paper's order (base, SFT, RL, SFT+RL).
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from coldstart.common.images import stage_image


@dsl.component(base_image=stage_image("eval"), install_kfp_package=False)
def eval_op(
    config_json: str,
    pipeline_run_id: str,
    eval_data: Input[Dataset],
    metrics: Output[Metrics],
    predictions: Output[Dataset],
    report: Output[Markdown],
    chart: Output[Artifact],
    base_model: Input[Model] = None,
    sft_model: Input[Model] = None,
    rl_model: Input[Model] = None,
    sft_rl_model: Input[Model] = None,
    images: Input[Dataset] = None,
) -> None:
    """Evaluate base (and SFT / RL / SFT+RL when given) on the configured benchmarks
    (`eval_data`'s image keys read from `images`, data_prep's image store)."""
    import tempfile
    from pathlib import Path

    from coldstart.common.config import config_from_json
    from coldstart.eval.cli import main
    from coldstart.eval.stage import EvalOutputs, kfp_metrics

    given = {"base": base_model, "SFT": sft_model, "RL": rl_model, "SFT+RL": sft_rl_model}
    models = {name: artifact.path for name, artifact in given.items() if artifact is not None}
    report.uri, chart.uri = report.uri + ".md", chart.uri + ".png"  # named as people open them
    outputs = EvalOutputs(
        Path(predictions.path), Path(report.path), Path(chart.path), embed_chart=True
    )
    with tempfile.TemporaryDirectory() as scratch:
        store = images.path if images is not None else None
        cfg = config_from_json(config_json)
        values = main(cfg, models, eval_data.path, scratch, pipeline_run_id, outputs, store)
    for name, value in kfp_metrics(values).items():
        metrics.log_metric(name, value)
    chart.metadata["mime_type"] = "image/png"
    predictions.metadata["models"] = list(models)
