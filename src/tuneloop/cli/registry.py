"""``tuneloop registry``: model versions with lineage and aliases (production, candidate, archived).

    tuneloop registry register support runs/support-bot --alias production --regression-data heldout.jsonl
    tuneloop registry list
    tuneloop registry show support
    tuneloop registry card support production > README.md
    tuneloop registry diff support 1 2
    tuneloop registry promote support 2
    tuneloop registry rollback support

Every command takes ``--db URL`` (default: the serving store, ``$TUNELOOP_HOME/serve.db``).
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import click

DB_OPTION = click.option("--db", "db_url", default=None, envvar="TUNELOOP_REGISTRY_DB",
                         help="SQLAlchemy URL of the registry [default: the serving store under TUNELOOP_HOME].")


def _registry(db_url):
    from tuneloop.registry.store import Registry

    return Registry(db_url)


def _actor() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user"


@click.group()
def registry():
    """Model versions with lineage; aliases production / candidate / archived."""


@registry.command("register")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--alias", default=None, help="Set this alias on the new version (e.g. production).")
@click.option("--train-data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Its training data (later improve rounds replay a sample of it) [default: the run's recipe].")
@click.option("--regression-data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Questions later versions must not get worse on (JSONL, e.g. a held-out set with facts).")
@DB_OPTION
def register_command(name, path, alias, train_data, regression_data, db_url):
    """Add a run directory (or model directory) as the next version of NAME."""
    from tuneloop.export.model_card import build_model_card
    from tuneloop.models.loading import resolve_model
    from tuneloop.registry.lineage import version_from_run

    resolve_model(path)  # refuses a directory that is no model before anything is written
    version = version_from_run(name, Path(path), train_data=train_data, regression_data=regression_data,
                               source="registered by hand", created_by=_actor())
    version.model_card = build_model_card(path)
    reg = _registry(db_url)
    try:
        added = reg.register(version, alias=alias, actor=_actor())
    finally:
        reg.close()
    click.echo(f"{name} v{added.version}" + (f" ({', '.join(added.aliases)})" if added.aliases else "") +
               f": {added.path}")


@registry.command("list")
@DB_OPTION
def list_command(db_url):
    """Every model: versions, and which version each alias points at."""
    reg = _registry(db_url)
    try:
        rows = [(name, len(reg.versions(name)), reg.aliases(name)) for name in reg.names()]
    finally:
        reg.close()
    if not rows:
        click.echo("the registry is empty; add a run with `tuneloop registry register NAME RUN_DIR`")
        return
    click.echo(f"{'model':24} {'versions':>8}  aliases")
    for name, count, aliases in rows:
        shown = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items()))
        click.echo(f"{name:24} {count:>8}  {shown}")


@registry.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@DB_OPTION
def show_command(name, as_json, db_url):
    """NAME's versions with lineage, and the history of alias moves."""
    reg = _registry(db_url)
    try:
        reg.require(name)
        versions, events, rounds = reg.versions(name), reg.events(name), reg.rounds(name)
    finally:
        reg.close()
    if as_json:
        click.echo(json.dumps({"versions": [{k: x for k, x in v.__dict__.items() if k != "model_card"} for v in versions], "events": events, "rounds": rounds},
                              default=str, indent=2))
        return
    for v in versions:
        tags = f" [{', '.join(v.aliases)}]" if v.aliases else ""
        parent = f"v{v.parent_version}" if v.parent_version else "-"
        click.echo(f"v{v.version}{tags}  {v.created:%Y-%m-%d %H:%M}  parent {parent}  base {v.base_model}")
        click.echo(f"    path {v.path}; data {v.data_manifest_hash or '-'}; by {v.created_by}; {v.source}")
    click.echo("history:")
    for e in events:
        moved = f"{e['alias']}: v{e['from_version'] or '-'} -> v{e['to_version']}" if e["alias"] else \
            f"v{e['to_version']}"
        click.echo(f"    {e['created']:%Y-%m-%d %H:%M:%S}  {e['action']:9} {moved}  by {e['actor']}"
                   + (f"  ({e['reason']})" if e["reason"] else ""))


@registry.command("card")
@click.argument("name")
@click.argument("version", default="production")
@DB_OPTION
def card_command(name, version, db_url):
    """Print the model card (Hugging Face README.md) kept with VERSION (a number or an alias) of NAME."""
    from tuneloop.errors import UserError

    reg = _registry(db_url)
    try:
        found = reg.get(name, version)
    finally:
        reg.close()
    if not found.model_card:
        raise UserError(f"{name} v{found.version} has no model card (it was registered before cards were kept)",
                        hint=f"tuneloop export {found.path} --out DIR writes one from the same run")
    click.echo(found.model_card, nl=False)


@registry.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", default="production", show_default=True, help="The alias to move.")
@click.option("--reason", default=None, help="Kept in the history.")
@DB_OPTION
def promote_command(name, version, alias, reason, db_url):
    """Point ALIAS of NAME at VERSION (a number or another alias); servers following it switch."""
    reg = _registry(db_url)
    try:
        before, after = reg.promote(name, version, alias, actor=_actor(), reason=reason)
    finally:
        reg.close()
    click.echo(f"{name}@{alias}: v{before or '-'} -> v{after}")


@registry.command("rollback")
@click.argument("name")
@click.option("--alias", default="production", show_default=True)
@click.option("--reason", default=None)
@DB_OPTION
def rollback_command(name, alias, reason, db_url):
    """Move ALIAS back to the version it had before its last move."""
    reg = _registry(db_url)
    try:
        before, after = reg.rollback(name, alias, actor=_actor(), reason=reason)
    finally:
        reg.close()
    click.echo(f"{name}@{alias}: v{before} -> v{after} (rolled back)")


@registry.command("diff")
@click.argument("name")
@click.argument("a")
@click.argument("b")
@DB_OPTION
def diff_command(name, a, b, db_url):
    """What differs between two versions (numbers or aliases): lineage, recipe and eval figures."""
    from tuneloop.registry.lineage import diff_versions

    reg = _registry(db_url)
    try:
        first, second = reg.get(name, a), reg.get(name, b)
    finally:
        reg.close()
    rows = diff_versions(first, second)
    if not rows:
        click.echo(f"v{first.version} and v{second.version} have the same lineage")
    for key, left, right in rows:
        click.echo(f"{key}: {left} -> {right}")
