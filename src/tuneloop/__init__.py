"""tuneloop: from raw data to a fine-tuned, evaluated, served and continuously improved LLM.

The package layout follows the lifecycle: ``models/`` (choose and load), ``data/`` (prepare),
``train/`` (fine-tune), ``evaluate/``, ``export/``, ``serve/``, ``monitor/``, plus ``cli/``.
Importing this package is cheap: heavy libraries (torch, transformers) load where they are used.
"""

__version__ = "0.1.0"
