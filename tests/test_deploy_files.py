"""deploy/ is checked by the tools that parse it, offline: the compose file against the Compose spec
(check-jsonschema's vendored copy), the Kubernetes manifests against Kubernetes' own schemas
(kubernetes-validate, strict), the Dockerfile by hadolint. Each tool is also shown a broken copy, so a
check that passes everything would fail here. Then what the files must agree on: the replicas, the
store they share, the probes on /health, the non-root user, the pinned torch, and a dashboard whose
queries name metrics the server really exports. With a container runtime, the image is built and
answers /health (skipped without one)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneloop.serve.metrics import ServeMetrics

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (pip install -e '.[deploy]')")
    return str(path)


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=1800)


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_compose_file_follows_the_compose_spec(tmp_path):
    tool = _tool("check-jsonschema")
    good = _run(tool, "--builtin-schema", "vendor.compose-spec", DEPLOY / "compose.yaml")
    assert good.returncode == 0, good.stdout + good.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("    restart: unless-stopped\n",
                                                                    "    restart: unless-stopped\n    replicas: two\n", 1))
    assert _run(tool, "--builtin-schema", "vendor.compose-spec", broken).returncode != 0


def test_compose_runs_two_replicas_on_one_postgres_scraped_and_balanced():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # resolves the x-serve anchor
    services = compose["services"]
    replicas = sorted(name for name, s in services.items() if s.get("command", [None])[0] == "serve")
    assert replicas == ["serve-1", "serve-2"]
    for name in replicas:
        db = next(a for a in services[name]["command"] if a.startswith("--db="))
        assert "@postgres:5432/" in db and db.startswith("--db=postgresql+psycopg://")
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    assert sorted(t for group in scrape["static_configs"] for t in group["targets"]) == \
        [f"{r}:8000" for r in replicas]
    upstream = re.findall(r"server (\S+) ", (DEPLOY / "nginx.conf").read_text())
    assert sorted(upstream) == [f"{r}:8000" for r in replicas]


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(tmp_path):
    tool = _tool("kubernetes-validate")
    manifests = sorted((DEPLOY / "k8s").glob("*.yaml"))
    good = _run(tool, "--strict", *manifests)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.count("passed") == sum(len(_load_all(m)) for m in manifests)
    broken = tmp_path / "serve.yaml"
    broken.write_text((DEPLOY / "k8s" / "serve.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
    assert _run(tool, "--strict", broken).returncode != 0


def test_the_deployment_probes_health_as_the_image_user():
    docs = _load_all(DEPLOY / "k8s" / "serve.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
    user = re.findall(r"^USER (\d+):(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.M)[-1]
    assert (pod["securityContext"]["runAsNonRoot"], str(pod["securityContext"]["runAsUser"])) == (True, user[0])
    assert "--db=$(TUNELOOP_DB_URL)" in container["args"]
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_dockerfile_passes_hadolint(tmp_path):
    tool = _tool("hadolint")
    good = _run(tool, DEPLOY / "Dockerfile")
    assert (good.returncode, good.stdout) == (0, ""), good.stdout + good.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text((DEPLOY / "Dockerfile").read_text().replace("USER 10001:10001", "USER root"))
    assert "DL3002" in _run(tool, broken).stdout  # "Last USER should not be root"


def test_dockerfile_pins_the_makefile_torch_and_checks_health():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    makefile_torch = re.search(r"^TORCH_SPEC \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert f"ARG TORCH_SPEC={makefile_torch}\n" in dockerfile
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu\n" in dockerfile
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK"):].split("\n\n")[0]
    assert "http://127.0.0.1:8000/health" in healthcheck
    assert dockerfile.count("\nFROM ") == 2  # build stage + runtime stage


def test_dashboard_queries_name_metrics_the_server_exports():
    metrics = ServeMetrics(["base", "support"])
    metrics.observe_request("support", "/v1/chat/completions", 200, 0.2, 5, 3)
    metrics.observe_request("support", "/v1/chat/completions", 404, 0.0, error_type="not_found")
    metrics.observe_feedback("support", 1)
    metrics.in_flight.set(0)
    exported = set(re.findall(r"^(tuneloop_\w+?)(?:\{| )", metrics.render().decode(), re.M))
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "tuneloop.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for q in queries for name in re.findall(r"\btuneloop_\w+", q)}
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("latency", "throughput", "error rate", "satisfaction"):
        assert topic in titles


def _container_runtime() -> str | None:
    """docker or podman whose `info` reaches a daemon (a CLI alone, as in CI, is not a runtime)."""
    for runtime in ("docker", "podman"):
        if shutil.which(runtime):
            try:
                if _run(runtime, "info").returncode == 0:
                    return runtime
            except subprocess.TimeoutExpired:
                pass
    return None


RUNTIME = _container_runtime()


def _build_args() -> list[str]:
    """Where the build gets its base image and packages, for machines without Docker Hub or PyPI in the
    container (README, Deploy): TUNELOOP_TEST_BASE_IMAGE (deploy/build-offline-base.sh's image) and
    TUNELOOP_TEST_WHEEL_INDEX (deploy/local-wheel-index.sh's URL, reached over the host's network)."""
    args = []
    if base := os.environ.get("TUNELOOP_TEST_BASE_IMAGE"):
        args += ["--build-arg", f"PYTHON_IMAGE={base}"]
    if index := os.environ.get("TUNELOOP_TEST_WHEEL_INDEX"):
        args += ["--network", "host", "--build-arg", f"TORCH_INDEX={index}", "--build-arg", f"PIP_INDEX_URL={index}"]
    return args


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a cold build installs torch and tuneloop's dependencies
@pytest.mark.skipif(RUNTIME is None, reason="no container runtime here (docker/podman with a running daemon)")
def test_image_builds_and_answers_health(tiny_model_dir, tmp_path):
    import time

    import httpx

    runtime = RUNTIME
    build = _run(runtime, "build", *_build_args(), "-f", DEPLOY / "Dockerfile", "-t", "tuneloop:test", REPO)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "model")
    for path in [models, *models.rglob("*")]:  # the image's user (uid 10001) reads the mounted model
        path.chmod(0o755 if path.is_dir() else 0o644)
    run = _run(runtime, "run", "-d", "-p", "127.0.0.1::8000", "-v", f"{models}:/models:ro", "tuneloop:test")
    assert run.returncode == 0, run.stderr
    container = run.stdout.strip()
    try:
        port = _run(runtime, "port", container, "8000").stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        deadline = time.monotonic() + 300
        health = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            logs = _run(runtime, "logs", container)
            pytest.fail(f"the container did not answer /health with 200 in 300 s (last: {health}); its log:\n"
                        + (logs.stdout + logs.stderr)[-3000:])
        assert health.json()["status"] == "ok", health.text
        if runtime == "docker":  # the image's own HEALTHCHECK (as uid 10001, the venv's python) passes too
            while time.monotonic() < deadline:
                status = _run(runtime, "inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
                if status != "starting":
                    break
                time.sleep(2)
            assert status == "healthy", _run(runtime, "inspect", "--format", "{{json .State.Health}}", container).stdout
    finally:
        _run(runtime, "rm", "-f", container)
