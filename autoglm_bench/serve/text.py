"""Raw-text completions (/generate with a prompt, /v1/completions): greedy generation through the harness's
:func:`~autoglm_bench.scoring.generate`, with token counts and OpenAI's logprobs object describing the
tokens actually generated (their ids, never a re-tokenisation of the text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOGIT_CHUNK = 512  # positions projected to the vocabulary per forward pass (bounds memory with echo)


def complete(
    lm: Any,
    prompts: list[str],
    until: list[str],
    max_new_tokens: int,
    top: int | None,
    echo: bool,
    rows: int,
    abort: Callable[[], bool],
) -> tuple[list[dict[str, Any]], int]:
    """Greedy completions of raw prompts, each ``{"text", "prompt_tokens", "completion_tokens",
    "finish_reason", "logprobs"}``, and the tokens fed through the model. ``top`` given: the logprobs object
    (with ``echo``, the prompt's tokens too). ``rows``: prompts per forward pass. ``abort()`` true (the
    requests' deadline passed, the server is stopping) ends generation after the current token."""
    from ..scoring import generate

    generated, stats = generate(lm, prompts, until, max_new_tokens, rows, progress=False, abort=abort)
    results = []
    for prompt, g in zip(prompts, generated):
        out: dict[str, Any] = {
            "text": g.text,
            "prompt_tokens": len(g.context),
            "completion_tokens": len(g.tokens),
            "finish_reason": g.finish,
            "logprobs": None if top is None else token_logprobs(lm, g.context, g.tokens, top, echo, len(prompt)),
        }
        results.append(out)
    return results, stats.tokens


def token_logprobs(
    lm: Any, context: list[int], tokens: list[int], top: int, echo: bool, prompt_chars: int
) -> dict[str, Any]:
    """OpenAI's logprobs object for the generated ``tokens`` (with ``echo``, for the ``context``'s first):
    each token's text (:func:`token_pieces`), its log-probability (the first token of an echoed context has
    none), the ``top`` most likely tokens at its position, and its offset in prompt + completion."""
    import torch

    tok = lm.tokenizer
    ids = context + tokens
    first = 1 if echo else len(context)
    shown = ids if echo else tokens
    pieces = token_pieces(tok, shown)
    token_lps: list[float | None] = [None] if echo and ids else []
    tops: list[dict[str, float] | None] = [None] if echo and ids else []
    targets = list(range(max(first, 1), len(ids)))  # positions of the tokens scored
    with torch.inference_mode():
        for c in range(0, len(targets), LOGIT_CHUNK):
            chunk = targets[c : c + LOGIT_CHUNK]
            keep = torch.tensor([t - 1 for t in chunk], device=lm.device)  # logits at t - 1 predict token t
            end = chunk[-1]  # the model needs no input past the last position read
            logits = lm.model(input_ids=torch.tensor([ids[:end]], device=lm.device), logits_to_keep=keep).logits[0]
            logprobs = torch.log_softmax(logits.float(), -1)
            for row, t in zip(logprobs, chunk):
                token_lps.append(float(row[ids[t]]))
                if top > 0:
                    values, indices = row.topk(min(top, row.shape[0]))
                    tops.append({token_label(tok, int(i)): float(v) for v, i in zip(values, indices)})
                else:
                    tops.append({})
    offsets, offset = [], 0 if echo else prompt_chars
    for piece in pieces:
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": pieces, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded text of ``ids``, one string per token. A character whose
    UTF-8 bytes span several tokens comes whole with the last of them (the ones before add ""), so the pieces
    join to the decoded text; a sequence that ends mid-character ends with what the tokenizer decodes it to."""
    pieces: list[str] = []
    start = 0  # the first token whose text is not given out yet
    for i in range(len(ids)):
        lead = max(0, start - 4)  # a few tokens before, for tokenizers whose decoding depends on them
        before = tokenizer.decode(ids[lead:start], skip_special_tokens=True)
        text = tokenizer.decode(ids[lead : i + 1], skip_special_tokens=True)
        if text.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")
            continue
        pieces.append(text[len(before) :])
        start = i + 1
    return pieces


def token_label(tokenizer: Any, token: int) -> str:
    """A token's text for a top_logprobs key: its decoded text, or its vocabulary entry where that is not
    whole characters (so that distinct byte tokens keep distinct keys)."""
    piece = tokenizer.decode([token])
    return piece if "\ufffd" not in piece else tokenizer.convert_ids_to_tokens(token)
