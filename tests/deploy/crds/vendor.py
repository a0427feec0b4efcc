"""Vendor the openAPIV3Schema of Kubeflow Trainer's CRDs at a pinned release, for offline checks.

    python tests/deploy/crds/vendor.py /path/to/kubeflow/trainer/checkout v2.3.0

Reads `manifests/base/crds/trainer.kubeflow.org_<plural>.yaml` at the tag with `git show` and
writes `trainer-<tag>/<plural>.json`: the schema of the served version, unchanged except that
documentation strings (`description`) are dropped (they are ~90% of the file and validate nothing).
The tag and commit go into `trainer-<tag>/SOURCE.json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PLURALS = ("trainingruntimes", "trainjobs")  # what k8s/ and pipelines/trainjob.py create
HERE = Path(__file__).resolve().parent


def strip_descriptions(schema: Any) -> Any:
    """Drop `description` annotations; a property *named* description stays."""
    if isinstance(schema, list):
        return [strip_descriptions(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):
            continue
        if key == "properties":
            out[key] = {name: strip_descriptions(prop) for name, prop in value.items()}
        else:
            out[key] = strip_descriptions(value)
    return out


def main(checkout: str, tag: str) -> None:
    def git(*args: str) -> str:
        return subprocess.check_output(["git", "-C", checkout, *args], text=True)

    target = HERE / f"trainer-{tag}"
    target.mkdir(exist_ok=True)
    commit = git("rev-parse", f"{tag}^{{commit}}").strip()
    for plural in PLURALS:
        path = f"manifests/base/crds/trainer.kubeflow.org_{plural}.yaml"
        crd = next(d for d in yaml.safe_load_all(git("show", f"{commit}:{path}")) if d)
        (version,) = [v for v in crd["spec"]["versions"] if v.get("served")]
        doc = {
            "group": crd["spec"]["group"],
            "version": version["name"],
            "kind": crd["spec"]["names"]["kind"],
            "openAPIV3Schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
        }
        (target / f"{plural}.json").write_text(
            json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
        )
    source = {"repository": "https://github.com/kubeflow/trainer", "tag": tag, "commit": commit}
    (target / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
