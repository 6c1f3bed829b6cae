"""Size on disk of the embedded model's exports, and whether plain transformers loads them.

    python benchmarks/quantized_export_size.py            # writes benchmarks/results/quantized_export.json

For each of float safetensors, --quantize int8, --quantize int4 and GGUF q8_0: bytes on disk, and for
the quantized safetensors directory a load in a fresh interpreter that imports only transformers
(torchao installed), with the greedy answer to one question.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuneloop.export import export_model

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


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    results = {"model": MODEL, "machine": platform.processor() or platform.machine(), "exports": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fmt, options in (("float32 safetensors", "safetensors", {}),
                                   ("int8 (torchao, safetensors)", "quantized", {"quantize": "int8"}),
                                   ("int4 (torchao, safetensors)", "quantized", {"quantize": "int4"}),
                                   ("GGUF q8_0", "gguf", {"gguf_dtype": "q8_0"})):
            out = Path(tmp) / fmt / name.split()[0]
            start = time.perf_counter()
            export_model(MODEL, fmt, out, **options)
            entry = {"bytes": size(out), "mb": round(size(out) / 1e6, 1),
                     "export_seconds": round(time.perf_counter() - start, 1)}
            if fmt == "quantized":
                lines = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(out)], capture_output=True,
                                       text=True, check=True).stdout.strip().splitlines()
                entry.update(plain_transformers_answer=lines[0], imported_tuneloop=lines[-1] == "True")
            results["exports"][name] = entry
            print(name, entry, flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
