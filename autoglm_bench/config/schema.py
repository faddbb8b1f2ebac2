"""The structured-config schema of every config group: what Hydra merges conf/config.yaml and the chosen
group options onto. Each allowed-name list is a string Enum (:class:`~autoglm_bench.errors.Choice`) typing
its field, so an unknown key, a wrong type or an unknown name fails at composition; the range and
cross-field checks live in :mod:`.checks`. Nothing here imports torch or transformers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from ..errors import choices
from ..studies import HpoPruner, HpoSampler, Pruner, Sampler

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_ROOT.parent
CONF_DIR = REPO_ROOT / "conf"
TASKS_DIR = REPO_ROOT / "tasks"

TaskType = choices("TaskType", "multiple_choice", "generation")
METRICS = {  # the metrics each task type computes (metrics.py)
    "multiple_choice": ("acc", "acc_norm", "f1"),
    # relaxed_accuracy, anywhere_accuracy: chartqa's hook; acc: a hook that judges each answer (mmmu's)
    "generation": ("exact_match", "relaxed_accuracy", "anywhere_accuracy", "acc"),
}
ModelKind = choices("ModelKind", "tiny_glm", "causal", "encoder", "openai", "tiny_glm4v", "hf_vlm", "glm4v")
VLM_KINDS = ("tiny_glm4v", "hf_vlm", "glm4v")  # vision-language models (autoglm_bench/lm/hf_vlm.py)
OpenAIApi = choices("OpenAIApi", "completions", "chat")
Dtype = choices("Dtype", "auto", "float32", "bfloat16", "float16")
DemoSelection = choices("DemoSelection", "random", "balanced", "nearest")
FewshotMode = choices("FewshotMode", "fixed", "first_n", "per_doc")
DemoOrder = choices("DemoOrder", "selected", "reversed")
Method = choices("Method", "evaluate", "finetune", "prompt_search")  # autoglm_bench.methods.REGISTRY runs each
Scorer = choices("Scorer", "batched", "naive")
Logger = choices("Logger", "none", "csv", "tensorboard", "wandb")
WandbMode = choices("WandbMode", "offline", "online", "disabled")
PeftMethod = choices("PeftMethod", "full", "lora", "prefix", "prompt_tuning", "projector")
Optimizer = choices("Optimizer", "adamw")
Scheduler = choices("Scheduler", "linear", "cosine", "constant")
Precision = choices("Precision", "32-true", "bf16-mixed", "bf16-true", "16-mixed")
Accelerator = choices("Accelerator", "auto", "cpu", "gpu", "cuda")
SecondObjective = choices("SecondObjective", "prompt_tokens")
SpaceParam = choices("SpaceParam", "instruction", "template", "verbalizer", "k_shot", "demo_selection", "demo_order")
Backend = choices("Backend", "local", "ray")
ServePolicy = choices("ServePolicy", "fifo", "priority")


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
    type: TaskType = TaskType.multiple_choice
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
    # a data: URL (autoglm_bench/data/images.py)
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
    kind: ModelKind = ModelKind.causal
    path: str | None = None  # hub id or local folder
    revision: str | None = None
    dtype: Dtype = Dtype.auto  # auto: bfloat16 on CUDA, float32 on CPU
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
    api: OpenAIApi = OpenAIApi.completions  # completions | chat (a chat-only server: generation tasks only)
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
    demo_selection: DemoSelection = (
        DemoSelection.random
    )  # random | balanced (one fixed set) | nearest (per query, MiniLM embeddings)
    demo_order: DemoOrder = DemoOrder.selected  # selected | reversed (nearest: most similar first | most similar last)
    # fixed: one demo set per run (demo_selection; contexts share a prefix, whose KV cache is reused);
    # first_n: the first k_shot rows of the train split; per_doc: k_shot rows drawn for each example in turn
    # from the train split, as lm-eval's default sampler draws them with its fewshot_random_seed
    fewshot_mode: FewshotMode = FewshotMode.fixed
    fewshot_seed: int | None = 1234  # per_doc: lm-eval's fewshot_random_seed (default 1234); null: run seed
    chat_template: bool = False


@dataclass
class MethodConfig:
    name: Method = Method.evaluate
    batch_size: int = 16  # evaluate: scoring batch; finetune: per-device training micro-batch
    scorer: Scorer = Scorer.batched
    # evaluate, prompt_search: the request cache (SQLite; autoglm_bench/lm/cache.py), shared by runs and trials
    cache: bool = True
    cache_path: str | None = None  # null: <AUTOGLM_CACHE_DIR>/eval_cache.sqlite
    # finetune only (see autoglm_bench/methods/finetune/data.py for how rows are chosen):
    train_size: int | None = None  # training rows (the first of the train part, in split_seed order); null = all
    score_dev: bool | None = None  # evaluate: also score the dev rows (the sweeper objective); null: in a multirun
    eval_batch_size: int = 64
    loss: str | None = None  # "package.module:function"(logits, labels) -> loss; null = built-in
    group_by_length: bool = True  # batches of similar length (less padding)
    packing: bool = False  # causal LMs: pack several examples into each row
    save_model: bool = True  # write the adapter (PEFT) or the full weights as safetensors


@dataclass
class PeftConfig:
    method: PeftMethod = (
        PeftMethod.full
    )  # full | lora | prefix (P-tuning v2 deep prompts) | prompt_tuning | projector (VLMs)
    r: int = 8  # lora
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # null: PEFT's default for the architecture, else q_proj/v_proj
    num_virtual_tokens: int = 16  # prefix, prompt_tuning
    prefix_projection: bool = False  # prefix: reparameterise the prefix through an MLP


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.adamw
    lr: float = 1e-4
    weight_decay: float = 0.01  # not applied to biases and norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: bool | None = None  # null: fused AdamW on CUDA
    scheduler: Scheduler = Scheduler.linear  # linear | cosine | constant, each after warmup
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # wins over warmup_ratio when > 0


@dataclass
class HpoConfig:
    """Hyperparameter search around method=finetune: an Optuna study, one training run per trial."""

    n_trials: int = 0  # finished trials wanted (0: no search, just train once); a rerun resumes up to this
    sampler: HpoSampler = HpoSampler.tpe
    pruner: HpoPruner = HpoPruner.median  # resources: validation epochs
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
    sampler: Sampler = Sampler.tpe
    n_trials: int = 30  # finished trials wanted; a rerun resumes up to this number
    storage: str | None = None  # any Optuna RDB URL; null: sqlite:///<run_dir>/study.db
    study_name: str | None = None  # null: derived from the task, model, space, sampler, pruner and seed
    pruner: Pruner = Pruner.wilcoxon
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
    accelerator: Accelerator = Accelerator.cpu
    devices: int = 1
    strategy: str = "auto"
    precision: Precision = Precision["32-true"]
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
    name: Logger = Logger.none
    project: str = "autoglm-bench"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: WandbMode = WandbMode.offline


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
    policy: ServePolicy = ServePolicy.fifo  # fifo | priority (a request's "priority": higher first, fifo among equals)
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
    backend: Backend = Backend.local  # local | ray (method=evaluate over Ray actors)
    data_dir: str | None = None
    seed: int = 0  # sampling and training: demos, initialisation, data order (never which rows are dev/test)
    split_seed: int = 0  # which rows are dev (and, without a train split, test): see autoglm_bench/data/splits.py
    dev_size: int = 200  # dev rows, drawn from the train split (or the eval split when there is none)
    limit: int | None = None
    threads: int | None = None  # torch CPU threads; null: the cores available / the jobs a launcher runs at once
    tag: str | None = None  # a free label for report tables (`report --cols tag`); the run never reads it
