"""The Flower apps, as Flower loads them (``tuneloop.federated.apps:server_app`` / ``:client_app``).

In a deployment the SuperLink starts ``server_app`` and every SuperNode starts ``client_app``; both
read the recipe from the run config that ``tuneloop federated server`` submits (``recipe-yaml``,
``run-dir``, ``expected-clients``). The simulation builds the same apps with the recipe in hand.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from tuneloop.federated.client import make_client_app, recipe_from_yaml
from tuneloop.federated.server import serve_rounds


def make_server_app(recipe_yaml: str | None = None, run_dir: Path | None = None,
                    expected_clients: int | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        text = recipe_yaml or str(context.run_config["recipe-yaml"])
        directory = run_dir or Path(str(context.run_config["run-dir"]))
        expected = expected_clients or int(context.run_config["expected-clients"])
        serve_rounds(grid, recipe_from_yaml(text), directory, expected, text)

    return app


server_app = make_server_app()
client_app = make_client_app()
