"""Structured-config schemas for every config group, and the checks Hydra cannot express.

Hydra merges conf/config.yaml and the chosen group options onto :class:`RunConfig`, so an unknown
key or a value of the wrong type already fails at composition. :func:`validate` adds the semantic
checks (allowed names, ranges, cross-field rules) and turns every failure into a one-line
:class:`ConfigError`. Nothing here imports torch or transformers: ``--cfg job`` and ``--help`` stay fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
CONF_DIR = REPO_ROOT / "conf"
TASKS_DIR = REPO_ROOT / "tasks"

TASK_TYPES = ("multiple_choice", "generation")
METRICS = {
    "multiple_choice": ("acc", "acc_norm", "f1"),
    "generation": ("exact_match", "relaxed_accuracy", "anywhere_accuracy"),  # the last two: chartqa's hook
}
MODEL_KINDS = ("tiny_glm", "causal", "encoder", "openai", "tiny_glm4v", "hf_vlm", "glm4v")
VLM_KINDS = ("tiny_glm4v", "hf_vlm", "glm4v")  # vision-language models (autoglm_bench/lm/hf_vlm.py)
OPENAI_APIS = ("completions", "chat")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEMO_SELECTIONS = ("random", "balanced", "nearest")
FEWSHOT_MODES = ("fixed", "first_n", "per_doc")
DEMO_ORDERS = ("selected", "reversed")
METHODS = ("evaluate", "finetune", "prompt_search")
SCORERS = ("batched", "naive")
LOGGERS = ("none", "csv", "tensorboard", "wandb")
WANDB_MODES = ("offline", "online", "disabled")
PEFT_METHODS = ("full", "lora", "prefix", "prompt_tuning", "projector")
OPTIMIZERS = ("adamw",)
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
SAMPLERS = ("tpe", "random", "grid", "gp", "nsga2")
PRUNERS = ("none", "median", "wilcoxon", "successive_halving", "hyperband")
SECOND_OBJECTIVES = ("prompt_tokens",)
SPACE_PARAMS = ("instruction", "template", "verbalizer", "k_shot", "demo_selection", "demo_order")
BACKENDS = ("local", "ray")
SERVE_POLICIES = ("fifo", "priority")


class ConfigError(ValueError):
    """A bad configuration value. Its message is one line naming the value and what is allowed."""


@dataclass
class SourceConfig:
    hub: str | None = None  # Hugging Face dataset id, used when no data_dir is set
    hub_config: str | None = None
    local: str | None = None  # file pattern under data_dir; "{split}" is replaced by the split name


@dataclass
class GenerationConfig:
    until: list[str] = field(default_factory=lambda: ["\n\n"])
    max_new_tokens: int = 64


@dataclass
class TaskConfig:
    name: str = MISSING
    source: SourceConfig = field(default_factory=SourceConfig)
    # role -> split name. "eval" is what gets scored; "train" (optional) supplies few-shot demos.
    splits: dict[str, str] = field(default_factory=lambda: {"eval": "validation"})
    type: str = "multiple_choice"
    # Named Jinja2 templates rendering an example's context; prompt.template picks one.
    templates: dict[str, str] = field(default_factory=dict)
    # Jinja2 expression rendering the gold answer: a choice index (multiple_choice) or the answer text.
    target: str = MISSING
    choices: list[str] | None = None  # Jinja2 templates, one per answer choice (the verbalizer)
    fewshot_target: str | None = None  # what a demo shows after its context; default: gold choice/target
    description: str | None = None  # Jinja2 text before the demos and the query (lm-eval's description)
    # fewshot_mode first_n/per_doc: leave the query row itself out of its demos, drawing k + 1 (per_doc), as
    # lm-eval does unless a task names a fewshot_split other than its test_split (gsm8k)
    fewshot_drop_query: bool = True
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    # generation, as lm-eval's regex filter: the match at index answer_select (0 first, -1 last) of
    # re.findall(answer_pattern) (a tuple: its first non-empty group), stripped, or "[invalid]" without a
    # match; no pattern: the whole generation (lm-eval's take_first)
    answer_pattern: str | None = None
    answer_select: int = 0
    # exact_match as lm-eval's: these regexes are removed from answer and target, then case/punctuation
    answer_ignore: list[str] = field(default_factory=list)
    ignore_case: bool = False
    ignore_punctuation: bool = False
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metrics: list[str] = field(default_factory=lambda: ["acc", "acc_norm"])
    instructions: list[str] = field(default_factory=list)
    id_field: str | None = None  # default: the row number within the split
    hook: str | None = None  # "package.module:Class" implementing the TaskHook interface
    options: dict[str, Any] = field(default_factory=dict)  # free-form settings for a hook
    # row fields holding images: a path under the data folder (or the hook's image_root), bytes, base64 or
    # a data: URL (autoglm_bench/images.py)
    images: list[str] = field(default_factory=list)


@dataclass
class TinyGlmConfig:
    vocab_size: int = 4096
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 2048


@dataclass
class ModelConfig:
    name: str = MISSING
    kind: str = "causal"
    path: str | None = None  # hub id or local folder
    revision: str | None = None
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    trust_remote_code: bool = False
    needs_remote_code: bool = False  # the checkpoint only loads with trust_remote_code
    allow_pickle: bool = False  # load .bin weights (weights_only=True) when no safetensors exist
    max_length: int = 2048
    seed: int = 0  # tiny_glm: initialisation seed
    # tiny_glm4v: the language model it starts from: null (random, from seed), a tiny_glm folder, or shapes_text
    # (tiny_glm first trained on toy_shapes questions written as words; autoglm_bench/lm/shapes_text.py)
    language_model: str | None = None
    tiny: TinyGlmConfig = field(default_factory=TinyGlmConfig)
    # kind=openai: an OpenAI-compatible server (vLLM, SGLang, python -m autoglm_bench.serve); lm/openai.py
    base_url: str | None = None  # the API root, e.g. http://127.0.0.1:8000/v1
    served_model: str | None = None  # the server's name for the model; null: the only one /v1/models lists
    tokenizer: str | None = None  # hub id or folder: encodes what is sent (as local-completions); null: served_model
    api: str = "completions"  # completions | chat (a chat-only server: generation tasks only)
    api_key_env: str | None = None  # the NAME of an environment variable holding the key (never recorded)
    concurrency: int = 8  # requests in flight at once
    prompts_per_request: int = 16  # prompts sent in one /v1/completions request
    timeout_s: float = 120.0  # per request; a timed-out request is retried
    max_retries: int = 5  # per request, on 429, 5xx, timeouts and dropped connections (exponential backoff)


@dataclass
class PromptConfig:
    template: str = "default"
    instruction: str | None = None
    system: str | None = None
    k_shot: int = 0
    demo_selection: str = "random"  # random | balanced (one fixed set) | nearest (per query, MiniLM embeddings)
    demo_order: str = "selected"  # selected | reversed (nearest: most similar first | most similar last)
    # fixed: one demo set per run (demo_selection; contexts share a prefix, whose KV cache is reused);
    # first_n: the first k_shot rows of the train split; per_doc: k_shot rows drawn for each example in turn
    # from the train split, as lm-eval's default sampler draws them with its fewshot_random_seed
    fewshot_mode: str = "fixed"
    fewshot_seed: int | None = 1234  # per_doc: lm-eval's fewshot_random_seed (default 1234); null: run seed
    chat_template: bool = False


@dataclass
class MethodConfig:
    name: str = "evaluate"
    batch_size: int = 16  # evaluate: scoring batch; finetune: per-device training micro-batch
    scorer: str = "batched"
    # evaluate, prompt_search: the request cache (SQLite; autoglm_bench/lm/cache.py), shared by runs and trials
    cache: bool = True
    cache_path: str | None = None  # null: <AUTOGLM_CACHE_DIR>/eval_cache.sqlite
    # finetune only (see autoglm_bench/train/data.py for how rows are chosen):
    train_size: int | None = None  # training rows (the first of the train part, in split_seed order); null = all
    score_dev: bool | None = None  # evaluate: also score the dev rows (the sweeper objective); null: in a multirun
    eval_batch_size: int = 64
    loss: str | None = None  # "package.module:function"(logits, labels) -> loss; null = built-in
    group_by_length: bool = True  # batches of similar length (less padding)
    packing: bool = False  # causal LMs: pack several examples into each row
    save_model: bool = True  # write the adapter (PEFT) or the full weights as safetensors


@dataclass
class PeftConfig:
    method: str = "full"  # full | lora | prefix (P-tuning v2 deep prompts) | prompt_tuning | projector (VLMs)
    r: int = 8  # lora
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # null: PEFT's default for the architecture, else q_proj/v_proj
    num_virtual_tokens: int = 16  # prefix, prompt_tuning
    prefix_projection: bool = False  # prefix: reparameterise the prefix through an MLP


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01  # not applied to biases and norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: bool | None = None  # null: fused AdamW on CUDA
    scheduler: str = "linear"  # linear | cosine | constant, each after warmup
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # wins over warmup_ratio when > 0


@dataclass
class HpoConfig:
    """Hyperparameter search around method=finetune: an Optuna study, one training run per trial."""

    n_trials: int = 0  # finished trials wanted (0: no search, just train once); a rerun resumes up to this
    sampler: str = "tpe"  # tpe | random | grid | gp
    pruner: str = "median"  # none | median | successive_halving | hyperband (resources: validation epochs)
    storage: str | None = None  # RDB URL; null: sqlite in the run directory
    study_name: str | None = None  # null: derived from the task, model, PEFT method and the whole config
    heartbeat_s: int = 10  # a trial silent for 2x this long (its process died) is failed and retried once
    trial_number: int | None = None  # set by hydra/sweeper=optuna: report to this trial of study_name
    # config key -> Hydra sweep syntax: "tag(log,interval(1e-5,1e-3))", "interval(0,0.1)", "choice(8,16)", "8,16"
    space: dict[str, str] = field(default_factory=dict)


@dataclass
class SearchSpaceConfig:
    """The prompt search space; every entry is one categorical dimension of the Optuna study, given as a
    YAML list or in Hydra's sweep syntax like every search space here (``k_shot='range(0,5)'``,
    ``templates='choice(default,review)'``)."""

    # "none": no instruction; "task": each of the task's instructions; "proposed": a new one written by
    # the proposer model (search.proposal); anything else is a literal instruction.
    instructions: Any = field(default_factory=lambda: ["none", "task"])
    templates: Any = None  # names in task.templates; null: all of them
    verbalizers: dict[str, list[str]] = field(default_factory=dict)  # name -> label words; {}: the task's
    k_shot: Any = field(default_factory=lambda: [0, 1, 2, 4])
    demo_selection: Any = field(default_factory=lambda: ["random", "balanced", "nearest"])
    demo_order: Any = field(default_factory=lambda: ["selected", "reversed"])


@dataclass
class ProposalConfig:
    """OPRO/APE-style instruction proposal, used when search.space.instructions lists "proposed"."""

    model: str | None = None  # a conf/model option writing the proposals; null: the model under test
    history: int = 8  # best earlier instructions (with their dev scores) shown in the meta-prompt
    max_new_tokens: int = 48


@dataclass
class SearchConfig:
    """The prompt search study. These defaults are the only ones: conf/search/<name>.yaml sets just the
    sampler and what differs from them."""

    name: str = "tpe"
    sampler: str = "tpe"  # tpe | random | grid | gp | nsga2
    n_trials: int = 30  # finished trials wanted; a rerun resumes up to this number
    storage: str | None = None  # any Optuna RDB URL; null: sqlite:///<run_dir>/study.db
    study_name: str | None = None  # null: derived from the task, model, space, sampler, pruner and seed
    pruner: str = "wilcoxon"  # none | wilcoxon | successive_halving | hyperband
    p_threshold: float = 0.1  # wilcoxon
    objectives: list[str] = field(default_factory=lambda: ["acc"])  # a task metric, optionally + prompt_tokens
    minibatch: int = 32  # first dev minibatch; each next one doubles, up to the whole dev split
    demo_pool: int = 1000  # train rows (seeded sample) that demos are drawn from
    n_startup_trials: int = 5  # tpe, gp: random trials before the model-based sampler takes over
    population_size: int = 10  # nsga2
    heartbeat_s: int = 10  # a trial silent for 2x this long (a killed run) is failed and retried on resume
    # prompts to try first, each {parameter: value} (e.g. {verbalizer: task, k_shot: 0}); unnamed ones are sampled
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    proposal: ProposalConfig = field(default_factory=ProposalConfig)


@dataclass
class TrainerConfig:
    name: str = "cpu"
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_epochs: int = 1
    max_steps: int = -1
    num_nodes: int = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False
    val_every_n_steps: int | None = None  # null: validate at the end of each epoch
    log_every_n_steps: int = 10
    early_stopping_patience: int | None = None  # validations without dev improvement; null = off
    checkpoint: bool = True  # keep the last and the best (dev metric) checkpoint in <run>/checkpoints
    checkpoint_every_n_steps: int | None = None
    resume_from: str | None = None  # a Lightning .ckpt to resume training from
    deterministic: bool = False
    progress_bar: bool = False
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # each {_target_: ..., args}, instantiated


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "autoglm-bench"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "offline"


@dataclass
class RayConfig:
    """backend=ray: method=evaluate shards the requests over Ray actors (autoglm_bench/lm/ray.py)."""

    workers: int = 2  # actors, each loading the model once
    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); null: a local runtime
    num_cpus: float = 1.0  # per actor (also its torch threads, rounded up)
    num_gpus: float = 0.0  # per actor: 1 gives each actor a GPU of its own
    max_retries: int = 3  # actor failures a run survives (a dead actor's unfinished shard is re-run on the others)


@dataclass
class ServeConfig:
    """python -m autoglm_bench.serve: the inference service (autoglm_bench/serve). Every request is checked
    against the limits below before any work starts; README "Inference service" has the table."""

    host: str = "127.0.0.1"  # a non-loopback address needs api_key_env
    port: int = 8080  # 0: any free port (the server prints the one it got)
    models: list[str] = field(default_factory=list)  # more models: conf/model options or finetune run dirs
    tasks: list[str] = field(default_factory=list)  # more task options served besides task= (loaded at start)
    batch_size: int = 16  # requests per forward pass at most; 1 turns batching off
    max_wait_ms: float = 5.0  # how long the oldest queued request waits for a batch to fill
    policy: str = "fifo"  # fifo | priority (a request's "priority": higher first, fifo among equals)
    idle_release_s: float = 600.0  # a model unused this long is released
    memory_budget_mb: float | None = None  # loading past this releases idle models first, least recently used
    max_input_chars: int = 16000  # characters of a prompt or of an input row's text, as sent (413)
    max_new_tokens: int = 512  # the most a request may ask for
    max_stop: int = 16  # stop strings per request at most
    max_stop_chars: int = 256  # characters per stop string at most
    max_logprobs: int = 20  # /v1/completions logprobs at most
    max_prompts: int = 32  # prompts in one /v1/completions request at most
    max_request_tokens: int = 16384  # a raw-prompt request's prompt tokens plus tokens asked for, all prompts
    max_batch_tokens: int = 8192  # tokens per forward pass (rows x longest row, estimated): bounds its memory
    max_body_bytes: int = 1048576  # request body bytes at most, enforced while the body is read (413)
    max_image_pixels: int = 16_000_000  # pixels (width x height) of one image in a request, from its header (413)
    max_images: int = 8  # images in one request at most (413)
    max_queue: int = 256  # queued requests at most; more get 503 with Retry-After
    max_queue_wait_s: float = 30.0  # priority ageing: a request waiting this long goes before any newer one
    request_timeout_s: float = 120.0  # a request not answered by then gets 504
    shutdown_timeout_s: float = 30.0  # on SIGTERM/SIGINT: in-flight requests get this long, then 503
    allowed_hosts: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])  # Host header; "*": any
    api_key_env: str | None = None  # the environment variable holding the bearer token; null: no auth


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    hpo: HpoConfig = field(default_factory=HpoConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    backend: str = "local"  # local | ray (method=evaluate over Ray actors)
    data_dir: str | None = None
    seed: int = 0  # sampling and training: demos, initialisation, data order (never which rows are dev/test)
    split_seed: int = 0  # which rows are dev (and, without a train split, test): see autoglm_bench/splits.py
    dev_size: int = 200  # dev rows, drawn from the train split (or the eval split when there is none)
    limit: int | None = None
    threads: int | None = None  # torch CPU threads; null: the cores available / the jobs a launcher runs at once
    tag: str | None = None  # a free label for report tables (`report --cols tag`); the run never reads it


def register_schemas() -> None:
    """Register :class:`RunConfig` as ``base_config`` so conf/config.yaml can extend it, and the
    ``${config_groups:}`` resolver that ``--help`` lists the groups with."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=RunConfig)
    OmegaConf.register_new_resolver("config_groups", config_groups_help, replace=True)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose and validate a run config from command-line style overrides, without running it.

    >>> run = compose(["task=sst2", "prompt.k_shot=2"])
    >>> run.task.name, run.prompt.k_shot
    ('sst2', 2)
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    check_task_choice(cfg.hydra.runtime.choices.get("task"), cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg)


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/ (task options live in tasks/). Files
    starting with "_" are base files that options extend (tasks/_bbh.yaml), not options."""
    folder = TASKS_DIR if group == "task" else CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def config_groups_help() -> str:
    """``--help``'s list of groups and options (Hydra's own list would show base files as options)."""
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    return "\n".join(f"{group}: {', '.join(group_options(group))}" for group in groups)


def unknown_option_message(group: str, name: str) -> str:
    """The one line for an option a config group does not have."""
    return f"unknown {group} {name!r}; available: {', '.join(group_options(group))}"


def check_task_choice(choice: str | None, cfg: DictConfig) -> None:
    """``task=<choice>`` must pick a task file, not a base file, and the task's ``name`` must be its file
    name (results, run directories and reports name a run by it)."""
    if choice is None:
        return
    stem = choice.rpartition("/")[2]
    if stem.startswith("_"):
        raise ConfigError(unknown_option_message("task", choice))
    name = OmegaConf.select(cfg, "task.name", throw_on_missing=False)  # None when the file sets none
    if name is None:
        raise ConfigError(f"task file {stem}.yaml sets no task name; add 'name: {stem}'")
    if name != stem:
        raise ConfigError(
            f"task file {stem}.yaml names its task {name!r}; a task's name must be its file name: "
            f"set 'name: {stem}' or rename the file to {name}.yaml"
        )


def unknown_key_message(full_key: str, allowed: list[str]) -> str:
    """The one line for a config key the schema does not define, with the closest allowed key if any."""
    allowed = [k for k in allowed if k != "hydra"]
    close = difflib.get_close_matches(full_key.rpartition(".")[2], allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {full_key!r}{hint}; allowed here: {', '.join(allowed)}"


def check_known_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Refuse a key the schema does not define. Hydra's ``+key=value`` (and ``++``) adds keys even to a
    structured config, so a typo like ``+limt=5`` would otherwise be ignored; a typo in an experiment or
    task file already fails at composition. Mappings the schema leaves free (``task.options``,
    ``search.space.verbalizers``, ``hpo.space``) take any key."""
    schema = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(schema):
        allowed = [f.name for f in dataclasses.fields(schema)]
        for key in cfg.keys():
            if key not in allowed and not (key == "hydra" and not prefix):
                raise ConfigError(unknown_key_message(f"{prefix}{key}", allowed))
    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_known_keys(child, f"{prefix}{key}.")


