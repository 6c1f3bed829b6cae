"""Export a run (or any model reference) as one standalone, merged model.

    from tuneloop.export import export_model
    export_model("runs/support-bot", "safetensors", "exported/support-bot")

Steps: load the base in full precision, merge the adapter and check the merge against the adapter
model (:mod:`tuneloop.export.merge`), write the format into a temporary directory, check that what was
written reads back as the same model, then rename the directory into place and add ``export.json``.
Formats are a table (:data:`FORMATS`): a new one is a function ``(merged, out_dir, **options) -> dict``
registered there. A classifier run (``labels.json`` + ``adapter/``, from ``tuneloop auto``) exports
as a plain transformers sequence classifier instead (:mod:`tuneloop.export.classifier`). CLI: ``tuneloop export RUN_DIR --format safetensors|gguf --out DIR``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.export.classifier import merge_classifier, write_classifier_dir
from tuneloop.export.model_card import write_model_card
from tuneloop.export.gguf_file import write_gguf
from tuneloop.export.hf_dir import write_hf_dir
from tuneloop.export.merge import load_merged
from tuneloop.export.quantized import write_quantized
from tuneloop.models.classifier import RUN_LABELS, is_classifier_run
from tuneloop.paths import check_output_dir, write_json_atomic


def _write_safetensors(merged, out_dir: Path, **options) -> dict:
    return write_hf_dir(merged, out_dir)


def _write_gguf(merged, out_dir: Path, gguf_dtype: str = "f32", **options) -> dict:
    return write_gguf(merged, out_dir, dtype=gguf_dtype)


def _write_quantized(merged, out_dir: Path, **options) -> dict:
    return write_quantized(merged, out_dir, **options)


# format name -> writer. Writers receive the merged model and an empty directory to fill.
FORMATS = {
    "safetensors": _write_safetensors,
    "gguf": _write_gguf,
    "quantized": _write_quantized,
}


def register_format(name: str, writer) -> None:
    FORMATS[name] = writer


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise UserError(f"{out_dir} already exists and is not empty",
                            hint="choose another --out, or pass --overwrite to replace it")

    check_output_dir(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot create the directory: {e.strerror or e}", where=f"--out {out_dir}",
                        hint="choose a directory you can write to") from None
    return tmp


def _export_classifier(run_dir, tmp: Path, log) -> tuple[str, str, float, dict]:
    """A classifier run: merged into a plain ``*ForSequenceClassification`` directory (export/classifier.py)."""
    merged, diff = merge_classifier(run_dir)
    log(f"export: classifier merge check passed (max |logit difference| {diff:.1e})")
    log("export: writing the classifier (safetensors) and reading it back...")
    base = json.loads((Path(run_dir) / RUN_LABELS).read_text())["base_model"]
    checks = write_classifier_dir(merged, tmp, base)
    return base, str(Path(run_dir) / "adapter"), diff, checks


def export_model(run_dir, fmt: str, out_dir, overwrite: bool = False, log=None, **options) -> dict:
    """Export ``run_dir`` (a run directory or any model reference) to ``out_dir`` in format ``fmt``.

    Returns the export record also written to ``out_dir/export.json``: source, base, format, the
    merge check (max |logit| difference, adapter vs merged) and the read-back check.
    """

    log = log or (lambda text: print(text, file=sys.stderr))
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}", hint=f"choose one of: {', '.join(FORMATS)}")
    classifier = is_classifier_run(run_dir)
    if classifier and fmt != "safetensors":
        raise UserError(f"{run_dir} is a classifier (LoRA + a label head): it exports as safetensors only, "
                        f"not {fmt}", where="--format", hint="use --format safetensors (the default)")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    tmp = _prepare_out_dir(out_dir, overwrite)
    try:
        log(f"export: loading {run_dir} in float32 (and merging its adapter, if it has one)...")
        if classifier:
            base, adapter, diff, checks = _export_classifier(run_dir, tmp, log)
        else:
            merged = load_merged(run_dir)
            base, adapter, diff = merged.base_path, merged.adapter_path, merged.merge_max_abs_diff
            if diff is not None:
                log(f"export: merge check passed (max |logit difference| {diff:.1e})")
            log(f"export: writing {fmt} and reading it back...")
            checks = FORMATS[fmt](merged, tmp, **options)
        write_model_card(tmp, run_dir, fmt)  # README.md: base, licence, data provenance, recipe, eval, bias
        record = {
            "source": str(run_dir), "base_model": base, "adapter": adapter,
            "format": fmt, "merge_max_abs_diff": diff, **checks,
            "files": sorted(p.name for p in tmp.iterdir()), "seconds": round(time.perf_counter() - started, 1),
        }
        write_json_atomic(tmp / "export.json", record)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"export: wrote {out_dir} in {record['seconds']} s")
    return record
