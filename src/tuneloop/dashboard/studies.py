"""Tuning studies (``tuneloop tune``'s Optuna studies, ``OUT/study.db``) and their charts as inline SVG.

``tuneloop tune`` keeps each study in ``OUT/study.db`` (SQLite; see :mod:`tuneloop.tune.study`). The
dashboard finds those files under its folders a few levels deep, as it finds ``eval.json`` reports;
a study is addressed by ``<folder index>:<relative path of study.db>:<study name>``, and only found
files are opened. The charts are drawn here from the trials (no plotting library, no network):
the optimisation history (each finished trial's objective and the best-so-far line) and parallel
coordinates (one line per complete trial across its parameters, coloured by objective).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tuneloop.dashboard.html import Html, esc
from tuneloop.errors import UserError

MAX_DEPTH = 4
STUDY_FILE = "study.db"
_SKIP = frozenset({"checkpoints", "adapter", "model", "trials", ".git", ".venv", "node_modules", "__pycache__"})


@dataclass
class StudyEntry:
    key: str
    path: Path
    name: str
    direction: str
    n_trials: int
    best_value: float | None
    best_params: dict


@dataclass
class Trial:
    number: int
    state: str
    value: float | None
    params: dict
    run_dir: str | None


def study_files(roots: list[Path]):
    """(folder index, root, path) of every ``study.db`` under the roots."""
    for index, root in enumerate(roots):
        base_depth = str(root).rstrip(os.sep).count(os.sep)
        for folder, dirs, files in os.walk(root):
            depth = folder.rstrip(os.sep).count(os.sep) - base_depth
            dirs[:] = [d for d in dirs if d not in _SKIP and depth < MAX_DEPTH]
            if STUDY_FILE in files:
                yield index, root, Path(folder) / STUDY_FILE


_STORAGES: dict[Path, object] = {}
_TRIALS: dict[tuple[Path, int], tuple[tuple, list]] = {}


def _storage(path: Path):
    """One Optuna storage per study file for the dashboard's life: opening one costs ~0.5 s (engine,
    schema check)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = path.resolve()
    if path not in _STORAGES:
        _STORAGES[path] = optuna.storages.RDBStorage(f"sqlite:///{path}")
    return _STORAGES[path]


def _stamp(path: Path) -> tuple:
    """Changes whenever SQLite writes the study (the file or its write-ahead log)."""
    files = [path, path.with_name(path.name + "-wal")]
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files)


def _trials(path: Path, study_id: int) -> list:
    """The study's trials, read again only when the file changed: reading 500 trials through
    Optuna takes ~0.15 s, and /tune plus a study page would otherwise pay it on every view."""
    key, stamp = (path.resolve(), study_id), _stamp(path)
    cached = _TRIALS.get(key)
    if cached is None or cached[0] != stamp:
        cached = _TRIALS[key] = (stamp, _storage(path).get_all_trials(study_id, deepcopy=False))
    return cached[1]


def _best(trials: list, direction: str):
    import optuna

    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    return (min if direction == "minimize" else max)(done, key=lambda t: t.value)


def list_studies(roots: list[Path]) -> list[StudyEntry]:
    found, seen = [], set()
    for index, root, path in study_files([Path(r) for r in roots]):
        if path.resolve() in seen:  # runs/ is usually under the evaluations' folder too
            continue
        seen.add(path.resolve())
        relative = path.relative_to(root).as_posix()
        storage = _storage(path)
        for study in storage.get_all_studies():
            direction = study.directions[0].name.lower()
            trials = _trials(path, study._study_id)
            best = _best(trials, direction)
            found.append(StudyEntry(f"{index}:{relative}:{study.study_name}", path, study.study_name, direction,
                                    len(trials), best.value if best else None, dict(best.params) if best else {}))
    return found


def get_study(roots: list[Path], key: str):
    """(entry, trials) of the study ``key``; only studies in found files can be opened."""
    for entry in list_studies(roots):
        if entry.key == key:
            study_id = _storage(entry.path).get_study_id_from_name(entry.name)
            trials = [Trial(t.number, t.state.name, t.value, dict(t.params), t.user_attrs.get("run_dir"))
                      for t in _trials(entry.path, study_id)]
            return entry, trials
    raise UserError(f"no study {key!r}", where="study", hint="pick one from the tuning page")