def _one_of(what: str, value: Any, allowed: tuple[str, ...] | list[str], where: str = "") -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}{where}; allowed: {', '.join(allowed)}")


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """``data_dir=`` wins, then $AUTOGLM_DATA_DIR; None means "use the hub"."""
    raw = data_dir if data_dir not in (None, "") else os.environ.get("AUTOGLM_DATA_DIR") or None
    return Path(raw).expanduser().resolve() if raw else None


def validate(cfg: DictConfig | RunConfig) -> RunConfig:
    """Check a composed config and return it as a typed :class:`RunConfig`.

    Raises :class:`ConfigError` with a one-line message for the first problem found.

    >>> from omegaconf import OmegaConf
    >>> validate(OmegaConf.structured(RunConfig(limit=-1)))  # doctest: +SKIP
    ConfigError: limit must be a positive number of examples (or null for all), got -1
    """
    if isinstance(cfg, DictConfig):
        check_known_keys(cfg)
        try:
            run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        except Exception as exc:  # an unresolved interpolation or missing mandatory value
            raise ConfigError(one_line(exc)) from exc
    else:
        run = cfg
    t, m, p = run.task, run.model, run.prompt

    if run.limit is not None and run.limit < 1:
        raise ConfigError(f"limit must be a positive number of examples (or null for all), got {run.limit}")
    if run.dev_size < 0:
        raise ConfigError(f"dev_size must be >= 0, got {run.dev_size}")
    if run.threads is not None and run.threads < 1:
        raise ConfigError(f"threads must be >= 1 (or null for automatic), got {run.threads}")
    if run.method.batch_size < 1:
        raise ConfigError(f"method.batch_size must be >= 1, got {run.method.batch_size}")
    _one_of("method", run.method.name, METHODS)
    _one_of("method.scorer", run.method.scorer, SCORERS)

    _one_of("task.type", t.type, TASK_TYPES, f" in task {t.name!r}")
    for metric in t.metrics:
        _one_of("metric", metric, METRICS[t.type], f" for {t.type} task {t.name!r}")
    if not t.templates:
        raise ConfigError(f"task {t.name!r} defines no templates; add task.templates.default")
    _one_of("prompt.template", p.template, list(t.templates), f" for task {t.name!r}")
    if "eval" not in t.splits:
        raise ConfigError(f"task {t.name!r} has no 'eval' entry in splits; it has: {', '.join(t.splits)}")
    if t.type == "multiple_choice" and not t.choices:
        raise ConfigError(f"multiple_choice task {t.name!r} needs a non-empty choices list")
    if t.answer_pattern is not None:
        try:
            re.compile(t.answer_pattern)
        except re.error as exc:
            raise ConfigError(f"task.answer_pattern {t.answer_pattern!r} is not a valid regex: {exc}") from exc
    if t.hook is None and t.source.local is None and t.source.hub is None:
        raise ConfigError(f"task {t.name!r} names no source (source.local, source.hub or a hook)")

    if p.k_shot < 0:
        raise ConfigError(f"prompt.k_shot must be >= 0, got {p.k_shot}")
    if p.k_shot > 0 and "train" not in t.splits:
        raise ConfigError(
            f"prompt.k_shot={p.k_shot} needs a train split for demos, but task {t.name!r} has only: "
            f"{', '.join(t.splits)}"
        )
    _one_of("prompt.demo_selection", p.demo_selection, DEMO_SELECTIONS)
    _one_of("prompt.fewshot_mode", p.fewshot_mode, FEWSHOT_MODES)
    if p.fewshot_mode != "fixed" and p.demo_selection != "random":
        raise ConfigError(
            f"prompt.demo_selection={p.demo_selection} picks the demos of prompt.fewshot_mode=fixed; "
            f"fewshot_mode={p.fewshot_mode} picks its own (set demo_selection=random or fewshot_mode=fixed)"
        )
    _one_of("prompt.demo_order", p.demo_order, DEMO_ORDERS)

    _one_of("model.kind", m.kind, MODEL_KINDS)
    _one_of("model.dtype", m.dtype, DTYPES)
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", m.device):
        raise ConfigError(f"unknown model.device {m.device!r}; allowed: auto, cpu, mps, cuda, cuda:N")
    if m.kind == "openai":
        validate_openai(run)
    elif m.kind not in ("tiny_glm", "tiny_glm4v", "encoder") and not m.path:
        raise ConfigError(f"model {m.name!r} needs model.path=<hub id or local folder>")
    if m.kind != "tiny_glm" and m.path and m.path.startswith(("/", "~", ".")):  # absolute, ~, ./, ../
        folder = Path(m.path).expanduser()
        if not folder.is_dir():  # else loading would take it for a malformed hub id
            what = "is not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"model.path {m.path!r} is a local path and {what} ({folder.resolve()})")
    if m.needs_remote_code and not m.trust_remote_code:
        raise ConfigError(
            f"model {m.name!r} ({m.path}) runs code from its repository; it stays off unless you pass "
            "model.trust_remote_code=true"
        )
    if m.kind == "encoder" and run.method.name in ("evaluate", "prompt_search"):
        raise ConfigError(
            f"model {m.name!r} is an encoder without a language-model head; method=evaluate needs a causal LM "
            "(tiny_glm, glm4_9b, hf)"
        )
    if m.max_length < 2:
        raise ConfigError(f"model.max_length must be >= 2, got {m.max_length}")
    if t.images and m.kind not in VLM_KINDS:
        raise ConfigError(
            f"task {t.name!r} has images ({', '.join(t.images)}); model {m.name!r} (kind {m.kind}) reads text only: "
            f"use a vision-language model ({', '.join(VLM_KINDS)})"
        )
    if t.images and run.backend == "ray":
        raise ConfigError(f"task {t.name!r} has images; backend=ray shards text models only, use backend=local")

    _one_of("logger", run.logger.name, LOGGERS)
    _one_of("logger.mode", run.logger.mode, WANDB_MODES)
    _one_of("backend", run.backend, BACKENDS)
    if run.backend == "ray":
        if run.method.name != "evaluate":
            raise ConfigError(f"backend=ray distributes method=evaluate only, got method={run.method.name}")
        if run.ray.workers < 1 or run.ray.num_cpus <= 0 or run.ray.num_gpus < 0 or run.ray.max_retries < 0:
            raise ConfigError(
                f"ray needs workers >= 1, num_cpus > 0, num_gpus >= 0, max_retries >= 0; got {run.ray.workers}, "
                f"{run.ray.num_cpus}, {run.ray.num_gpus}, {run.ray.max_retries}"
            )
        if m.kind == "openai":
            raise ConfigError("backend=ray shards a model loaded in this process; model=openai is served elsewhere")
    if run.method.name == "finetune":
        validate_finetune(run)
    if run.method.name == "prompt_search":
        validate_prompt_search(run)
    return run


