"""The training recipe (SPEC "Recipe"): typed, validated once, unknown keys rejected with a hint.

Load with :func:`load_recipe` (a YAML file plus ``--set key=value`` overrides). Inner code receives a
:class:`Recipe`, never a raw dict. Errors name the file and the key path, e.g.
``recipe.yaml: train.learning_rat: unknown key; did you mean 'learning_rate'?``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneloop.errors import UserError, did_you_mean

# The training methods, named here once: the recipe schema accepts these, and
# tuneloop.train.registry maps each to its trainer (a test checks that the two agree).
ADAPTER_METHODS = ("lora", "dora", "qlora")
SFT_METHODS = ("full",) + ADAPTER_METHODS
PREFERENCE_METHODS = ("dpo", "orpo", "kto", "reward", "grpo", "ppo")
Method = Literal[SFT_METHODS + PREFERENCE_METHODS]


class Strict(BaseModel):
    # validate_default: a default such as `epochs: float = 3` is stored as 3.0, exactly as a value
    # read from YAML or JSON is, so the checkpoint's recipe hash does not depend on where it came from.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class LoraConfig(Strict):
    r: int = Field(16, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(32, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or a list of module names such as q_proj, v_proj."
    )


class EarlyStopping(Strict):
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    metric: str = Field("validation_loss", description="Metric to watch (lower is better for losses).")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class TrainConfig(Strict):
    epochs: float = Field(3, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(2.0e-4, gt=0, description="Peak learning rate.")
    # TRL / transformers' defaults (linear decay, no warmup), so a recipe moved from TRL trains alike.
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "linear", description="Decay after warmup: linear to 0 (TRL/transformers default), cosine, or constant.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps spent warming up linearly "
                                "(TRL default 0; Axolotl/LLaMA-Factory recipes often use 0.03-0.1).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices (never norms or biases).")
    optimizer: Literal["adamw", "adamw_8bit", "sgd", "adafactor"] = Field(
        "adamw", description="adamw; adamw_8bit (bitsandbytes 8-bit states, CUDA only); sgd (momentum 0.9); adafactor.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null turns it off.")
    batch_size: int = Field(8, ge=1, description=(
        "Examples per micro-batch per process; an optimizer step takes batch_size x gradient_accumulation "
        "x processes examples, as in TRL, Axolotl and LLaMA-Factory (packing or not)."))
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_seq_len: int = Field(1024, ge=8, description="Longest sample in tokens (see overlong).")
    packing: bool = Field(True, description=(
        "Padding-free batching: a micro-batch's examples are laid end to end in one row with "
        "per-sample attention, so no padding is computed; the same steps as packing: false."))
    batch_tokens: int | None = Field(None, ge=8, description=(
        "Batch by token budget instead of by examples: each micro-batch is a best-fit packed row of "
        "up to this many tokens (batch_size is then not used; steps depend on sample lengths)."))
    overlong: Literal["error", "drop", "truncate_prompt"] = Field(
        "drop", description="What to do with samples longer than max_seq_len."
    )
    train_on: Literal["assistant", "all"] = Field(
        "assistant", description="Which tokens carry loss: assistant turns only, or all."
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="bf16 autocast where the hardware has it; trainable weights stay fp32."
    )
    seed: int = Field(0, description="Seeds the data order, LoRA initialisation and dropout.")
    deterministic: bool = Field(False, description="Seed everything and use deterministic kernels.")
    eval_every: int = Field(50, ge=1, description="Steps between validation evaluations.")
    save_every: int = Field(100, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept (plus the best).")
    early_stopping: EarlyStopping | None = Field(None, description=(
        "{patience, metric, min_delta}: stop when validation stops improving; the best weights are kept."))
    neftune_alpha: float | None = Field(None, gt=0, description=(
        "NEFTune: uniform noise of scale alpha/sqrt(tokens x hidden) added to the input embeddings of "
        "each training row (never in evaluation), as TRL's neftune_noise_alpha; the paper uses 5."))
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, ~25% slower.")
    compile: bool = Field(False, description=(
        "torch.compile each decoder layer: ~8% faster steps on a 2-core CPU after ~40 s of compiling, "
        "so it pays on runs of a few hundred steps or more."))
    fused_lora: bool = Field(True, description=(
        "LoRA linears run as one fused autograd function each (base + adapter, dropout folded in), "
        "q/k/v and gate/up together (train/fused_lora.py); same results, fewer operations per step. "
        "Method lora only; off under compile, QAT and FSDP."))
    sample_prompts: list[str] = Field(
        default_factory=list, description="Prompts generated from during training into samples.jsonl."
    )


    @model_validator(mode="after")
    def _batching(self):
        if self.batch_tokens is not None:
            if not self.packing:
                raise ValueError("batch_tokens packs rows by a token budget; it needs packing: true")
            if "batch_size" in self.model_fields_set:
                raise ValueError("give batch_size (examples per micro-batch) or batch_tokens "
                                 "(tokens per micro-batch), not both")
            if self.batch_tokens < self.max_seq_len:
                raise ValueError(f"batch_tokens ({self.batch_tokens}) must be >= max_seq_len "
                                 f"({self.max_seq_len}) so that every sample fits a micro-batch")
        return self


class MixtureTask(Strict):
    name: str = Field(description="Task name, used in per-task metrics (validation_loss/<name>).")
    train: str = Field(description="The task's training JSONL.")
    validation: str | None = Field(None, description="The task's validation JSONL.")
    weight: float = Field(1.0, gt=0, description="Sampling weight (sampling: weighted).")


class DataConfig(Strict):
    train: str | None = Field(None, description="Training JSONL (from `tuneloop data prepare`).")
    validation: str | None = Field(None, description="Validation JSONL.")
    test: str | None = None
    mixture: list[MixtureTask] | None = Field(
        None, description="Multi-task training: several datasets sampled together (instead of train)."
    )
    sampling: Literal["proportional", "weighted", "temperature"] = Field(
        "proportional", description="Task shares: by size, by weight, or by size^(1/temperature)."
    )
    temperature: float = Field(2.0, gt=0, description="For sampling: temperature (higher = more even).")

    @model_validator(mode="after")
    def _needs_train(self):
        if self.mixture is not None:
            if self.train is not None:
                raise ValueError("give data.train or data.mixture, not both")
            names = [task.name for task in self.mixture]
            if len(self.mixture) < 1 or len(set(names)) != len(names):
                raise ValueError("data.mixture needs at least one task, each with a unique name")
        elif self.train is None:
            raise ValueError("data.train is required")
        return self


TrackingBackend = Literal["mlflow", "tensorboard", "wandb", "none"]


class TrackingConfig(Strict):
    backend: TrackingBackend | list[TrackingBackend] = Field(
        "mlflow", description="mlflow, tensorboard, wandb (offline unless WANDB_MODE=online), none, "
                              "or a list of them.")
    uri: str | None = Field(None, description="Tracking URI; default a local store in the run dir.")
    experiment: str | None = None


class PreferenceConfig(Strict):
    """Settings of the preference methods (dpo, orpo, kto, reward); see tuneloop.train.preference."""

    beta: float = Field(0.1, gt=0, description="DPO/KTO: strength of the pull to the reference model; "
                        "ORPO: weight of the odds-ratio term.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO loss variant.")
    max_prompt_len: int = Field(512, ge=1, description="Longer prompts keep their last tokens.")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of chosen (desirable) answers.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of rejected answers.")
    holdout: float = Field(0.1, ge=0, lt=1, description="Share of train pairs held out for metrics "
                           "when data.validation is not given.")


class GrpoConfig(Strict):
    """Online RL (GRPO): sample a group of answers per prompt, reward them, push up the better ones."""

    reward_function: str | None = Field(None, description="'module.path:function' or "
                                        "'path/to/file.py:function'; called as f(prompts, completions).")
    reward_model: str | None = Field(None, description="Run directory of a `method: reward` run.")
    num_generations: int = Field(4, ge=2, description="Answers sampled per prompt (the group).")
    max_completion_length: int = Field(64, ge=1, description="Longest sampled answer in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the group.")
    beta: float = Field(0.04, ge=0, description="Weight of the KL penalty to the reference model.")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes (optimizer steps) per batch "
                                "of sampled answers; above 1 the PPO-style ratio is clipped (TRL's name).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip range of the ratio: [1 - epsilon, "
                           "1 + epsilon_high].")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (default: epsilon; "
                                       "DAPO uses 0.28).")

    @model_validator(mode="after")
    def _one_reward_source(self):
        if self.reward_function and self.reward_model:
            raise ValueError("give reward_function or reward_model, not both")
        return self


class PpoConfig(Strict):
    """PPO with a value head: sample one answer per prompt, reward it, GAE advantages, clipped updates."""

    reward_function: str | None = Field(None, description="'module.path:function' or "
                                        "'path/to/file.py:function'; called as f(prompts, completions).")
    reward_model: str | None = Field(None, description="Run directory of a `method: reward` run.")
    max_completion_length: int = Field(64, ge=1, description="Longest sampled answer in tokens "
                                       "(TRL: response_length).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    kl_coef: float = Field(0.05, ge=0, description="Per-token KL penalty to the reference model, "
                           "subtracted from the reward.")
    num_ppo_epochs: int = Field(4, ge=1, description="Optimisation passes (optimizer steps) per batch "
                                "of sampled answers.")
    cliprange: float = Field(0.2, gt=0, lt=1, description="Clip range of the policy ratio.")
    cliprange_value: float = Field(0.2, gt=0, description="How far a value may move from its "
                                   "sampling-time estimate before its loss is clipped.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_rewards: bool = Field(False, description="Normalise the scores of each batch before GAE.")

    @model_validator(mode="after")
    def _one_reward_source(self):
        if self.reward_function and self.reward_model:
            raise ValueError("give reward_function or reward_model, not both")
        return self


class QuantizationAwareConfig(Strict):
    weights: Literal["int4", "int8"] = Field("int4", description="Integer width of deployed weights.")
    activations: Literal["int8", "none"] = Field(
        "int8", description="int8: dynamic per-token activation quantization; none: weight-only."
    )
    group_size: int = Field(32, ge=8, description="Weights per quantization scale (per-group).")


class SearchParam(Strict):
    """One searched recipe key: a range (uniform, log-uniform, int) or a list of choices."""

    distribution: Literal["uniform", "log_uniform", "int", "log_int", "categorical"] | None = Field(
        None, description="Default: categorical when choices are given, else uniform (int for int bounds).")
    low: int | float | None = Field(None, description="Lower bound (inclusive).")
    high: int | float | None = Field(None, description="Upper bound (inclusive).")
    step: float | None = Field(None, gt=0, description="Grid step for uniform / int ranges.")
    choices: list[Any] | None = Field(None, description="Values to choose from (any YAML value).")

    @model_validator(mode="after")
    def _valid_range(self):
        if self.distribution is None:
            integral = isinstance(self.low, int) and isinstance(self.high, int)
            self.distribution = "categorical" if self.choices is not None else "int" if integral else "uniform"
        if self.distribution == "categorical":
            if not self.choices:
                raise ValueError("choices is empty; list at least one value, e.g. choices: [8, 16, 32]")
            if self.low is not None or self.high is not None:
                raise ValueError("give choices or low/high, not both")
            return self
        if self.choices is not None:
            raise ValueError(f"choices goes with distribution categorical, not {self.distribution}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.distribution} range needs low and high, e.g. low: 1.0e-5, high: 1.0e-3")
        if self.low > self.high:
            raise ValueError(f"empty range: low {self.low:g} > high {self.high:g}; swap them")
        if self.distribution.startswith("log") and self.low <= 0:
            raise ValueError(f"{self.distribution} needs positive bounds (low is {self.low:g}); "
                             "use e.g. low: 1.0e-5, or distribution: uniform for a range that includes 0")
        if self.distribution.startswith("log") and self.step is not None:
            raise ValueError(f"{self.distribution} takes no step; drop step or use distribution int/uniform")
        return self


class SearchConfig(Strict):
    """``tuneloop tune``'s search space and strategy; see tuneloop.tune."""

    params: dict[str, SearchParam] = Field(description=(
        "Recipe keys by dotted path (train.learning_rate, lora.r, method, ...) and their distributions."))
    sampler: Literal["tpe", "random"] = Field("tpe", description="TPE (Bayesian) or random search.")
    pruner: Literal["median", "none"] = Field(
        "median", description="Stop a trial whose validation loss is worse than the median at that step.")
    startup_trials: int = Field(4, ge=0, description="Random trials before TPE models the space "
                                "(and trials before the pruner acts).")
    warmup_steps: int = Field(0, ge=0, description="Steps before a trial may be pruned.")
    seed: int | None = Field(0, description="Sampler seed (null: random).")

    @field_validator("params")
    @classmethod
    def _known_keys(cls, params):
        if not params:
            raise ValueError("empty; name at least one recipe key, e.g. "
                             "train.learning_rate: {distribution: log_uniform, low: 1.0e-5, high: 1.0e-3}")
        problems = [p for p in map(recipe_key_problem, params) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return params


def recipe_key_problem(path: str) -> str | None:
    """Why the dotted ``path`` names no recipe value (with a did-you-mean), or None when it does."""
    current: Any = Recipe
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return f"{path}: {'.'.join(parts[:i])} is a value, not a section"
        if part not in current.model_fields or part == "search":
            guess = did_you_mean(part, [f for f in current.model_fields if f != "search"])
            where = ".".join(parts[:i]) or "the recipe"
            return (f"{path}: {part!r} is not a key of {where}"
                    + (f"; did you mean '{'.'.join(parts[:i] + [guess])}'?" if guess else ""))
        annotation = current.model_fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return f"{path} is a section; search one of its keys, e.g. {path}.{next(iter(current.model_fields))}"
    return None


class DifferentialPrivacyConfig(Strict):
    """Central DP with client-side clipping: each client clips its update, the server adds noise."""

    clipping_norm: float = Field(1.0, gt=0, description="Largest L2 norm a client's adapter update may have.")
    noise_multiplier: float = Field(1.0, gt=0, description="Gaussian noise std as a multiple of "
                                    "clipping_norm / sampled clients (1.0 or more for strong privacy).")
    delta: float = Field(1e-5, gt=0, lt=1, description="The delta of the (epsilon, delta) budget reported.")


class FederatedConfig(Strict):
    """``tuneloop federated``: rounds of local LoRA training on clients, aggregated by a Flower server."""

    rounds: int = Field(3, ge=1, description="Federated rounds (each: sample clients, train locally, aggregate).")
    strategy: Literal["fedavg", "fedprox"] = Field(
        "fedavg", description="fedavg: average weighted by examples; fedprox: the same plus a proximal "
        "term (proximal_mu / 2) * ||w - w_global||^2 in each client's loss.")
    proximal_mu: float = Field(0.01, ge=0, description="FedProx: weight of the proximal term.")
    fraction_fit: float = Field(1.0, gt=0, le=1, description="Share of connected clients sampled each round.")
    min_fit_clients: int = Field(2, ge=1, description="Clients sampled each round at least.")
    min_available_clients: int = Field(2, ge=1, description="Clients that must be connected before a round starts.")
    min_results: int = Field(1, ge=1, description="Successful client updates a round needs to be aggregated; "
                             "with fewer (drop-outs, errors) the global adapter stays as it was.")
    local_steps: int | None = Field(None, ge=1, description="Optimizer steps per client per round "
                                    "(instead of local_epochs).")
    local_epochs: float = Field(1.0, gt=0, description="Passes over the client's data per round.")
    round_timeout: float = Field(600, gt=0, description="Seconds the server waits for replies in a round; "
                                 "clients that have not replied by then count as dropped out.")
    clients: int = Field(4, ge=1, description="Simulation: how many clients (partitions of data.train).")
    partitioning: Literal["iid", "dirichlet"] = Field(
        "iid", description="Simulation: iid (shuffled equal shares) or dirichlet (label-skewed).")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: smaller = more skewed labels.")
    label_field: str = Field("label", description="Record key holding the label for dirichlet; records "
                             "without it use their last assistant message.")
    privacy: DifferentialPrivacyConfig | None = Field(
        None, description="Differential privacy (clipping + Gaussian noise) with the budget reported.")

    @model_validator(mode="after")
    def _minimums(self):
        if self.min_available_clients < self.min_fit_clients:
            raise ValueError("min_available_clients must be >= min_fit_clients")
        if self.min_results > self.min_fit_clients:
            raise ValueError("min_results must be <= min_fit_clients (a round can't get more updates "
                             "than it samples)")
        return self


class DistributedConfig(Strict):
    """How several processes (``torchrun`` / ``accelerate launch``) share a run; ignored on one process."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: torch DistributedDataParallel (every process holds the whole model); "
        "fsdp: FSDP2 fully_shard per decoder layer and the root (weights, gradients and optimizer state "
        "sharded; checkpoints sharded with torch.distributed.checkpoint); deepspeed: DeepSpeed ZeRO "
        "(deepspeed.initialize; checkpoints with DeepSpeed's save_checkpoint; needs the deepspeed extra).")
    cpu_offload: bool = Field(False, description="fsdp: keep sharded weights, gradients and optimizer "
                              "state in CPU memory (FSDP2 CPUOffloadPolicy); GPU runs only.")
    mixed_precision: Literal["none", "bf16", "fp16"] = Field(
        "none", description="fsdp: dtype of the gathered weights in forward/backward (MixedPrecisionPolicy "
        "param_dtype); gradients are reduced in fp32 and the sharded master weights stay fp32.")
    zero_stage: Literal[1, 2, 3] | None = Field(
        None, description="deepspeed: ZeRO stage (1: optimizer state sharded, 2: and gradients, 3: and "
        "weights); null means 2.")
    offload_optimizer: bool = Field(
        False, description="deepspeed: ZeRO-Offload, optimizer state and step in CPU memory "
        "(zero_optimization.offload_optimizer.device cpu); saves GPU memory (on a CPU machine it runs and "
        "saves nothing).")
    offload_params: bool = Field(False, description="deepspeed, zero_stage 3: weights in CPU memory between "
                                 "uses (zero_optimization.offload_param.device cpu); saves GPU memory.")
    deepspeed_config: str | None = Field(
        None, description="deepspeed: a DeepSpeed JSON config used as is instead of zero_stage and the "
        "offload keys; batch sizes and gradient_clipping may be \"auto\" (filled from train:), an "
        "optimizer or scheduler section is refused (train: sets them).")

    @model_validator(mode="after")
    def _options_of_their_strategy(self):
        if self.strategy != "fsdp" and (self.cpu_offload or self.mixed_precision != "none"):
            raise ValueError("cpu_offload and mixed_precision are FSDP2 settings: set strategy: fsdp "
                             "(for deepspeed: offload_optimizer, offload_params)")
        zero_keys = self.zero_stage is not None or self.offload_optimizer or self.offload_params
        if self.strategy != "deepspeed" and (zero_keys or self.deepspeed_config):
            raise ValueError("zero_stage, offload_optimizer, offload_params and deepspeed_config are "
                             "DeepSpeed settings: set strategy: deepspeed")
        if self.deepspeed_config and zero_keys:
            raise ValueError("deepspeed_config is used as is: set the ZeRO stage and offload in that file, "
                             "not also in zero_stage/offload_optimizer/offload_params")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3 (only ZeRO-3 partitions the weights)")
        return self


class Recipe(Strict):
    name: str = Field("run", description="Run name; the run directory is runs/<name>/.")
    model: str = Field("smollm2-135m-instruct", description="Catalog name, hub id, local dir, .gguf.")
    method: Method = "lora"
    output_dir: str | None = Field(None, description="Where runs/<name>/ goes (default ./runs).")
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    finetuning: Literal["lora", "full"] = Field(
        "lora", description="For dpo/orpo/kto/reward/grpo/ppo: train a LoRA adapter (lora:) or all weights."
    )
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    ppo: PpoConfig = Field(default_factory=PpoConfig)
    quantization_aware: QuantizationAwareConfig | None = Field(
        None, description="Train for the quantized form it will be deployed in (full and lora)."
    )
    search: SearchConfig | None = Field(
        None, description="`tuneloop tune`: the keys to search and how; ignored by `tuneloop train`.")
    federated: FederatedConfig | None = Field(
        None, description="Federated fine-tuning (`tuneloop federated`): rounds, strategy, clients, privacy."
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Multi-process training (torchrun / accelerate launch): ddp or fsdp, offload, precision.")
    chat_template: str = Field("model", description=(
        "How conversations are rendered: 'model' (the model's own template), 'chatml' (ChatML with "
        "tool calls in <tool_call> tags) or the path of a Jinja template file."))

    @model_validator(mode="after")
    def _qat_methods(self):
        if self.quantization_aware is not None and self.method not in ("full", "lora"):
            raise ValueError(f"quantization_aware works with method full or lora, not {self.method}")
        if self.data.mixture and self.method not in SFT_METHODS:
            raise ValueError(f"data.mixture works with the SFT methods (full, lora, dora, qlora), not {self.method}")
        return self

    @model_validator(mode="after")
    def _federated_adapters(self):
        if self.federated is not None and self.method not in ("lora", "dora"):
            raise ValueError(f"federated trains a LoRA adapter (only adapter weights travel): method lora "
                             f"or dora, not {self.method}")
        return self

    @model_validator(mode="after")
    def _grpo_needs_reward(self):
        if self.method == "grpo" and not (self.grpo.reward_function or self.grpo.reward_model):
            raise ValueError("method grpo needs grpo.reward_function ('module:function' or "
                             "'file.py:function') or grpo.reward_model (a reward run directory)")
        if self.method == "ppo" and not (self.ppo.reward_function or self.ppo.reward_model):
            raise ValueError("method ppo needs ppo.reward_function ('module:function' or "
                             "'file.py:function') or ppo.reward_model (a reward run directory)")
        return self

    def run_dir(self) -> Path:
        return Path(self.output_dir or "runs") / self.name


def recipe_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of recipe files, from the same typed models that validate them."""
    schema = Recipe.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "tuneloop recipe", **schema}