def best_so_far(trials: list[Trial], direction: str) -> list[tuple[int, float]]:
    """(trial number, best objective up to and including it) for every complete trial, in order."""
    better = min if direction == "minimize" else max
    out, best = [], None
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != "COMPLETE" or t.value is None:
            continue
        best = t.value if best is None else better(best, t.value)
        out.append((t.number, best))
    return out


def _scale(low: float, high: float, out_low: float, out_high: float):
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) / span * (out_high - out_low)


def history_svg(trials: list[Trial], direction: str, width: int = 720, height: int = 300) -> Html:
    done = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    if not done:
        return Html('<p id="history-none">no complete trials yet</p>')
    numbers = [t.number for t in trials]
    values = [t.value for t in done]
    x = _scale(min(numbers), max(numbers), 50, width - 20)
    y = _scale(min(values), max(values), height - 30, 20)
    dots = "".join(f'<circle class="trial" cx="{x(t.number):.1f}" cy="{y(t.value):.1f}" r="4" '
                   f'data-trial="{t.number}"><title>trial {t.number}: {t.value:.6g}</title></circle>' for t in done)
    best = best_so_far(trials, direction)
    line = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in best)
    axes = (f'<line class="axis" x1="50" y1="{height - 30}" x2="{width - 20}" y2="{height - 30}"/>'
            f'<line class="axis" x1="50" y1="20" x2="50" y2="{height - 30}"/>'
            f'<text x="4" y="24">{max(values):.4g}</text><text x="4" y="{height - 30}">{min(values):.4g}</text>'
            f'<text x="{width / 2:.0f}" y="{height - 8}">trial</text>')
    return Html(f'<svg class="chart" id="history" viewBox="0 0 {width} {height}" data-trials="{len(done)}" '
                f'data-best="{best[-1][1]!r}">{axes}{dots}'
                f'<polyline class="best" fill="none" points="{line}" data-count="{len(best)}"/></svg>'
                '<p class="legend">dots: each complete trial\'s objective; line: the best so far '
                f'({esc(direction)})</p>')


def _axis_value(value, choices: list) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float(choices.index(value)) if value in choices else None
    return float(value)


def parallel_svg(trials: list[Trial], width: int = 720, height: int = 300) -> Html:
    """Parallel coordinates: an axis per parameter, then the objective; one line per complete trial."""
    done = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    names = sorted({p for t in done for p in t.params})
    if not done or not names:
        return Html('<p id="parallel-none">no complete trials with parameters yet</p>')
    axes = [*names, "objective"]
    step = (width - 100) / max(len(axes) - 1, 1)
    columns = {}
    for name in names:
        raw = [t.params.get(name) for t in done]
        choices = sorted({str(v) for v in raw if isinstance(v, str) or isinstance(v, bool)})
        columns[name] = [_axis_value(str(v) if isinstance(v, (str, bool)) else v, choices) for v in raw]
    columns["objective"] = [t.value for t in done]
    value_colour = _scale(min(columns["objective"]), max(columns["objective"]), 0, 1)
    lines = []
    for i, t in enumerate(done):
        points = []
        for a, name in enumerate(axes):
            column = [v for v in columns[name] if v is not None]
            if columns[name][i] is None:
                continue
            y = _scale(min(column), max(column), height - 30, 20)
            points.append(f"{50 + a * step:.1f},{y(columns[name][i]):.1f}")
        shade = value_colour(t.value)
        colour = f"rgb({int(40 + 200 * shade)},{int(120 - 60 * shade)},{int(220 - 180 * shade)})"
        lines.append(f'<polyline class="trial-line" fill="none" stroke="{colour}" points="{" ".join(points)}" '
                     f'data-trial="{t.number}"><title>trial {t.number}: {t.value:.6g}</title></polyline>')
    labels = "".join(f'<line class="axis" x1="{50 + a * step:.1f}" y1="20" x2="{50 + a * step:.1f}" '
                     f'y2="{height - 30}"/><text class="axis-name" x="{50 + a * step - 30:.1f}" '
                     f'y="{height - 10}">{esc(name)}</text>' for a, name in enumerate(axes))
    return Html(f'<svg class="chart" id="parallel" viewBox="0 0 {width} {height}" data-axes="{len(axes)}">'
                f'{labels}{"".join(lines)}</svg><p class="legend">one line per complete trial across its '
                'parameters and its objective (blue: low objective, red: high)</p>')