def validate_openai(run: RunConfig) -> None:
    """The checks of a model served over an OpenAI-compatible API (model=openai)."""
    m = run.model
    if not m.base_url or not re.match(r"https?://[^/\s]+", m.base_url):
        raise ConfigError(f"model=openai needs model.base_url=http(s)://HOST:PORT/v1, got {m.base_url!r}")
    _one_of("model.api", m.api, OPENAI_APIS)
    if m.concurrency < 1 or m.prompts_per_request < 1 or m.timeout_s <= 0 or m.max_retries < 0:
        raise ConfigError(
            f"model=openai needs concurrency >= 1, prompts_per_request >= 1, timeout_s > 0, max_retries >= 0; got "
            f"{m.concurrency}, {m.prompts_per_request}, {m.timeout_s}, {m.max_retries}"
        )
    if m.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", m.api_key_env):
        raise ConfigError(f"model.api_key_env names an environment variable (OPENAI_API_KEY), got {m.api_key_env!r}")
    if run.method.name == "finetune":
        raise ConfigError("method=finetune trains weights in this process; model=openai only reaches a server")
    if m.api == "chat" and run.task.type == "multiple_choice":
        raise ConfigError(
            f"task {run.task.name!r} is multiple choice, scored by log-likelihoods, which a chat-only server "
            "(model.api=chat) does not return; use model.api=completions (echo and logprobs) or a generation task"
        )


