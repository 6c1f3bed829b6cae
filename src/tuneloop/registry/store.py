"""The model registry: versions with lineage, aliases that move, and the history of every move.

Why tables in the serving store's database and not MLflow's model registry: the loop's three
parties (``serve`` reading feedback and following an alias, ``improve`` writing versions, a person
running ``registry promote``) already share that one SQLAlchemy URL (SQLite by default, PostgreSQL
with ``--db``), so one URL configures the whole loop and no tracking server is needed. And a
promotion here is a compare-and-set inside one database transaction (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL ``SELECT ... FOR UPDATE`` on the model's row), which MLflow's alias API cannot offer:
two processes promoting at once are serialised, and ``improve`` can say "move production from v3
to v4, unless someone moved it meanwhile". MLflow stays the place for training metrics.

Tables: ``registry_models`` (one row per model name, the lock target), ``registry_versions``
(path of the run directory, base model, parent version, recipe, data manifest hash, training and
regression data, eval results), ``registry_aliases`` (``production``, ``candidate``, ``archived``
... -> version), ``registry_events`` (who or what moved which alias from where to where, when and
why; ``rollback`` reads it) and ``improve_rounds`` (what each ``tuneloop improve`` round consumed
and decided).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (JSON, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text, insert,
                        select, update)
from sqlalchemy.engine import Connection, Engine

from tuneloop.errors import UserError
from tuneloop.database.engine import open_engine, utcnow

ALIASES = ("production", "candidate", "archived")
metadata = MetaData()

models_table = Table(
    "registry_models", metadata,
    Column("name", String(200), primary_key=True),
    Column("created", DateTime(timezone=True)),
)

versions_table = Table(
    "registry_versions", metadata,
    Column("name", String(200), ForeignKey("registry_models.name"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("path", Text),  # the run directory (or model directory) that serves this version
    Column("base_model", Text, nullable=True),
    Column("parent_version", Integer, nullable=True),
    Column("recipe", JSON, nullable=True),
    Column("data_manifest_hash", String(128), nullable=True),
    Column("train_data", Text, nullable=True),  # replayed by the next round
    Column("regression_data", Text, nullable=True),  # what later rounds must not get worse on
    Column("eval", JSON, nullable=True),
    Column("source", Text, nullable=True),  # "registered by hand", "improve round 3", ...
    Column("created_by", String(200), nullable=True),
    Column("created", DateTime(timezone=True)),
    Column("model_card", Text, nullable=True),  # the version's Hugging Face model card (README.md text)
)

aliases_table = Table(
    "registry_aliases", metadata,
    Column("name", String(200), ForeignKey("registry_models.name"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer),
)

events_table = Table(
    "registry_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), index=True),
    Column("action", String(32)),  # register | promote | rollback
    Column("alias", String(64), nullable=True),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=True),
    Column("actor", String(200)),
    Column("reason", Text, nullable=True),
    Column("created", DateTime(timezone=True)),
)

rounds_table = Table(
    "improve_rounds", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), index=True),
    Column("status", String(32)),  # promoted | rejected
    Column("feedback_through", Integer),  # the last feedback row id this round consumed
    Column("production_version", Integer, nullable=True),  # what the round started from
    Column("version", Integer, nullable=True),  # the candidate it registered
    Column("gate", JSON, nullable=True),
    Column("report", Text, nullable=True),
    Column("created", DateTime(timezone=True)),
)


@dataclass
class ModelVersion:
    name: str
    version: int
    path: str
    base_model: str | None = None
    parent_version: int | None = None
    recipe: dict | None = None
    data_manifest_hash: str | None = None
    train_data: str | None = None
    regression_data: str | None = None
    eval: dict | None = None
    source: str | None = None
    created_by: str | None = None
    created: datetime | None = None
    aliases: list[str] = field(default_factory=list)
    model_card: str | None = None


def open_registry_engine(url: str | None) -> Engine:
    # Serialisable on SQLite: a promotion reads the alias and moves it in one transaction.
    return open_engine(url, serialisable=True)


class Registry:
    """Reads and transactional writes of the registry tables. Safe to use from several processes."""

    def __init__(self, url: str | None = None):
        self.engine = open_registry_engine(url)
        self.url = self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- reads ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(models_table.c.name).order_by(models_table.c.name)).scalars())

    def aliases(self, name: str, conn: Connection | None = None) -> dict[str, int]:
        query = select(aliases_table.c.alias, aliases_table.c.version).where(aliases_table.c.name == name)
        if conn is not None:
            return dict(conn.execute(query).all())
        with self.engine.connect() as c:
            return dict(c.execute(query).all())

    def versions(self, name: str) -> list[ModelVersion]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(versions_table).where(versions_table.c.name == name)
                                .order_by(versions_table.c.version)).all()
            aliases = self.aliases(name, conn)
        return [_version(row._mapping, aliases) for row in rows]

    def get(self, name: str, version_or_alias: str | int) -> ModelVersion:
        """A version by number (``3``, ``"3"``, ``"v3"``) or by alias (``"production"``)."""
        with self.engine.connect() as conn:
            self._require_model(conn, name)
            aliases = self.aliases(name, conn)
            number = _version_number(version_or_alias)
            if number is None:
                if version_or_alias not in aliases:
                    raise UserError(f"model {name!r} has no alias {version_or_alias!r}",
                                    where=f"registry:{name}@{version_or_alias}",
                                    hint="aliases set: " + (", ".join(sorted(aliases)) or "none") +
                                         "; `tuneloop registry promote NAME VERSION` sets production")
                number = aliases[version_or_alias]
            row = conn.execute(select(versions_table).where(versions_table.c.name == name,
                                                            versions_table.c.version == number)).first()
        if row is None:
            raise UserError(f"model {name!r} has no version {number}", where=f"registry:{name}@{number}",
                            hint=f"`tuneloop registry show {name}` lists its versions")
        return _version(row._mapping, aliases)

    def require(self, name: str) -> None:
        """UserError (with the known names) unless ``name`` is registered."""
        with self.engine.connect() as conn:
            self._require_model(conn, name)

    def events(self, name: str) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(events_table).where(events_table.c.name == name).order_by(events_table.c.id))]

    def rounds(self, name: str) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(rounds_table).where(rounds_table.c.name == name).order_by(rounds_table.c.id))]

    def feedback_through(self, name: str) -> int:
        """The last feedback row id a finished round of ``name`` consumed (0 before the first)."""
        rounds = self.rounds(name)
        return max((r["feedback_through"] or 0 for r in rounds), default=0)

    @staticmethod
    def _require_model(conn: Connection, name: str) -> None:
        if conn.execute(select(models_table.c.name).where(models_table.c.name == name)).first() is None:
            known = list(conn.execute(select(models_table.c.name)).scalars())
            raise UserError(f"no model {name!r} in the registry", where=f"registry:{name}",
                            hint=("models: " + ", ".join(known)) if known else
                                 "register one with `tuneloop registry register NAME RUN_DIR`")

    # -- writes (each one transaction) ----------------------------------------------------------
    def register(self, version: ModelVersion, alias: str | None = None, actor: str = "user",
                 reason: str | None = None, round_record: dict | None = None,
                 promote_if_production_is: int | None = None) -> ModelVersion:
        """Add ``version`` as the model's next version number (its ``version`` field is ignored).

        ``alias`` is set on it in the same transaction. With ``promote_if_production_is`` it also
        becomes production, only if production is still that version (else it stays a candidate).
        ``round_record`` (an improve round) is written in the same transaction too, so a round
        either leaves every trace or none.
        """
        with self.engine.begin() as conn:
            self._lock_model(conn, version.name, create=True)
            number = (conn.execute(select(versions_table.c.version).where(versions_table.c.name == version.name)
                                   .order_by(versions_table.c.version.desc()).limit(1)).scalar() or 0) + 1
            values = {k: v for k, v in version.__dict__.items() if k not in ("aliases", "version", "created")}
            conn.execute(insert(versions_table).values(**values, version=number, created=utcnow()))
            self._event(conn, version.name, "register", None, None, number, actor, reason)
            promoted = False
            if promote_if_production_is is not None:
                current = self.aliases(version.name, conn).get("production")
                if current == promote_if_production_is:
                    self._move(conn, version.name, "production", number, actor, "promote", reason)
                    promoted = True
            if alias and not promoted:
                self._move(conn, version.name, alias, number, actor, "promote", reason)
            if round_record is not None:
                status = round_record["status"]
                if status == "promoted" and not promoted:
                    status = "superseded"  # production moved while the round ran: left as candidate
                conn.execute(insert(rounds_table).values(**{**round_record, "status": status}, name=version.name,
                                                         version=number, created=utcnow()))
        return self.get(version.name, number)

    def record_round(self, name: str, round_record: dict) -> None:
        """A round that registered nothing (e.g. no usable feedback), so its feedback is not re-read."""
        with self.engine.begin() as conn:
            self._lock_model(conn, name)
            conn.execute(insert(rounds_table).values(**round_record, name=name, created=utcnow()))

    def promote(self, name: str, version_or_alias: str | int, alias: str = "production", actor: str = "user",
                reason: str | None = None, expected: int | None = None) -> tuple[int | None, int]:
        """Point ``alias`` at a version; returns (previous version, new version).

        ``expected``: only if the alias is still on that version (compare-and-set), else UserError.
        The version that loses ``production`` is marked ``archived``.
        """
        target = self.get(name, version_or_alias).version
        with self.engine.begin() as conn:
            self._lock_model(conn, name)
            current = self.aliases(name, conn).get(alias)
            if expected is not None and current != expected:
                raise UserError(f"{alias} of {name!r} is v{current}, not v{expected}: someone moved it meanwhile",
                                hint=f"`tuneloop registry show {name}` shows the history")
            self._move(conn, name, alias, target, actor, "promote", reason)
        return current, target

    def rollback(self, name: str, alias: str = "production", actor: str = "user",
                 reason: str | None = None) -> tuple[int, int]:
        """Move ``alias`` back to the version it pointed at before its last move."""
        with self.engine.begin() as conn:
            self._lock_model(conn, name)
            current = self.aliases(name, conn).get(alias)
            moves = conn.execute(select(events_table).where(
                events_table.c.name == name, events_table.c.alias == alias,
                events_table.c.action.in_(("promote", "rollback")),
                events_table.c.to_version == current).order_by(events_table.c.id.desc()).limit(1)).first()
            previous = moves.from_version if moves is not None else None
            if previous is None:
                raise UserError(f"{alias} of {name!r} has no earlier version to go back to",
                                hint=f"`tuneloop registry promote {name} VERSION` picks one explicitly")
            self._move(conn, name, alias, previous, actor, "rollback", reason)
        return current, previous

    # -- helpers --------------------------------------------------------------------------------
    def _lock_model(self, conn: Connection, name: str, create: bool = False) -> None:
        # The row lock that serialises writers on PostgreSQL (SQLite holds its write lock already).
        row = conn.execute(select(models_table.c.name).where(models_table.c.name == name).with_for_update()).first()
        if row is None:
            if not create:
                self._require_model(conn, name)
            conn.execute(insert(models_table).values(name=name, created=utcnow()))

    def _move(self, conn: Connection, name: str, alias: str, version: int, actor: str, action: str,
              reason: str | None) -> None:
        aliases = self.aliases(name, conn)
        current = aliases.get(alias)
        if current == version:
            return
        if current is None:
            conn.execute(insert(aliases_table).values(name=name, alias=alias, version=version))
        else:
            conn.execute(update(aliases_table).where(aliases_table.c.name == name, aliases_table.c.alias == alias)
                         .values(version=version))
        self._event(conn, name, action, alias, current, version, actor, reason)
        if alias == "production" and current is not None:
            self._move(conn, name, "archived", current, actor, action, f"replaced by v{version} in production")
        if alias == "production" and aliases.get("candidate") == version:
            conn.execute(aliases_table.delete().where(aliases_table.c.name == name,
                                                      aliases_table.c.alias == "candidate"))

    @staticmethod
    def _event(conn, name, action, alias, from_version, to_version, actor, reason) -> None:
        conn.execute(insert(events_table).values(name=name, action=action, alias=alias, from_version=from_version,
                                                 to_version=to_version, actor=actor, reason=reason,
                                                 created=utcnow()))


def _version(row, aliases: dict[str, int]) -> ModelVersion:
    values = {k: row[k] for k in ModelVersion.__dataclass_fields__ if k != "aliases"}
    return ModelVersion(**values, aliases=sorted(a for a, v in aliases.items() if v == row["version"]))


def _version_number(text: str | int) -> int | None:
    if isinstance(text, int):
        return text
    text = text.strip()
    digits = text[1:] if text[:1] in ("v", "V") else text
    return int(digits) if digits.isdigit() else None
