"""``registry:NAME@ALIAS`` / ``registry:NAME@VERSION`` model references, wherever a model is accepted.

The registry's database is ``$TUNELOOP_REGISTRY_DB`` when set, else the serving store's default
(``$TUNELOOP_HOME/serve.db``); ``serve`` and ``improve`` pass their ``--db`` explicitly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tuneloop.errors import UserError
from tuneloop.registry.store import ModelVersion, Registry

PREFIX = "registry:"
_REFERENCE = re.compile(r"registry:([A-Za-z0-9][A-Za-z0-9._-]{0,127})@([A-Za-z0-9._-]{1,64})")


@dataclass(frozen=True)
class RegistryReference:
    name: str
    selector: str  # an alias ("production") or a version ("3", "v3")

    def __str__(self) -> str:
        return f"{PREFIX}{self.name}@{self.selector}"


def is_registry_reference(text: str) -> bool:
    return str(text).strip().startswith(PREFIX)


def parse_reference(text: str) -> RegistryReference:
    match = _REFERENCE.fullmatch(str(text).strip())
    if not match:
        raise UserError(f"{text!r} is not a registry reference", where="model",
                        hint="write registry:NAME@ALIAS (e.g. registry:support@production) or registry:NAME@3")
    return RegistryReference(match.group(1), match.group(2))


def registry_url(db_url: str | None = None) -> str | None:
    return db_url or os.environ.get("TUNELOOP_REGISTRY_DB") or None


def resolve_reference(text: str, db_url: str | None = None) -> ModelVersion:
    """The version a reference names now (an alias is read at call time: it may move later)."""
    reference = parse_reference(text)
    registry = Registry(registry_url(db_url))
    try:
        return registry.get(reference.name, reference.selector)
    finally:
        registry.close()