def validate_serve(run: RunConfig) -> None:
    """The checks of the serve.* settings (python -m autoglm_bench.serve)."""
    sv = run.serve
    if run.model.kind == "openai" or "openai" in sv.models:
        raise ConfigError("serve runs models in its own process; model=openai is a model served elsewhere")
    _one_of("serve.policy", sv.policy, SERVE_POLICIES)
    if not 0 <= sv.port < 65536:
        raise ConfigError(f"serve.port must be in 0..65535 (0: any free port), got {sv.port}")
    if sv.batch_size < 1 or sv.max_wait_ms < 0 or sv.idle_release_s <= 0:
        raise ConfigError(
            f"serve needs batch_size >= 1, max_wait_ms >= 0, idle_release_s > 0; got {sv.batch_size}, "
            f"{sv.max_wait_ms}, {sv.idle_release_s}"
        )
    if sv.memory_budget_mb is not None and sv.memory_budget_mb <= 0:
        raise ConfigError(f"serve.memory_budget_mb must be > 0 (or null: no budget), got {sv.memory_budget_mb}")
    at_least_one = (
        "max_input_chars",
        "max_new_tokens",
        "max_stop_chars",
        "max_prompts",
        "max_request_tokens",
        "max_batch_tokens",
        "max_body_bytes",
        "max_image_pixels",
        "max_images",
        "max_queue",
    )
    for key in at_least_one:
        if getattr(sv, key) < 1:
            raise ConfigError(f"serve.{key} must be >= 1, got {getattr(sv, key)}")
    for key in ("max_stop", "max_logprobs"):
        if getattr(sv, key) < 0:
            raise ConfigError(f"serve.{key} must be >= 0, got {getattr(sv, key)}")
    for key in ("max_queue_wait_s", "request_timeout_s", "shutdown_timeout_s"):
        if not getattr(sv, key) > 0:
            raise ConfigError(f"serve.{key} must be > 0 seconds, got {getattr(sv, key)}")
    if not sv.allowed_hosts:
        raise ConfigError('serve.allowed_hosts is empty: no request could reach the server (["*"] allows any)')
    if sv.api_key_env is not None and not os.environ.get(sv.api_key_env):
        raise ConfigError(f"serve.api_key_env={sv.api_key_env!r} but that environment variable is not set or empty")
    if sv.api_key_env is None and not is_loopback(sv.host):
        raise ConfigError(
            f"serve.host={sv.host!r} is not a loopback address: set serve.api_key_env to the name of an environment "
            "variable holding a bearer token (clients send Authorization: Bearer <token>)"
        )
    for name in sv.models:
        if not Path(name).expanduser().is_dir():
            _one_of("model in serve.models", name, group_options("model"), " (or a finetune run directory)")
    for name in sv.tasks:
        _one_of("task in serve.tasks", name, group_options("task"))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only listens on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_finetune(run: RunConfig) -> None:
    """The finetune-only checks that need no model (LoRA targets and hardware are checked at load time)."""
    pe, op, tr, me = run.peft, run.optim, run.trainer, run.method
    _one_of("peft method", pe.method, PEFT_METHODS)
    if pe.method == "projector" and run.model.kind not in VLM_KINDS:
        raise ConfigError(
            f"peft=projector trains a vision-language model's projector; model {run.model.name!r} is kind "
            f"{run.model.kind} (use {', '.join(VLM_KINDS)})"
        )
    if run.model.kind in VLM_KINDS and pe.method in ("prefix", "prompt_tuning"):
        raise ConfigError(f"peft={pe.method} is not built for vision-language models; use full, lora or projector")
    if pe.method == "lora" and (pe.r < 1 or pe.alpha <= 0):
        raise ConfigError(f"peft.r and peft.alpha must be positive, got r={pe.r} alpha={pe.alpha}")
    if pe.method in ("prefix", "prompt_tuning") and pe.num_virtual_tokens < 1:
        raise ConfigError(f"peft.num_virtual_tokens must be >= 1, got {pe.num_virtual_tokens}")
    if not 0.0 <= pe.dropout < 1.0:
        raise ConfigError(f"peft.dropout must be in [0, 1), got {pe.dropout}")
    _one_of("optim", op.name, OPTIMIZERS)
    _one_of("optim.scheduler", op.scheduler, SCHEDULERS)
    if op.lr <= 0 or op.weight_decay < 0 or not 0.0 <= op.warmup_ratio < 1.0 or op.warmup_steps < 0:
        raise ConfigError(
            f"optim needs lr > 0, weight_decay >= 0, 0 <= warmup_ratio < 1, warmup_steps >= 0; got lr={op.lr} "
            f"weight_decay={op.weight_decay} warmup_ratio={op.warmup_ratio} warmup_steps={op.warmup_steps}"
        )
    _one_of("trainer.precision", tr.precision, PRECISIONS)
    _one_of("trainer.accelerator", tr.accelerator, ACCELERATORS)
    for key in ("devices", "num_nodes", "accumulate_grad_batches", "log_every_n_steps"):
        if getattr(tr, key) < 1:
            raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(tr, key)}")
    if tr.max_epochs < 1 and tr.max_steps < 1:
        raise ConfigError(
            f"set trainer.max_epochs >= 1 or trainer.max_steps >= 1 (got {tr.max_epochs}, {tr.max_steps})"
        )
    if me.eval_batch_size < 1 or (me.train_size is not None and me.train_size < 1):
        raise ConfigError(
            f"method needs eval_batch_size >= 1 and train_size >= 1 or null; got {me.eval_batch_size}, {me.train_size}"
        )
    if me.loss is not None and ":" not in me.loss:
        raise ConfigError(f"method.loss {me.loss!r} must name a function as 'package.module:function'")
    if me.packing and run.model.kind == "encoder":
        raise ConfigError("method.packing=true needs a causal LM; encoder models train a classification head")
    if run.model.kind == "encoder" and run.task.type != "multiple_choice":
        raise ConfigError(f"model {run.model.name!r} is an encoder; it fine-tunes on multiple_choice tasks only")
    if run.hpo.n_trials < 0:
        raise ConfigError(f"hpo.n_trials must be >= 0, got {run.hpo.n_trials}")
    _one_of("hpo.sampler", run.hpo.sampler, ("tpe", "random", "grid", "gp"))
    _one_of("hpo.pruner", run.hpo.pruner, ("none", "median", "successive_halving", "hyperband"))
    if run.hpo.heartbeat_s < 1:
        raise ConfigError(f"hpo.heartbeat_s must be >= 1, got {run.hpo.heartbeat_s}")


