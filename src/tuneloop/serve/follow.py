"""``serve --model registry:NAME@ALIAS`` follows the alias: a new version replaces the old without downtime.

:class:`FollowingEngine` stands where the engine stands (``submit``, ``tokenizer``, ``max_context``,
``close``) and holds the current engine. A poll thread reads the registry every ``poll_s`` seconds;
when an alias points at another version it:

1. plans and loads the new version into a second engine *beside* the running one (requests keep
   being served by the old engine meanwhile);
2. switches: under a lock, the current engine becomes the new one and the served model table is
   updated in place, so every request submitted from then on runs on the new version;
3. drains: requests already submitted to the old engine finish there (a job is finished once the
   service has set its ``cancelled`` flag, which it does in a ``finally`` for every request);
4. frees the old engine (its worker thread stops, its weights are dropped).

A version that fails to load is logged and skipped; the old one keeps serving. Rollback is the same
move backwards (the alias moves back, the engine follows).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tuneloop.registry.reference import is_registry_reference, parse_reference, resolve_reference
from tuneloop.serve.adapters import ModelTable, parse_option, plan_models

log = logging.getLogger("tuneloop.serve")


def uses_registry(options: list[str]) -> bool:
    return any(is_registry_reference(parse_option(o)[1]) for o in options)


def concrete_options(options: list[str], db_url: str | None) -> tuple[list[str], dict[str, int]]:
    """--model options with each registry reference replaced by its version's path (served as NAME),
    and the version each reference resolved to."""
    concrete, versions = [], {}
    for option in options:
        name, reference = parse_option(option)
        if not is_registry_reference(reference):
            concrete.append(option)
            continue
        version = resolve_reference(reference, db_url)
        versions[reference] = version.version
        concrete.append(f"{name or parse_reference(reference).name}={version.path}")
    return concrete, versions


@dataclass
class _Retired:
    engine: object
    jobs: list
    since: float = field(default_factory=time.monotonic)


class FollowingEngine:
    def __init__(self, options: list[str], db_url: str | None, table: ModelTable, engine, versions: dict[str, int],
                 make_engine: Callable[[ModelTable], object], poll_s: float = 5.0, drain_timeout_s: float = 600.0):
        self.options, self.db_url, self.table = options, db_url, table
        self.make_engine, self.poll_s, self.drain_timeout_s = make_engine, poll_s, drain_timeout_s
        self.versions = dict(versions)
        self.swaps: list[dict] = []  # what /health shows: every switch, with its time
        self._engine, self._jobs = engine, []
        self._retired: list[_Retired] = []
        self._failed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="tuneloop-registry-follower", daemon=True)
        self._thread.start()

    # -- the engine interface the service uses --------------------------------------------------
    @property
    def tokenizer(self):
        return self._engine.tokenizer

    @property
    def max_context(self) -> int:
        return self._engine.max_context

    def submit(self, model_id: str, prompt_ids: list[int], params):
        with self._lock:  # no job reaches an engine after it was switched away from
            job = self._engine.submit(model_id, prompt_ids, params)
            self._jobs.append(job)
        return job

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for retired in self._retired:
            retired.engine.close()
        self._engine.close()

    # -- following ------------------------------------------------------------------------------
    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
            except Exception:  # the registry is unreachable for a moment: keep serving, try again
                log.exception("could not read the registry")
            self._free_drained()

    def check_once(self) -> bool:
        """Switch if an alias moved; True when it did."""
        options, versions = concrete_options(self.options, self.db_url)
        if versions == self.versions or versions == self._failed:
            return False
        try:
            table = plan_models(options)
            engine = self.make_engine(table)
        except Exception:
            log.exception("could not load %s; still serving %s", versions, self.versions)
            self._failed = versions
            return False
        with self._lock:
            old, jobs = self._engine, self._jobs
            self._engine, self._jobs = engine, []
            self.table.base_path, self.table.models = table.base_path, table.models
            previous, self.versions = self.versions, versions
        self._retired.append(_Retired(old, jobs))
        self.swaps.append({"from": previous, "to": versions, "at": time.time()})
        log.warning("now serving %s (was %s); the old version finishes its %d requests", versions, previous,
                    sum(1 for j in jobs if not j.cancelled.is_set()))
        return True

    def _free_drained(self) -> None:
        for retired in list(self._retired):
            busy = [j for j in retired.jobs if not j.cancelled.is_set()]
            if busy and time.monotonic() - retired.since < self.drain_timeout_s:
                retired.jobs = busy
                continue
            retired.engine.close()
            self._retired.remove(retired)
            del retired
            gc.collect()

    @property
    def draining(self) -> int:
        """Old engines still finishing requests."""
        return len(self._retired)
