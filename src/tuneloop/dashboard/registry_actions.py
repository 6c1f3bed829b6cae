"""The registry forms' writes: validate the fields, move the alias through the registry, audit it.

The move is :meth:`Registry.promote` / :meth:`Registry.rollback`, the same transactional
compare-and-set that ``tuneloop registry promote`` uses, so a server following the alias switches as it
would after the command. Each move is also appended to the store's ``audit_log`` with who made it.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import Engine

from tuneloop.errors import UserError
from tuneloop.registry.store import Registry
from tuneloop.serve.access import audit

_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class FormErrors(Exception):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _check_alias(form: dict, errors: dict) -> str:
    alias = form.get("alias", "").strip()
    if not _ALIAS.fullmatch(alias):
        errors["alias"] = "an alias is a lowercase name such as production or candidate (letters, digits, _ or -)"
    return alias


def _check_confirm(form: dict, errors: dict) -> None:
    if form.get("confirm") != "yes":
        errors["confirm"] = "the move was not confirmed (the page asks before it moves an alias)"


def promote(registry: Registry, audit_engine: Engine, name: str, form: dict, actor: str) -> str:
    registry.require(name)
    errors: dict[str, str] = {}
    text = form.get("version", "").strip().lstrip("vV")
    known = [v.version for v in registry.versions(name)]
    if not text.isdigit():
        errors["version"] = f"{form.get('version', '')!r} is not a version number (versions: " \
                            f"{', '.join(map(str, known))})"
    elif int(text) not in known:
        errors["version"] = f"{name} has no version {text} (versions: {', '.join(map(str, known))})"
    alias = _check_alias(form, errors)
    reason = form.get("reason", "").strip()
    if len(reason) > 500:
        errors["reason"] = "at most 500 characters"
    _check_confirm(form, errors)
    if errors:
        raise FormErrors(errors)
    try:
        before, after = registry.promote(name, int(text), alias, actor=actor, reason=reason or "promoted in the dashboard")
    except UserError as e:
        raise FormErrors({"version": e.message}) from None
    audit(actor, "registry.promote", {"name": name, "alias": alias, "from": before, "to": after}, audit_engine)
    return f"{alias}: v{before} -> v{after}" if before is not None else f"{alias} -> v{after}"


def rollback(registry: Registry, audit_engine: Engine, name: str, form: dict, actor: str) -> str:
    registry.require(name)
    errors: dict[str, str] = {}
    alias = _check_alias(form, errors)
    _check_confirm(form, errors)
    if errors:
        raise FormErrors(errors)
    try:
        before, after = registry.rollback(name, alias, actor=actor, reason="rolled back in the dashboard")
    except UserError as e:
        raise FormErrors({"alias": e.message}) from None
    audit(actor, "registry.rollback", {"name": name, "alias": alias, "from": before, "to": after}, audit_engine)
    return f"{alias}: v{before} -> v{after} (rollback)"