def validate_prompt_search(run: RunConfig) -> None:
    """The prompt_search checks that need neither data nor model (storage reachability is checked on open)."""
    s, sp, t = run.search, run.search.space, run.task
    if t.type != "multiple_choice":
        raise ConfigError(f"method=prompt_search needs a multiple_choice task; {t.name!r} is {t.type}")
    if run.prompt.fewshot_mode != "fixed":
        raise ConfigError(
            f"method=prompt_search searches demo_selection, which needs prompt.fewshot_mode=fixed; "
            f"got {run.prompt.fewshot_mode}"
        )
    _one_of("search.sampler", s.sampler, SAMPLERS)
    _one_of("search.pruner", s.pruner, PRUNERS)
    categorical_space(sp)
    if s.n_trials <= 0:
        raise ConfigError(f"search.n_trials must be a positive number of trials, got {s.n_trials}")
    for key in ("instructions", "templates", "k_shot", "demo_selection", "demo_order"):
        value = getattr(sp, key)
        if value is not None and len(value) == 0:
            raise ConfigError(f"search.space.{key} is an empty list; give at least one choice (or null: default)")
    for name in sp.templates or []:
        _one_of("template", name, list(t.templates), f" in search.space.templates for task {t.name!r}")
    n_choices = len(t.choices or [])
    for name, words in sp.verbalizers.items():
        if t.type != "multiple_choice" or len(words) != n_choices:
            raise ConfigError(
                f"search.space.verbalizers.{name} has {len(words)} label words; task {t.name!r} needs {n_choices}"
            )
    if "task" in sp.instructions and not t.instructions:
        raise ConfigError(f"search.space.instructions lists 'task' but task {t.name!r} has no instructions")
    for k in sp.k_shot:
        if k < 0:
            raise ConfigError(f"search.space.k_shot values must be >= 0, got {k}")
    if max(sp.k_shot) > 0 and "train" not in t.splits:
        raise ConfigError(f"search.space.k_shot={list(sp.k_shot)} needs a train split; task {t.name!r} has none")
    for value in sp.demo_selection:
        _one_of("demo selection", value, DEMO_SELECTIONS, " in search.space.demo_selection")
    for value in sp.demo_order:
        _one_of("demo order", value, DEMO_ORDERS, " in search.space.demo_order")
    if (
        not s.objectives
        or s.objectives[0] not in ("acc", "acc_norm")
        or len(s.objectives) > 2
        or any(o not in SECOND_OBJECTIVES for o in s.objectives[1:])
    ):
        raise ConfigError(
            f"search.objectives {list(s.objectives)} must be acc or acc_norm, optionally followed by "
            f"{', '.join(SECOND_OBJECTIVES)}"
        )
    if len(s.objectives) == 2 and s.pruner != "none":
        raise ConfigError(f"search.pruner={s.pruner} needs a single objective; use search.pruner=none with two")
    if s.pruner == "wilcoxon" and not 0.0 < s.p_threshold < 1.0:
        raise ConfigError(f"search.p_threshold must be in (0, 1), got {s.p_threshold}")
    if s.minibatch < 1 or s.demo_pool < 1 or s.heartbeat_s < 1 or s.population_size < 2 or s.n_startup_trials < 0:
        raise ConfigError(
            "search needs minibatch >= 1, demo_pool >= 1, heartbeat_s >= 1, population_size >= 2, "
            f"n_startup_trials >= 0; got {s.minibatch}, {s.demo_pool}, {s.heartbeat_s}, {s.population_size}, "
            f"{s.n_startup_trials}"
        )
    if run.dev_size < 1:
        raise ConfigError(f"method=prompt_search selects on the dev rows; dev_size must be >= 1, got {run.dev_size}")
    for params in s.enqueue:
        for key in params:
            _one_of("parameter", key, SPACE_PARAMS, " in search.enqueue")
    if s.proposal.history < 1 or s.proposal.max_new_tokens < 1:
        raise ConfigError("search.proposal.history and search.proposal.max_new_tokens must be >= 1")
    if s.proposal.model is not None:
        _one_of("search.proposal.model", s.proposal.model, group_options("model"))


