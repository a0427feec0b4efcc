"""Caching: skip a task whose inputs are unchanged, on the cluster and under kfp.local.

Cluster: the KFP driver fingerprints each task (image, command, resolved input parameters,
input artifacts, PVC names) and reuses a finished task's outputs; `enable_caching` per task comes
from `cluster.caching` at compile time, and `submit --no-cache` overrides it for a whole run.

Local: kfp.local (2.17) has a file cache keyed by component name, image, command, arguments
(input parameters, and input artifacts by URI + metadata) and env vars; outputs are reused from
the earlier run's pipeline root (a cache entry whose artifact files are gone is a miss). It is
off by default; `run_local_pipeline` turns it on. Importers in one-stage reruns put a fingerprint
of a local input directory into the artifact metadata, so a changed directory is a miss.

One workaround: kfp.local treats a cache entry as stale when an output artifact has no file at its
URI, and Metrics artifacts never have one (their values live in metadata), so every task with an
`Output[Metrics]` (all our stages) would miss forever. After a run, `settle_metadata_artifacts`
writes such an artifact's metadata as JSON at its URI, which keeps the entry valid.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from coldstart.common.config import PipelineConfig
from coldstart.common.digests import content_digest, file_sha256, json_digest
from coldstart.common.storage import is_s3


def init_local(pipeline_root: Path, cache: bool) -> None:
    """kfp.local in this Python environment; the cache lives in `<pipeline_root>/.kfp_cache`."""
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
        enable_caching=cache,
    )


def run_local_pipeline(
    pipeline_func: Callable[..., Any], pipeline_root: Path, cache: bool, **arguments: Any
) -> Any:
    """Call a pipeline under kfp.local with or without the cache, leaving the cache usable.

    kfp.local indents its tasks' output by swapping ``builtins.print`` for each task and
    putting back what it found; tasks that run in threads (ParallelFor) put back each other's
    swaps, so the indenting print can outlive the run. It is put back here.
    """
    init_local(pipeline_root, cache)
    original_print = builtins.print
    try:
        return pipeline_func(**arguments)
    finally:
        builtins.print = original_print
        if cache:
            settle_metadata_artifacts(pipeline_root / ".kfp_cache")


METADATA_ONLY = (
    "system.Metrics",
    "system.ClassificationMetrics",
    "system.SlicedClassificationMetrics",
)


def _cached_artifacts(entry: dict) -> Iterator[dict]:
    for value in entry.values():
        if isinstance(value, dict) and value.get("__kfp_artifact__"):
            yield value
        elif isinstance(value, dict) and value.get("__kfp_artifact_list__"):
            yield from value.get("artifacts", [])


def settle_metadata_artifacts(cache_root: Path) -> int:
    """Give every cached metadata-only artifact a file at its URI; returns how many were written."""
    written = 0
    for entry_file in sorted(cache_root.glob("*.json")):
        try:
            entry = json.loads(entry_file.read_text())
        except (OSError, ValueError):
            continue
        for art in _cached_artifacts(entry):
            uri = art.get("uri") or ""
            if (
                art.get("schema_title") in METADATA_ONLY
                and uri
                and "://" not in uri
                and not os.path.exists(uri)
            ):
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                Path(uri).write_text(json.dumps(art.get("metadata") or {}))
                written += 1
    return written


CACHE_SALT_ENV = "COLDSTART_CACHE_SALT"


def local_cache_salt(cfg: PipelineConfig) -> str:
    """What kfp.local's cache key leaves out: the code that runs (SubprocessRunner runs this
    checkout, not an immutable image) and the inputs the config names by path (a data file
    changed in place keeps its path): local ones by `dir_fingerprint`, as importers are keyed,
    s3 ones by their ETags. Set on every task as an env var, which kfp.local's key includes, so a
    cached output is reused only for this code and these inputs."""
    import coldstart
    import coldstart.pipelines

    code = {}
    for package in (coldstart, coldstart.pipelines):
        root = Path(package.__file__).parent
        for path in sorted(root.glob("**/*")):
            if path.is_file() and path.suffix in (".py", ".json", ".yaml", ".jinja"):
                code[path.relative_to(root).as_posix()] = file_sha256(path)
    inputs = {
        u: content_digest(u) if is_s3(u) else dir_fingerprint(u) for u in config_input_paths(cfg)
    }
    return json_digest([code, inputs])[:16]


def config_input_paths(cfg: PipelineConfig) -> list[str]:
    """The inputs the config names by path (local or s3://), hub ids and presets left out."""
    data = cfg.data
    uris = [s.uri for s in (*data.sft_files, *data.rl_files, *data.eval_files)]
    uris += [cfg.model.name_or_path, data.distill.teacher]
    uris += [b.uri for b in cfg.eval.benchmarks if b.uri]
    return sorted({u for u in uris if u and (is_s3(u) or Path(u).expanduser().exists())})


def enable_caching_override(no_cache: bool) -> bool | None:
    """What kfp.Client gets: False forces every task to run; None keeps the compiled setting."""
    return False if no_cache else None


def spec_tasks(spec: dict) -> Iterator[tuple[str, dict]]:
    """Every task of a compiled pipeline spec, inside conditions and loops too."""
    dags = [
        spec.get("root", {}).get("dag", {}),
        *(c.get("dag", {}) for c in spec.get("components", {}).values()),
    ]
    for dag in dags:
        yield from (dag.get("tasks") or {}).items()


def disable_caching_in_package(package: str | os.PathLike[str]) -> None:
    """Turn caching off for every task of a compiled package.

    kfp.Client's `enable_caching=False` only rewrites the root DAG's tasks; tasks inside a
    `dsl.If` (the ablation branch) or a loop would still be served from the cache.
    """
    import yaml

    path = Path(package)
    docs = list(yaml.safe_load_all(path.read_text()))
    for _, task in spec_tasks(docs[0]):
        task.setdefault("cachingOptions", {})["enableCache"] = False
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def dir_fingerprint(path: str | os.PathLike[str]) -> str:
    """Cheap identity of a local file or directory: relative paths, sizes and mtimes (not contents).

    Enough to notice a retrained model written to the same folder; s3:// URIs get no fingerprint
    (the cluster's cache keys on the URI).
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(
            f"{f.relative_to(root) if f != root else f.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:16]


def import_metadata(uri: str) -> dict[str, str]:
    """Metadata attached to an imported artifact; part of the local cache key."""
    meta = {"source_uri": uri}
    if not is_s3(uri) and "://" not in uri:
        meta["fingerprint"] = dir_fingerprint(uri)
    return meta
