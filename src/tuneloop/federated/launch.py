"""Starting a federated run: Flower's simulation on one machine, or a real server and client nodes.

* :func:`simulate` runs Flower's Simulation Runtime (Ray): ``federated.clients`` virtual nodes, each
  ClientApp in a Ray worker process, partitions of ``data.train`` as their data.
* :func:`run_server` starts a Flower SuperLink (``flower-superlink``), waits for the clients, submits
  the run (``flwr run`` of a generated Flower app whose components are tuneloop's apps) and streams
  its log until the run directory is complete.
* :func:`run_client` starts a Flower SuperNode (``flower-supernode``) pointed at the server, with its
  own data directory as node config.

Flower 1.42's SuperLink speaks HTTP(S) on one port to both SuperNodes and the ``flwr`` CLI. TLS: give
the server ``--ssl-certfile/--ssl-keyfile`` (and ``--ssl-ca-certfile``) and the clients
``--root-certificates``; without them both sides must say ``--insecure``. SuperNode authentication:
``--auth-public-keys`` (a CSV of the clients' public keys) on the server and
``--auth-private-key/--auth-public-key`` on each client, as Flower's own flags of the same purpose.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tuneloop.errors import UserError
from tuneloop.paths import check_output_dir, make_dir, write_text_atomic


def recipe_text(recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def simulate(recipe, threads_per_client: int = 1) -> Path:
    """The whole run in Flower's simulation; returns the run directory."""
    from flwr.simulation import run_simulation

    # apps and client import torch and flwr at their top; launch.py stays light for `--help` and checks
    from tuneloop.federated.apps import make_server_app
    from tuneloop.federated.client import make_client_app

    run_dir = check_output_dir(recipe.run_dir(), "run directory").resolve()
    fed, text = recipe.federated, recipe_text(recipe)
    cores = os.cpu_count() or 1
    # Ray workers inherit the environment: one torch thread per concurrent client, clients <= cores.
    threads_before = os.environ.get("TUNELOOP_NUM_THREADS")
    os.environ["TUNELOOP_NUM_THREADS"] = str(threads_per_client)
    backend = {"client_resources": {"num_cpus": threads_per_client, "num_gpus": 0.0},
               "init_args": {"num_cpus": max(threads_per_client, min(cores, fed.clients * threads_per_client)),
                             "include_dashboard": False, "log_to_driver": True}}
    try:
        start_ray(backend["init_args"])
        run_simulation(server_app=make_server_app(text, run_dir, fed.clients), client_app=make_client_app(text),
                       num_supernodes=fed.clients, backend_config=backend)
    finally:
        os.environ.pop("TUNELOOP_NUM_THREADS", None)
        if threads_before is not None:
            os.environ["TUNELOOP_NUM_THREADS"] = threads_before
    if not (run_dir / "summary.json").is_file():
        raise UserError("the federated simulation ended without a result", where=str(run_dir),
                        hint="see the log above for the server's error")
    return run_dir