def _model_for_path(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the key at ``path`` (to suggest its valid keys)."""
    current: Any = model
    keyed = False  # the previous part was a dict field: this part is one of its keys
    for part in path[:-1]:
        if keyed:
            keyed = False
            continue
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if getattr(annotation, "__origin__", None) is dict:  # e.g. search.params: {key: SearchParam}
            annotation, keyed = annotation.__args__[1], True
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel]) -> UserError:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_for_path(root, loc)
            guess = did_you_mean(str(loc[-1]), owner.model_fields) if owner else None
            msg = "unknown key" + (f"; did you mean '{guess}'?" if guess else "")
            if owner and not guess:
                msg += f" (valid keys: {', '.join(owner.model_fields)})"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] not in ("missing",) and "input" in e and not isinstance(e["input"], (dict, BaseModel)):
                msg += f" (got {e['input']!r})"
        lines.append(f"{source}: {key}: {msg}")
    return UserError("\n".join(lines))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.learning_rate=1e-4`` -> (['train', 'learning_rate'], 1e-4); values parse as YAML."""
    import yaml

    if "=" not in text:
        raise UserError(f"--set {text!r}: expected key=value, e.g. --set train.epochs=1")
    key, value = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise UserError(f"--set {text!r}: empty key; name a recipe key such as train.epochs")
    try:
        return keys, yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({getattr(e, 'problem', e)})",
                        hint="quote it (--set 'key=\"text\"') or fix the brackets, e.g. --set lora.target_modules=[q_proj]"
                        ) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file. Relative data paths resolve against the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text (byte {e.start}); is this a YAML recipe?", where=str(path)) from None
    if not text.strip():
        raise UserError("the recipe is empty", where=str(path),
                        hint="see recipes/ for examples; at least name, model, method and data.train")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
    if not isinstance(raw, dict):
        raise UserError("a recipe is a YAML mapping (key: value)", where=str(path))
    raw = apply_overrides(raw, list(overrides))
    return recipe_from_dict(raw, source=str(path), base_dir=path.parent)


