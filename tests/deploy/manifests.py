"""Helpers of the deploy tests: render k8s/ with `kubectl kustomize`, read docker/ files.

Nothing here talks to a cluster or a Docker engine: manifests are rendered and validated offline,
Dockerfiles and lock files are parsed as text.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
TRAINER = K8S / "trainer"

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not found on PATH: install kubectl (it embeds kustomize) to render and validate k8s/",
)

# Every kustomization a user may apply or that CI must render: the base, the Secret templates,
# the overlays (k8s/trainer is rendered through the overlay that includes it).
KUSTOMIZATIONS = sorted(
    [
        K8S / "base",
        K8S / "secrets",
        *(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml")),
    ]
)
OVERLAYS = [p for p in KUSTOMIZATIONS if p.parent.name == "overlays"]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _uses_trainer(path: Path) -> bool:
    """Whether the kustomization lists k8s/trainer (written by another part of the project) directly."""
    resources = yaml.safe_load((path / "kustomization.yaml").read_text()).get("resources", [])
    return any((path / r).resolve() == TRAINER.resolve() for r in resources)


@functools.cache
def _render(path: Path) -> tuple[dict, ...]:
    if _uses_trainer(path) and not (TRAINER / "kustomization.yaml").exists():
        pytest.skip(
            f"{rel(path)} includes k8s/trainer, which has no kustomization.yaml in this checkout"
        )
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {rel(path)} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def render(path: Path) -> list[dict]:
    """The objects `kubectl kustomize PATH` prints (cached; callers get their own list)."""
    return list(_render(path))


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def pod_specs(obj: dict) -> Iterator[dict]:
    """The pod specs of a workload (Deployment/StatefulSet/DaemonSet/Job, CronJob, TrainingRuntime)."""
    spec = obj.get("spec") or {}
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield spec["template"]["spec"]
    elif obj["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif obj["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
        for job in spec.get("template", {}).get("spec", {}).get("replicatedJobs", []):
            yield job["template"]["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield spec


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


# --------------------------------------------------------------------------- docker


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: FROM, RUN, ...
    args: str
    line: int


def dockerfile(kind: str) -> Path:
    return DOCKER / f"{kind}.Dockerfile"


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for our files)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        name, _, args = buf.partition(" ")
        out.append(Instruction(name.upper(), args.strip(), start))
        buf = ""
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Split at FROM: [global ARGs], [stage 1], [stage 2], ..."""
    out: list[list[Instruction]] = [[]]
    for ins in instructions:
        if ins.name == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def arg_defaults(instructions: list[Instruction]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for ins in instructions:
        if ins.name == "ARG":
            name, eq, value = ins.args.partition("=")
            out[name.strip()] = value.strip().strip('"') if eq else None
    return out


def substitute(text: str, args: dict[str, str | None]) -> str:
    """Expand ${NAME} / $NAME from ARG defaults; names without a default stay as they are."""

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        value = args.get(name)
        return m.group(0) if value is None else value

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines of a lock/constraints file -> {normalized name: version}."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and ";" not in line, f"{rel(path)}: not a plain pin: {raw!r}"
        pins[normalize(name)] = version.strip()
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_plan(env: dict[str, str], *args: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """`docker/build.sh --dry-run`: ({kind: (image ref, dockerfile)}, the commands it would run)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found: docker/build.sh needs it")
    proc = subprocess.run(
        [bash, str(DOCKER / "build.sh"), "--dry-run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, f"docker/build.sh --dry-run failed:\n{proc.stdout}\n{proc.stderr}"
    plan, commands = {}, []
    for line in proc.stdout.splitlines():
        if line.startswith("image "):
            _, kind, ref, path = line.split()
            plan[kind] = (ref, path)
        elif line.startswith("+ "):
            commands.append(line[2:])
    return plan, commands
