"""The ``tuneloop`` command.

Commands are registered by module path and imported only when run, so ``tuneloop --help`` stays under
a second. A command appears once its module exists: add ``"name": "tuneloop.cli.module:object"`` to
COMMANDS when you add the module. User errors (:class:`tuneloop.errors.UserError`) are caught here,
once: message on stderr, exit code 1, no traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from tuneloop import __version__

# name -> "module:attribute". Order is the order shown in --help (lifecycle order).
COMMANDS = {
    "quickstart": "tuneloop.cli.quickstart:quickstart",
    "doctor": "tuneloop.cli.doctor:doctor",
    "models": "tuneloop.cli.models:models",
    "chat": "tuneloop.cli.chat:chat",
    "data": "tuneloop.cli.data:data",
    "annotate": "tuneloop.cli.annotate:annotate",
    "recipe": "tuneloop.cli.recipe:recipe",
    "train": "tuneloop.cli.train:train",
    "tune": "tuneloop.cli.tune:tune",
    "auto": "tuneloop.cli.auto:auto",
    "federated": "tuneloop.cli.federated:federated",
    "eval": "tuneloop.cli.eval:eval_command",
    "explain": "tuneloop.cli.explain:explain",
    "audit": "tuneloop.cli.audit:audit",
    "export": "tuneloop.cli.export:export",
    "serve": "tuneloop.cli.serve:serve",
    "keys": "tuneloop.cli.keys:keys",
    "monitor": "tuneloop.cli.monitor:monitor",
    "registry": "tuneloop.cli.registry:registry",
    "improve": "tuneloop.cli.improve:improve",
    "ui": "tuneloop.cli.ui:ui",
}

# One-line summaries for --help, so listing commands imports none of them.
SUMMARIES = {
    "quickstart": "The main job: bundled support data -> prepare -> LoRA -> eval -> report -> export.",
    "doctor": "Versions, device, bf16/AMX, memory, disk, embedded model, known-bad combinations.",
    "models": "Model catalog: list, recommend, estimate memory/time, import into the local store.",
    "chat": "Chat with a model through its chat template (one-shot or interactive).",
    "data": "Validate, prepare, augment data; turn served feedback into training data.",
    "annotate": "Label records in a local browser page, with suggestions and agreement statistics.",
    "recipe": "Recipe JSON Schema (editor completion); import Axolotl, LLaMA-Factory or TRL configs.",
    "train": "Fine-tune from a recipe: full, LoRA, DoRA, QLoRA, DPO/ORPO/KTO, reward, GRPO.",
    "tune": "Hyperparameter search (Optuna) over a recipe's search: section, with pruning and workers.",
    "auto": "Data in, best model out: picks model, method, formulation and hyperparameters for a budget.",
    "federated": "Federated LoRA fine-tuning on Flower: simulation, or a server and client nodes.",
    "eval": "Metrics, base-vs-tuned comparison with a gate, slices; eval.json and report.html.",
    "explain": "Which prompt tokens drove each answer (Captum), base and tuned side by side, as HTML.",
    "audit": "Bias probes (name/gender/nationality/dialect swaps) and group fairness, with a gate.",
    "export": "Merge and export a run: safetensors, GGUF or quantized.",
    "serve": "OpenAI-compatible server for a base model and its adapters, recording everything.",
    "keys": "API keys with scopes (infer, feedback, admin) for serve, stored hashed; audit log.",
    "monitor": "Latency p50/p95, error rate and satisfaction per model from the serving store.",
    "registry": "Model versions with lineage; promote, roll back and diff production/candidate aliases.",
    "improve": "One loop round: feedback -> data -> candidate -> gated eval -> register -> promote.",
    "ui": "Local web dashboard: runs (live curves), evals, serving, registry, playground, annotation.",
}


def _available(name: str) -> bool:
    module = COMMANDS[name].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, SUMMARIES.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tuneloop")
def cli():
    """tuneloop: raw data -> fine-tuned, evaluated, served and continuously improved LLM.

    Runs on a laptop CPU by default with the embedded SmolLM2-135M-Instruct model.
    """


def main(argv=None):
    from tuneloop.errors import UserError

    try:
        code = cli.main(args=argv, prog_name="tuneloop", standalone_mode=False)
        # Without standalone mode click returns (not raises) the code of ctx.exit(code).
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # usage errors: exit 2, as click does
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # last: a full or read-only disk is the user's to fix, not a traceback
        from tuneloop.paths import disk_error

        # OSError, or a library's own error type carrying the OS error (safetensors: "(os error 28)")
        explained = disk_error(e, getattr(e, "filename", None) or "an output file", "files written before are unchanged")
        if explained is None:
            raise
        click.echo(f"error: {explained}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