def recipe_from_dict(raw: dict, source: str = "recipe", base_dir: Path | None = None) -> Recipe:
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise format_validation_error(e, source, Recipe) from None
    if base_dir is not None:
        _resolve_data_paths(recipe, base_dir)
    return recipe


def _resolve_data_paths(recipe: Recipe, base_dir: Path) -> None:
    template = recipe.chat_template
    if template not in ("model", "chatml") and not Path(template).expanduser().is_absolute():
        if (base_dir / template).is_file() and not Path(template).is_file():
            recipe.chat_template = str(base_dir / template)
    sections = [recipe.data, *(recipe.data.mixture or [])]
    for section in sections:
        for field in ("train", "validation", "test"):
            value = getattr(section, field, None)
            if value and not Path(value).is_absolute() and not Path(value).exists():
                candidate = base_dir / value
                if candidate.exists():
                    setattr(section, field, str(candidate))


def train_reference_markdown() -> str:
    """README's table of the ``train:`` keys (default and meaning), generated from :class:`TrainConfig`.

    A test checks that README holds exactly this text, so the stated defaults cannot drift.
    """
    return section_reference_markdown(TrainConfig)


def distributed_reference_markdown() -> str:
    """README's table of the ``distributed:`` keys, generated from :class:`DistributedConfig`."""
    return section_reference_markdown(DistributedConfig)


def section_reference_markdown(section: type[BaseModel]) -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, field in section.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        rows.append(f"| `{name}` | `{shown}` | {field.description or ''} |")
    return "\n".join(rows)
