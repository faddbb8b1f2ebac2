"""What the OpenAI-compatible endpoints need beyond text prompts: token-id prompts on ``/v1/completions``
(as vLLM takes them; lm-eval's ``local-completions`` and the ``openai`` backend send them, with ``echo`` and
``logprobs`` for log-likelihoods) and the message lists of ``/v1/chat/completions``.

A token-id prompt with ``echo``, ``logprobs`` and ``max_tokens=1`` (how log-likelihoods are asked for) is
answered from one forward pass over the prompts of a batch: the echoed log-probabilities of the prompt's
tokens and the greedy next token. Other token-id requests generate with the harness's generation
(:func:`autoglm_bench.scoring.generate_ids`), which is what the in-process backend runs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

MAX_PROMPTS = 256  # prompts one /v1/completions request may carry
CHAT_ROLES = ("system", "user", "assistant")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class ChatRequest(BaseModel):
    """OpenAI's /v1/chat/completions body (greedy decoding only); fields that do not change a greedy
    completion are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    n: int = 1
    stream: bool = False


def id_completions(
    lm: Any, prompts: list[list[int]], max_new_tokens: int, until: list[str], top: int | None, echo: bool
) -> tuple[list[Any], int]:
    """The completion of each token-id prompt (a dict as the text path makes it, or (HTTP status, reason)
    refusing that prompt) and the tokens run through the model."""
    from ..scoring import cut_at_stop, generate_ids, prompt_logprobs

    tok = lm.tokenizer
    vocab = lm.model.get_input_embeddings().num_embeddings
    results: list[Any] = [None] * len(prompts)
    ok = []
    for i, ids in enumerate(prompts):
        if not ids:
            results[i] = (422, "a token-id prompt is an empty list")
        elif min(ids) < 0 or max(ids) >= vocab:
            results[i] = (422, f"token ids must be in 0..{vocab - 1} (the model's vocabulary)")
        elif len(ids) + max_new_tokens > lm.max_length:
            results[i] = (413, f"prompt ({len(ids)} tokens) and max_tokens ({max_new_tokens}) exceed {lm.max_length}")
        else:
            ok.append(i)
    conts: dict[int, list[int]] = {i: [] for i in ok}
    texts: dict[int, str] = {i: "" for i in ok}
    scored: dict[int, Any] = {}
    if max_new_tokens == 1 and top is not None:  # log-likelihood requests: one forward pass gives all
        for i, (chosen, tops) in zip(ok, prompt_logprobs(lm, [prompts[i] for i in ok], top)):
            token, logprob = tops[-1][0]
            conts[i], scored[i] = [token], (chosen + [logprob], tops)
            texts[i] = cut_at_stop(tok.decode([token], skip_special_tokens=True), until)
    elif max_new_tokens > 0 and ok:
        generated, _ = generate_ids(lm, [prompts[i] for i in ok], until, max_new_tokens, len(ok), progress=False)
        for i, text in zip(ok, generated):
            texts[i], conts[i] = text, tok(text, add_special_tokens=False)["input_ids"]
    todo = [i for i in ok if i not in scored] if top is not None else []
    if todo:
        scored.update(zip(todo, prompt_logprobs(lm, [prompts[i] + conts[i] for i in todo], top)))
    tokens = 0
    for i in ok:
        ids = prompts[i] + conts[i]
        tokens += len(ids)
        full = len(conts[i]) >= max_new_tokens > 0 and conts[i][-1] != tok.eos_token_id
        results[i] = {
            "text": (tok.decode(prompts[i]) if echo else "") + texts[i],
            "prompt_tokens": len(prompts[i]),
            "completion_tokens": len(conts[i]),
            "finish_reason": "length" if full else "stop",
            "logprobs": None if top is None else _logprobs(tok, ids, *scored[i], top, 0 if echo else len(prompts[i])),
        }
    return results, tokens


def _logprobs(tok: Any, ids: list[int], chosen: list[float], tops: list[Any], top: int, start: int) -> dict:
    """OpenAI's logprobs object for ``ids[start:]``: each token, its log-probability (none for the very first
    token) and the ``top`` most likely tokens at its position, with text offsets."""
    shown = range(start, len(ids))
    pieces = _pieces(tok, [ids[j] for j in shown] + [t for j in shown if j for t, _ in tops[j - 1][:top]])
    tokens, alternatives = pieces[: len(shown)], iter(pieces[len(shown) :])
    offsets, offset = [], 0
    for piece in tokens:
        offsets.append(offset)
        offset += len(piece)
    return {
        "tokens": tokens,
        "token_logprobs": [chosen[j - 1] if j else None for j in shown],
        "top_logprobs": [{next(alternatives): lp for _, lp in tops[j - 1][:top]} if j else None for j in shown],
        "text_offset": offsets,
    }


def _pieces(tok: Any, ids: list[int]) -> list[str]:
    """The text of each token alone (one call into a fast tokenizer's Rust decoder where there is one)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return tok.batch_decode([[i] for i in ids])


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The model input for a chat: the tokenizer's chat template with the assistant's turn opened."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
