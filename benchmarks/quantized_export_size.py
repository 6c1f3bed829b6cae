"""Size on disk of the embedded model's exports, and whether plain transformers loads them.

    python benchmarks/quantized_export_size.py            # writes benchmarks/results/quantized_export.json

For each of float safetensors, --quantize int8, --quantize int4 and GGUF q8_0: bytes on disk (the
whole directory and model.safetensors alone), and for the safetensors directories (float and
quantized) a load in a fresh interpreter that imports only transformers (torchao installed), with the
greedy answer to one question; the int4 directory is also served (``tuneloop serve``'s app, in
process) and asked the same question over HTTP.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
import torchao

from tuneloop.export import export_model
from tuneloop.serve.app import build
from tuneloop.serve.runner import ServerThread
from tuneloop.serve.settings import ServeSettings

RESULTS = Path(__file__).parent / "results" / "quantized_export.json"
MODEL = "smollm2-135m-instruct"
PLAIN_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path); tokenizer = AutoTokenizer.from_pretrained(path)
ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=12, do_sample=False)
print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
print("tuneloop" in sys.modules)
"""


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def served_answer(model_dir: Path, tmp: Path) -> str:
    """The greedy answer of ``tuneloop serve --model model_dir`` over HTTP (the app, in process)."""
    served = build([str(model_dir)], ServeSettings(db_url=f"sqlite:///{tmp / 'serve.db'}", max_tokens_limit=16))
    try:
        with ServerThread(served.app) as thread:
            response = httpx.post(f"{thread.url}/v1/chat/completions", timeout=300, json={
                "model": model_dir.name, "messages": QUESTION, "max_tokens": 12, "temperature": 0})
    finally:
        served.close()
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def main() -> None:
    results = {"model": MODEL, "machine": f"{cpu_name()}, torch {torch.__version__}, torchao {torchao.__version__}",
               "exports": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fmt, options in (("float32 safetensors", "safetensors", {}),
                                   ("int8 (torchao, safetensors)", "quantized", {"quantize": "int8"}),
                                   ("int4 (torchao, safetensors)", "quantized", {"quantize": "int4"}),
                                   ("GGUF q8_0", "gguf", {"gguf_dtype": "q8_0"})):
            out = Path(tmp) / fmt / name.split()[0]
            start = time.perf_counter()
            export_model(MODEL, fmt, out, **options)
            weights = out / "model.safetensors"
            entry = {"bytes": size(out), "mb": round(size(out) / 1e6, 1),
                     "weights_mb": round(weights.stat().st_size / 1e6, 1) if weights.is_file() else None,
                     "export_seconds": round(time.perf_counter() - start, 1)}
            if fmt in ("quantized", "safetensors"):
                lines = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(out)], capture_output=True,
                                       text=True, check=True).stdout.strip().splitlines()
                entry.update(plain_transformers_answer=lines[0], imported_tuneloop=lines[-1] == "True")
            if options.get("quantize") == "int4":
                entry["served_answer"] = served_answer(out, Path(tmp))
            results["exports"][name] = entry
            print(name, entry, flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
