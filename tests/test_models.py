"""Model loading: tiny_glm is deterministic from its seed; safetensors only unless opted in; local hf paths."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from autoglm_bench.config import ConfigError, ModelConfig
from autoglm_bench.lm import load
from autoglm_bench.lm.tiny_glm import build_tiny_glm

from .conftest import run_ok


def test_tiny_glm_is_deterministic_from_the_seed(tmp_path, monkeypatch):
    cfg = ModelConfig(name="tiny_glm", kind="tiny_glm", seed=3)
    monkeypatch.setenv("AUTOGLM_CACHE_DIR", str(tmp_path / "a"))
    a = build_tiny_glm(cfg)
    monkeypatch.setenv("AUTOGLM_CACHE_DIR", str(tmp_path / "b"))
    b = build_tiny_glm(cfg)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    cfg.seed = 4
    wc = load_file(build_tiny_glm(cfg) / "model.safetensors")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_tiny_glm_tokenizer_and_config(tiny_lm):
    tok, config = tiny_lm.tokenizer, tiny_lm.model.config
    assert config.model_type == "glm4"
    assert 0 <= tok.pad_token_id < config.vocab_size and tok.pad_token_id == config.pad_token_id
    assert tok.eos_token_id == config.eos_token_id != tok.pad_token_id
    text = "A quiet film, 2 hours long: größer!"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: any text round-trips
    assert tiny_lm.dtype == torch.float32 and str(tiny_lm.device) == "cpu"


def test_hf_model_from_a_local_folder(tmp_path, tiny_lm):
    folder = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm"))
    assert run_ok(tmp_path, "model=hf", f"model.path={folder}", "limit=4")["model"] == "hf"


def test_pickle_weights_refused_unless_allowed(tmp_path, tiny_lm):
    folder = tmp_path / "binmodel"
    tiny_lm.model.config.save_pretrained(folder)  # a legacy checkpoint: config + pytorch_model.bin
    torch.save(tiny_lm.model.state_dict(), folder / "pytorch_model.bin")
    tiny_lm.tokenizer.save_pretrained(folder)
    assert not list(folder.glob("*.safetensors"))
    with pytest.raises(ConfigError, match="could not load model"):
        load(ModelConfig(name="hf", kind="causal", path=str(folder)))
    loaded = load(ModelConfig(name="hf", kind="causal", path=str(folder), allow_pickle=True))
    assert loaded.model.config.model_type == "glm4"
