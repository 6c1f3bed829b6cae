"""The search space: a recipe's ``search:`` section turned into Optuna suggestions and trial recipes.

``search.params`` maps dotted recipe paths (``train.learning_rate``, ``lora.r``, ``method``) to a
distribution. :func:`check_space` builds a recipe at every bound and every choice before any trial
runs, so a value the recipe would reject (``lora.r: 0``, ``method: sft``) fails up front with the
key path. :func:`suggest` asks an Optuna trial for one point; :func:`trial_recipe` applies it.
"""

from __future__ import annotations

import json
from typing import Any

from tuneloop.config.recipe import Recipe, SearchParam, recipe_from_dict
from tuneloop.errors import UserError

_SCALARS = (type(None), bool, int, float, str)


def base_dict(recipe: Recipe) -> dict:
    """The recipe as plain data, without its search section (trials and the best recipe need none)."""
    raw = recipe.model_dump(mode="json")
    raw.pop("search", None)
    return raw


def set_path(raw: dict, path: str, value: Any) -> dict:
    node = raw
    *parents, last = path.split(".")
    for part in parents:
        if node.get(part) is None:  # an optional section that is off (e.g. train.early_stopping: null)
            node[part] = {}
        node = node[part]
    node[last] = value
    return raw


def get_path(raw: dict, path: str) -> Any:
    node = raw
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def trial_recipe(recipe: Recipe, values: dict[str, Any], source: str = "search") -> Recipe:
    """The base recipe with ``values`` (dotted path -> value) applied, validated like any recipe."""
    raw = base_dict(recipe)
    for path, value in values.items():
        set_path(raw, path, value)
    return recipe_from_dict(raw, source=source)


def check_space(recipe: Recipe, source: str) -> None:
    """Every bound and choice must make a valid recipe; raises UserError naming the key path."""
    if recipe.search is None:
        raise UserError("the recipe has no search: section", where=source,
                        hint="add e.g. search: {params: {train.learning_rate: "
                             "{distribution: log_uniform, low: 1.0e-5, high: 1.0e-3}}}")
    if not recipe.data.validation and not recipe.data.mixture:
        raise UserError("tune ranks trials by validation loss, but data.validation is not set", where=source,
                        hint="set data.validation (e.g. prepared/validation.jsonl from `tuneloop data prepare`)")
    for path, param in recipe.search.params.items():
        for value in _probe_values(param):
            try:
                trial_recipe(recipe, {path: value}, source=source)
            except UserError as e:
                first = str(e).splitlines()[0].split(": ", 1)[-1]
                raise UserError(f"search.params.{path}: the value {value!r} is not valid there ({first})",
                                where=source, hint=_fix_hint(path, param)) from None


def _probe_values(param: SearchParam) -> list:
    if param.distribution == "categorical":
        return list(param.choices)
    if param.distribution in ("int", "log_int"):
        return [int(param.low), int(param.high)]
    return [float(param.low), float(param.high)]


def _fix_hint(path: str, param: SearchParam) -> str:
    if param.distribution == "categorical":
        return f"list only values that {path} accepts in a recipe"
    return f"narrow the range to values that {path} accepts in a recipe"


def suggest(trial, search) -> dict[str, Any]:
    """One point of the space from an Optuna trial: {dotted path: value}."""
    values = {}
    for path, p in search.params.items():
        d = p.distribution
        if d == "categorical":
            values[path] = _suggest_choice(trial, path, p.choices)
        elif d in ("int", "log_int"):
            step = int(p.step or 1)
            values[path] = trial.suggest_int(path, int(p.low), int(p.high), step=step, log=d == "log_int")
        else:
            values[path] = trial.suggest_float(path, float(p.low), float(p.high), step=p.step,
                                               log=d == "log_uniform")
    return values


def _suggest_choice(trial, path: str, choices: list) -> Any:
    # Optuna stores only scalar choices; lists (target_modules: [q_proj, v_proj]) go through JSON.
    if all(isinstance(c, _SCALARS) for c in choices):
        return trial.suggest_categorical(path, choices)
    picked = trial.suggest_categorical(path, [json.dumps(c) for c in choices])
    return json.loads(picked)


def decode_params(params: dict[str, Any], search) -> dict[str, Any]:
    """A finished trial's stored params back to recipe values (JSON-encoded choices decoded)."""
    out = {}
    for path, value in params.items():
        spec = search.params.get(path)
        encoded = (spec is not None and spec.distribution == "categorical"
                   and not all(isinstance(c, _SCALARS) for c in spec.choices))
        out[path] = json.loads(value) if encoded else value
    return out
