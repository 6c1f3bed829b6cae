"""`tuneloop export RUN_DIR --format safetensors|gguf --out DIR`: a merged, standalone model."""

from __future__ import annotations

import click

from tuneloop.export import FORMATS


@click.command()
@click.argument("run_dir")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="safetensors", show_default=True,
              help="safetensors: a Hugging Face directory; gguf: one file for llama.cpp, Ollama, LM Studio; "
                   "quantized: the integer model a quantization-aware run was trained for.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory to write (must be new or empty unless --overwrite).")
@click.option("--gguf-dtype", type=click.Choice(["f32", "f16", "q8_0"]), default="f32", show_default=True,
              help="Tensor type of a GGUF export: f16 halves the file, q8_0 (llama.cpp's 8-bit blocks) "
                   "quarters it. An Ollama Modelfile is written beside it.")
@click.option("--quantize", type=click.Choice(["int4", "int8"]),
              help="Post-training quantization (int weights, int8 dynamic activations); implies "
                   "--format quantized. A QAT run exports with --format quantized alone.")
@click.option("--group-size", type=click.IntRange(min=8), default=32, show_default=True, help="Weights per scale (--quantize).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it already holds files.")
def export(run_dir, fmt, out_dir, gguf_dtype, quantize, group_size, overwrite):
    """Merge a run's adapter into its base and write a standalone model.

    RUN_DIR is a run directory (its adapter/ on its base, or its full model/) or any model reference.
    The adapter is merged into a freshly loaded float32 base; the merged model's logits are compared
    with the adapter model's, and what is written is loaded back and compared again.
    """
    from tuneloop.export import export_model

    if quantize:
        fmt = "quantized"
    try:
        record = export_model(run_dir, fmt, out_dir, overwrite=overwrite, gguf_dtype=gguf_dtype,
                              quantize=quantize, group_size=group_size)
    except Exception as e:  # a full disk under safetensors has no file name: say it of --out
        from tuneloop.paths import disk_error

        explained = disk_error(e, getattr(e, "filename", None) or out_dir, "an earlier export there is unchanged")
        if explained is None:
            raise
        raise explained from None
    click.echo(f"exported {fmt} to {out_dir} ({', '.join(record['files'])})")
