"""``tuneloop federated``: fine-tune one LoRA adapter across clients whose data never leaves them.

    tuneloop federated RECIPE.yaml                      # simulation on this machine (= simulate)
    tuneloop federated simulate RECIPE.yaml [--clients N] [--set key=value]...
    tuneloop federated server RECIPE.yaml --port 9091 --clients 2 (--insecure | --ssl-certfile ...)
    tuneloop federated client --server HOST:9091 --data-dir DIR (--insecure | --root-certificates CA)
    tuneloop federated split DATA.jsonl --clients 4 [--partitioning dirichlet --alpha 0.5] --out DIR

Flower (``flwr``) is imported only inside the commands, so ``tuneloop --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tuneloop.config.recipe import load_recipe
from tuneloop.errors import UserError


class DefaultToSimulate(click.Group):
    """``tuneloop federated RECIPE.yaml`` (the SPEC's form) means ``tuneloop federated simulate RECIPE.yaml``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["simulate", *args]
        return super().parse_args(ctx, args)


@click.group("federated", cls=DefaultToSimulate)
def federated():
    """Federated LoRA fine-tuning on Flower: simulation, or a server and client nodes."""


def _load(recipe_path, overrides, out_dir):
    recipe = load_recipe(recipe_path, list(overrides))
    if recipe.federated is None:
        raise UserError("the recipe has no federated: section", where=str(recipe_path),
                        hint="add e.g. federated: {rounds: 3, clients: 4, strategy: fedavg}")
    if out_dir:
        out = Path(out_dir)
        recipe.output_dir, recipe.name = str(out.parent), out.name
    return recipe


_set = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                    help="Override a recipe value, e.g. --set federated.rounds=5 (repeatable).")
_out = click.option("--out", "out_dir", type=click.Path(file_okay=False),
                    help="Run directory (default runs/<name>/).")


@federated.command("simulate")
@click.argument("recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False))
@click.option("--clients", type=int, help="Simulated clients (default federated.clients).")
@_set
@_out
def simulate(recipe_path, clients, overrides, out_dir):
    """Flower's simulation on this machine: clients as processes, partitions of data.train."""
    from tuneloop.federated.launch import simulate as run

    recipe = _load(recipe_path, overrides, out_dir)
    if clients:
        recipe.federated.clients = clients
    run_dir = run(recipe)
    click.echo(f"run directory: {run_dir}")


def _security(insecure, certfile, keyfile, ca_certfile, auth_public_keys=None):
    from tuneloop.federated.launch import Security

    return Security(insecure=insecure, certfile=certfile, keyfile=keyfile, ca_certfile=ca_certfile,
                    auth_public_keys=auth_public_keys)


@federated.command("server")
@click.argument("recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9091, show_default=True, help="Port for clients and the run submission.")
@click.option("--clients", type=int, help="Clients expected (default federated.min_available_clients).")
@click.option("--insecure", is_flag=True, help="No TLS (loopback rehearsals only).")
@click.option("--ssl-certfile", type=click.Path(dir_okay=False, exists=True), help="TLS certificate (PEM).")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False, exists=True), help="TLS private key (PEM).")
@click.option("--ssl-ca-certfile", type=click.Path(dir_okay=False, exists=True), help="CA certificate (PEM).")
@click.option("--auth-public-keys", type=click.Path(dir_okay=False, exists=True),
              help="CSV of client public keys: only those clients may join (Flower SuperNode auth).")
@_set
@_out
def server(recipe_path, host, port, clients, insecure, ssl_certfile, ssl_keyfile, ssl_ca_certfile,
           auth_public_keys, overrides, out_dir):
    """Flower server (SuperLink) holding the global adapter; runs the rounds, writes the run directory."""
    from tuneloop.federated.launch import run_server

    recipe = _load(recipe_path, overrides, out_dir)
    security = _security(insecure, ssl_certfile, ssl_keyfile, ssl_ca_certfile, auth_public_keys)
    run_dir = run_server(recipe, host, port, security, clients or recipe.federated.min_available_clients)
    click.echo(f"run directory: {run_dir}")


@federated.command("client")
@click.option("--server", "server_address", required=True, metavar="HOST:PORT", help="The server's address.")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="This client's data: the recipe's data.train file name inside it (e.g. train.jsonl).")
@click.option("--port", default=9094, show_default=True, help="Local port of this node's runtime API.")
@click.option("--insecure", is_flag=True, help="No TLS (loopback rehearsals only).")
@click.option("--root-certificates", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate that signed the server's TLS certificate.")
@click.option("--auth-private-key", type=click.Path(dir_okay=False, exists=True), help="This node's private key.")
@click.option("--auth-public-key", type=click.Path(dir_okay=False, exists=True), help="This node's public key.")
def client(server_address, data_dir, port, insecure, root_certificates, auth_private_key, auth_public_key):
    """Flower client node (SuperNode): trains the server's adapter on --data-dir; only the adapter leaves."""
    from tuneloop.federated.launch import client_command, flower_env

    command = client_command(server_address, Path(data_dir), _security(insecure, None, None, root_certificates),
                             port, auth_private_key, auth_public_key)
    sys.stdout.flush()
    os.execve(command[0], command, flower_env())  # this process becomes the SuperNode: signals reach it directly


@federated.command("split")
@click.argument("data", type=click.Path(dir_okay=False, exists=True))
@click.option("--clients", type=int, default=4, show_default=True)
@click.option("--partitioning", type=click.Choice(["iid", "dirichlet"]), default="iid", show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Dirichlet concentration.")
@click.option("--label-field", default="label", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def split(data, clients, partitioning, alpha, label_field, seed, out_dir):
    """Cut one JSONL into per-client data directories (to rehearse a deployment)."""
    from tuneloop.federated.partition import write_client_dirs

    for directory in write_client_dirs(data, out_dir, clients, partitioning, alpha, label_field, seed):
        click.echo(f"{directory}: {sum(1 for _ in open(directory / 'train.jsonl'))} records")
