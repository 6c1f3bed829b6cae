"""tuneloop: from raw data to a fine-tuned, evaluated, served and continuously improved LLM.

The package layout follows the lifecycle: ``models/`` (choose and load), ``data/`` (prepare),
``train/`` (fine-tune), ``evaluate/``, ``export/``, ``serve/``, ``monitor/``, plus ``cli/``.
Importing this package is cheap: heavy libraries (torch, transformers) load where they are used.
"""

__version__ = "0.1.0"


def _quiet_noisy_libraries() -> None:
    # torchao (pulled in by transformers) warns about CUDA-only kernels it cannot load on a CPU
    # machine, and torch's pytree about a deprecation inside torchao: noise to a user, on every load.
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


_quiet_noisy_libraries()
