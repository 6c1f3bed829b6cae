"""``tuneloop keys add|list|revoke``: API keys with scopes for ``tuneloop serve``, kept hashed in its store.

Example: ``tuneloop keys add support-app --scope infer --scope feedback`` prints the key once;
``tuneloop serve`` (same ``--db``) then requires a key on ``/v1/*``. Adding and revoking keys is
written to the store's audit log (``tuneloop keys audit`` shows it).
"""

from __future__ import annotations

import json

import click

DB_OPTION = click.option("--db", "db_url", default=None,
                         help="SQLAlchemy URL of the serving store [default: sqlite under TUNELOOP_HOME].")


@click.group()
def keys():
    """API keys with scopes (infer, feedback, admin) for `tuneloop serve`."""


@keys.command("add")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="SCOPE",
              help="infer, feedback or admin (repeatable, or comma-separated).")
@click.option("--rate-limit", type=click.IntRange(1), default=None, metavar="N",
              help="Requests per minute for this key [default: the server's --rate-limit].")
@DB_OPTION
def add(name, scopes, rate_limit, db_url):
    """Make a key NAME; prints the key once (only its hash is stored)."""
    from tuneloop.serve.access import add_key
    from tuneloop.database.engine import open_engine

    key = add_key(open_engine(db_url), name, scopes, rate_limit)
    click.echo(key)
    click.echo(f"key {name!r} stored (hashed); it is shown only now: keep it somewhere safe", err=True)


@keys.command("list")
@DB_OPTION
def list_command(db_url):
    """Keys by name, scopes, limit, and when made or revoked (never the keys themselves)."""
    from tuneloop.serve.access import list_keys
    from tuneloop.database.engine import open_engine

    rows = list_keys(open_engine(db_url))
    if not rows:
        click.echo("no keys (add one with `tuneloop keys add NAME --scope infer`)", err=True)
    for row in rows:
        state = f"revoked {row['revoked']:%Y-%m-%d %H:%M}" if row["revoked"] else "active"
        limit = f"{row['rate_limit_per_minute']}/min" if row["rate_limit_per_minute"] else "-"
        click.echo(f"{row['name']:<24} {row['scopes']:<22} {limit:<9} made {row['created']:%Y-%m-%d %H:%M}  {state}")


@keys.command("revoke")
@click.argument("name")
@DB_OPTION
def revoke(name, db_url):
    """Revoke key NAME; a running server refuses it within 2 seconds."""
    from tuneloop.serve.access import revoke_key
    from tuneloop.database.engine import open_engine

    revoke_key(open_engine(db_url), name)
    click.echo(f"key {name!r} revoked", err=True)


@keys.command("audit")
@DB_OPTION
def audit_command(db_url):
    """The audit log of admin actions, oldest first, one JSON object a line."""
    from tuneloop.serve.access import audit_entries
    from tuneloop.database.engine import open_engine

    for row in audit_entries(open_engine(db_url)):
        click.echo(json.dumps({**row, "created": row["created"].isoformat()}))
