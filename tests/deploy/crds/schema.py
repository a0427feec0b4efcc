"""Validate a custom resource against a vendored CRD schema, as strictly as `kubectl apply` does.

A CRD's openAPIV3Schema is a *structural* schema: the API server prunes (and, with kubectl's
default `--validate=strict`, rejects) fields the schema does not declare. jsonschema would
accept them, so objects that declare `properties` get `additionalProperties: false` unless they
opt out with `x-kubernetes-preserve-unknown-fields`; `x-kubernetes-int-or-string` and `nullable`
become their JSON Schema equivalents. CEL rules (`x-kubernetes-validations`) are not evaluated
here: they run on a real API server only (docs/kubernetes.md lists that check).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

HERE = Path(__file__).resolve().parent
TRAINER_RELEASE = "v2.3.0"  # the Kubeflow Trainer release k8s/trainer is written for
KIND_FILES = {"TrainingRuntime": "trainingruntimes.json", "TrainJob": "trainjobs.json"}


def strict(schema: Any) -> Any:
    """The structural schema as a JSON Schema that refuses undeclared fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: ({n: strict(p) for n, p in v.items()} if k == "properties" else strict(v))
        for k, v in schema.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def crd(kind: str, release: str = TRAINER_RELEASE) -> dict:
    return json.loads((HERE / f"trainer-{release}" / KIND_FILES[kind]).read_text())


def validation_errors(obj: dict, release: str = TRAINER_RELEASE) -> list[str]:
    """Every schema violation of `obj`, as 'path: message' lines (empty = valid)."""
    doc = crd(obj["kind"], release)
    expected = f"{doc['group']}/{doc['version']}"
    if obj.get("apiVersion") != expected:
        return [f"apiVersion {obj.get('apiVersion')!r}: the {release} CRD serves {expected}"]
    validator = jsonschema.Draft7Validator(strict(doc["openAPIV3Schema"]))
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]