def objective_of(run: Any) -> tuple[str, str]:
    """The dev quantity a run returns as its objective (what a sweeper optimises) and its natural direction:
    fine-tuning on a generation task minimises the dev loss; everything else maximises the dev value of the
    first task metric (prompt search: of its first objective). ``run`` is a RunConfig or a DictConfig.

    >>> objective_of(RunConfig(task=TaskConfig(name="t", target="x", metrics=["acc"])))
    ('acc', 'maximize')
    """
    if run.method.name == "finetune" and run.task.type == "generation":
        return "loss", "minimize"
    if run.method.name == "prompt_search":
        return run.search.objectives[0], "maximize"
    return run.task.metrics[0], "maximize"


def categorical_space(space: SearchSpaceConfig) -> None:
    """Turn every sweep-syntax string of ``space`` into its list of choices, in place (one syntax for every
    search space: :func:`autoglm_bench.studies.parse_space`)."""
    from .studies import distribution

    for key in ("instructions", "templates", "k_shot", "demo_selection", "demo_order"):
        value = getattr(space, key)
        if isinstance(value, str):
            dist = distribution(f"search.space.{key}", value)
            if not hasattr(dist, "choices"):
                raise ConfigError(
                    f"search.space.{key}={value!r}: prompt dimensions are categorical; use choice(...) or range(...)"
                )
            value = list(dist.choices)
        if value is not None and not isinstance(value, (list, tuple)):
            raise ConfigError(f"search.space.{key} must be a list or a choice(...)/range(...), got {value!r}")
        if key == "k_shot" and value is not None:
            if not all(isinstance(k, int) for k in value):
                raise ConfigError(f"search.space.k_shot values must be integers, got {list(value)}")
        setattr(space, key, None if value is None else list(value))


def one_line(exc: BaseException) -> str:
    """Collapse an exception message (Hydra/OmegaConf ones span lines) into one informative line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    return " ".join(keep or lines or [type(exc).__name__])
