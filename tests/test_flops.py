"""The training FLOPs count behind MFU (fine-tuning's results.json and the train benchmark), checked against
a hand computation on a GLM-4 small enough to count by hand."""

from __future__ import annotations

import pytest

from autoglm_bench.methods.finetune.callbacks import training_flops

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 16, 24, 2, 2, 1, 8, 64
SEQ_LENS = [5, 3]  # real tokens of the two sequences of a batch


@pytest.fixture
def glm():
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM

    torch.manual_seed(0)
    config = Glm4Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        pad_token_id=0,
    )
    return Glm4ForCausalLM(config)


# Linear weights of one layer: q 16x(2*8), k 16x8, v 16x8, o (2*8)x16, gate_up 16x(2*24), down 24x16.
LAYER_WEIGHTS = 16 * 16 + 16 * 8 + 16 * 8 + 16 * 16 + 16 * 48 + 24 * 16  # 1920
BODY = LAYERS * LAYER_WEIGHTS  # 3840; the 64x16 embedding is a lookup and is not counted
HEAD = 64 * 16  # lm_head, 1024
TOKENS = 5 + 3
# QK^T and AV: 2 * 2 * L^2 * heads * head_dim forward per layer, x3 for training, L = 5 and 3
ATTENTION = 3 * 2 * 2 * (5**2 + 3**2) * HEADS * HEAD_DIM * LAYERS  # 13056


def test_full_fine_tuning_counts_6n_per_real_token_plus_attention(glm):
    hand = 6 * BODY * TOKENS + 6 * HEAD * TOKENS + ATTENTION
    assert hand == 246528
    assert training_flops(glm, SEQ_LENS) == hand
    # padding to the longest row adds nothing: only real lengths count
    assert training_flops(glm, [5, 5]) == 6 * (BODY + HEAD) * 10 + 3 * 2 * 2 * 50 * HEADS * HEAD_DIM * LAYERS


def test_lora_counts_4n_for_frozen_weights_and_the_head_where_it_projects(glm):
    from autoglm_bench.config import PeftConfig
    from autoglm_bench.lm.adapters import apply_peft

    model = apply_peft(glm, PeftConfig(method="lora", r=2, target_modules=["q_proj", "v_proj"]), "CAUSAL_LM")
    # LoRA, trained: q: A 16x2 + B 2x16, v: A 16x2 + B 2x8, per layer
    lora = LAYERS * (16 * 2 + 2 * 16 + 16 * 2 + 2 * 8)  # 224
    hand = (4 * BODY + 6 * lora) * TOKENS + 4 * HEAD * 2 + ATTENTION  # the head projects one position a row
    assert hand == 154880
    assert training_flops(model, SEQ_LENS, head_lens=[1, 1]) == hand