def start_ray(init_args: dict, tries: int = 3) -> None:
    """Start Ray before Flower does, retrying: Ray gives its node a fixed 30 s to come up, which a
    heavily loaded machine can miss; Flower reuses a Ray that is already running."""
    import ray

    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = pythonpath  # Ray workers import tuneloop from the same places as here
    # Ray renices its workers by +15 unless told otherwise; the clients are the work, so they keep
    # this process's priority (run the whole command under `nice` to lower it).
    os.environ.setdefault("RAY_worker_niceness", "0")
    if ray.is_initialized():
        ray.shutdown()  # a Ray left from an earlier simulation in this process
    for attempt in range(1, tries + 1):
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
            return
        except Exception as e:  # Ray raises a bare Exception for the start-up timeout
            ray.shutdown()
            if attempt == tries:
                raise UserError(f"Ray (Flower's simulation engine) did not start: {e}",
                                hint="the machine may be overloaded; try again, or use fewer clients") from None
            print(f"Ray did not start ({e}); retrying ({attempt}/{tries})", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Deployment


@dataclass
class Security:
    """TLS and SuperNode authentication, passed through to Flower's flags."""

    insecure: bool = False
    certfile: str | None = None
    keyfile: str | None = None
    ca_certfile: str | None = None
    auth_public_keys: str | None = None  # server: CSV of client public keys
    extra: list[str] = field(default_factory=list)

    def server_flags(self) -> list[str]:
        if self.insecure:
            flags = ["--insecure"]
        elif self.certfile and self.keyfile:
            flags = ["--ssl-certfile", self.certfile, "--ssl-keyfile", self.keyfile]
            flags += ["--ssl-ca-certfile", self.ca_certfile] if self.ca_certfile else []
        else:
            raise UserError("the server needs TLS (--ssl-certfile and --ssl-keyfile) or --insecure",
                            hint="--insecure sends adapters unencrypted: for loopback rehearsals only")
        if self.auth_public_keys:
            flags += ["--enable-supernode-auth", "--auth-list-public-keys", self.auth_public_keys]
        return flags


def flower_app_dir(app_dir: Path, recipe, run_dir: Path, expected_clients: int) -> Path:
    """A Flower app (pyproject.toml only) whose components are tuneloop's apps and whose run config
    carries the recipe; ``flwr run`` bundles and submits it."""
    make_dir(app_dir, "Flower app directory")
    config = {"recipe-yaml": recipe_text(recipe), "run-dir": str(run_dir), "expected-clients": expected_clients}
    lines = ["[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
             "[project]", f'name = "tuneloop-{_slug(recipe.name)}"', 'version = "1.0.0"',
             'description = "tuneloop federated fine-tuning"', 'license = "Apache-2.0"', "dependencies = []", "",
             "[tool.flwr.app]", 'publisher = "tuneloop"', "", "[tool.flwr.app.components]",
             'serverapp = "tuneloop.federated.apps:server_app"', 'clientapp = "tuneloop.federated.apps:client_app"',
             "", "[tool.flwr.app.config]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in config.items()]
    write_text_atomic(app_dir / "pyproject.toml", "\n".join(lines) + "\n")
    return app_dir


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "run"


def _toml_value(value) -> str:
    if isinstance(value, int):
        return str(value)
    import json

    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _bin(name: str) -> str:
    """Flower's command-line programs, from the same environment as this Python."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise UserError(f"{name} not found", hint="install Flower: pip install 'tuneloop[federated]'")
    return found


def flower_env() -> dict:
    """This environment with Flower's programs first on PATH (the SuperLink and SuperNode start
    ``flower-superexec`` and the app processes by name)."""
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise UserError(f"the Flower process exited with code {process.returncode} before listening on "
                            f"{host}:{port}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise UserError(f"nothing listens on {host}:{port} after {timeout:g} s")


def run_server(recipe, host: str, port: int, security: Security, expected_clients: int,
               log=sys.stdout) -> Path:
    """SuperLink + submitted run, until the run ends; returns the run directory."""
    run_dir = check_output_dir(recipe.run_dir(), "run directory").resolve()
    make_dir(run_dir, "run directory")
    home = make_dir(run_dir / "flower")  # Flower's state for this run: config, bundles, logs
    app_dir = flower_app_dir(home / "app", recipe, run_dir, expected_clients)
    env = dict(flower_env(), FLWR_HOME=str(home))
    connection = [f'address = "{host}:{port}"']
    connection += ["insecure = true"] if security.insecure else (
        [f'root-certificates = "{security.ca_certfile}"'] if security.ca_certfile else [])
    write_text_atomic(home / "config.toml", "\n".join(
        ["[superlink]", 'default = "tuneloop"', "", "[superlink.tuneloop]", *connection]) + "\n")
    # A SIGTERM to this process must still stop the SuperLink (it runs in its own session).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    link = subprocess.Popen([_bin("flower-superlink"), *security.server_flags(), "--host", host, "--port",
                             str(port), "--disable-runtime-dependency-installation", *security.extra],
                            env=env, cwd=app_dir, stdout=open(home / "superlink.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(host, port, 300, link)  # a loaded machine can take minutes to import Flower
        print(f"Flower SuperLink listening on {host}:{port}; waiting for {expected_clients} client(s)",
              file=log, flush=True)
        submitted = subprocess.run([_bin("flwr"), "run", str(app_dir), "tuneloop", "--stream"], env=env,
                                   cwd=app_dir, stdout=log, stderr=subprocess.STDOUT)
        if submitted.returncode != 0 or not (run_dir / "summary.json").is_file():
            raise UserError(f"the federated run did not finish (flwr run exit code {submitted.returncode})",
                            where=str(run_dir), hint=f"the server log is {home / 'superlink.log'}")
    finally:
        link.terminate()
        try:
            link.wait(20)
        except subprocess.TimeoutExpired:
            link.kill()
    return run_dir


def client_command(server: str, data_dir: Path, security: Security, port: int,
                   private_key: str | None = None, public_key: str | None = None) -> list[str]:
    """The ``flower-supernode`` command line for a client with its own data directory."""
    if not data_dir.is_dir():
        raise UserError(f"--data-dir: not a directory: {data_dir}")
    flags = ["--insecure"] if security.insecure else (
        ["--root-certificates", security.ca_certfile] if security.ca_certfile else [])
    if not flags:
        raise UserError("the client needs --root-certificates (the server's CA) or --insecure")
    if private_key and public_key:
        flags += ["--auth-supernode-private-key", private_key, "--auth-supernode-public-key", public_key]
    return [_bin("flower-supernode"), *flags, "--superlink", server, "--port", str(port),
            "--node-config", f'data-dir="{data_dir.resolve()}"', *security.extra]
