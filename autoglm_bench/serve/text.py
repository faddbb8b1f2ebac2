"""Raw completions (/generate with a prompt, /v1/completions, /v1/chat/completions): greedy generation through
the harness's :func:`~autoglm_bench.scoring.generate`, with token counts and OpenAI's logprobs object
describing the tokens actually generated (their ids, never a re-tokenisation of the text).

A prompt is text or, as vLLM takes them, token ids. A request for one token with logprobs (how
``model=openai`` and lm-eval's ``local-completions`` ask for log-likelihoods: ``echo``, ``logprobs``,
``max_tokens=1``) is answered from one forward pass over the batch's prompts: each prompt token's
log-probability and the greedy next token, the one generation would produce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOGIT_CHUNK = 512  # positions projected to the vocabulary per forward pass (bounds memory with echo)
LOGPROB_BUDGET = 2**22  # logits (positions x vocabulary) prompt_logprobs holds at once


def complete(
    lm: Any,
    prompts: list[Any],
    until: list[str],
    max_new_tokens: int,
    top: int | None,
    echo: bool,
    rows: int,
    abort: Callable[[], bool],
) -> tuple[list[dict[str, Any]], int]:
    """Greedy completions of raw prompts (text or token ids), each ``{"text", "prompt_tokens",
    "completion_tokens", "finish_reason", "logprobs"}``, and the tokens fed through the model. ``top`` given:
    the logprobs object (with ``echo``, the prompt's tokens too). ``rows``: prompts per forward pass.
    ``abort()`` true (the requests' deadline passed, the server is stopping) ends generation after the current
    token."""
    from ..scoring import encode_contexts

    tok = lm.tokenizer
    texts = iter(encode_contexts(tok, [p for p in prompts if isinstance(p, str)]))
    encoded = [p if isinstance(p, list) else next(texts) for p in prompts]
    chars = [len(p) if isinstance(p, str) else len(tok.decode(p)) for p in prompts]
    if max_new_tokens == 1 and top is not None:
        results, tokens = _next_token(lm, encoded, until, top, echo, rows, chars)
    else:
        results, tokens = _generated(lm, encoded, until, max_new_tokens, top, echo, rows, abort, chars)
    if echo:  # the prompt's text first, as sent (text) or decoded (token ids)
        for result, p in zip(results, prompts):
            result["text"] = (p if isinstance(p, str) else tok.decode(p)) + result["text"]
    return results, tokens


def _generated(
    lm: Any,
    encoded: list[list[int]],
    until: list[str],
    max_new_tokens: int,
    top: int | None,
    echo: bool,
    rows: int,
    abort: Callable[[], bool],
    chars: list[int],
) -> tuple[list[dict[str, Any]], int]:
    """Completions through the harness's generation, each with its logprobs object when ``top`` is given."""
    from ..scoring import generate

    generated, stats = generate(lm, encoded, until, max_new_tokens, rows, progress=False, abort=abort)
    results = []
    for n, g in zip(chars, generated):
        out: dict[str, Any] = {
            "text": g.text,
            "prompt_tokens": len(g.context),
            "completion_tokens": len(g.tokens),
            "finish_reason": g.finish,
            "logprobs": None if top is None else token_logprobs(lm, g.context, g.tokens, top, echo, n),
        }
        results.append(out)
    return results, stats.tokens


def _next_token(
    lm: Any, encoded: list[list[int]], until: list[str], top: int, echo: bool, rows: int, chars: list[int]
) -> tuple[list[dict[str, Any]], int]:
    """One greedy token per prompt, with its logprobs object, from one forward pass per batch of ``rows``."""
    from ..scoring import cut_at_stop

    tok = lm.tokenizer
    results = []
    for ids, n, (chosen, tops) in zip(encoded, chars, prompt_logprobs(lm, encoded, top, rows)):
        token, logprob = tops[-1][0]
        ids = ids + [token]
        shown = range(0 if echo else len(ids) - 1, len(ids))
        pieces = token_pieces(tok, [ids[t] for t in shown])
        offsets, offset = [], 0 if echo else n
        for piece in pieces:
            offsets.append(offset)
            offset += len(piece)
        alternatives = [t for j in shown if j for t, _ in tops[j - 1][:top]]
        labels = iter(token_labels(tok, alternatives))
        logprobs = {
            "tokens": pieces,
            "token_logprobs": [(chosen + [logprob])[j - 1] if j else None for j in shown],
            "top_logprobs": [{next(labels): lp for _, lp in tops[j - 1][:top]} if j else None for j in shown],
            "text_offset": offsets,
        }
        whole = tok.decode([token], skip_special_tokens=True)
        text = cut_at_stop(whole, until)
        finish = "stop" if token == tok.eos_token_id or text != whole else "length"
        out = {"text": text, "prompt_tokens": len(ids) - 1, "completion_tokens": 1, "finish_reason": finish}
        results.append({**out, "logprobs": logprobs})
    return results, sum(len(ids) for ids in encoded)


def prompt_logprobs(
    lm: Any, prompts: list[list[int]], top: int, rows: int = 16
) -> list[tuple[list[float], list[list[tuple[int, float]]]]]:
    """For each token-id prompt: the log-probability of each token after the ones before it (from the second
    token on), and at every position (the last one's is the next token's distribution) the ``max(top, 1)``
    most likely tokens, best first.

    The prompts run right-padded through the model, ``rows`` at a time; the vocabulary projection and its
    normalisation run on at most :data:`LOGPROB_BUDGET` logits at a time (for models whose head is a plain
    projection, one prompt's positions at a time), which is what keeps long prompts fast on a CPU."""
    import torch

    from ..scoring import PLAIN_HEAD_MODELS, pad_batch

    model = lm.model
    head = model.get_output_embeddings()
    backbone = getattr(model, model.base_model_prefix, None)
    plain = model.config.model_type in PLAIN_HEAD_MODELS and isinstance(head, torch.nn.Linear) and backbone is not None
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[Any] = [None] * len(prompts)
    with torch.inference_mode():
        while order:
            width = len(prompts[order[0]])
            batch = order[: max(1, rows if plain else min(rows, LOGPROB_BUDGET // (width * head.weight.shape[0])))]
            order = order[len(batch) :]
            ids, mask = pad_batch([prompts[i] for i in batch], lm.tokenizer.pad_token_id, lm.device, left=False)
            if plain:
                hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                logits = model(input_ids=ids, attention_mask=mask).logits
            for row, i in enumerate(batch):
                n = len(prompts[i])
                out[i] = _echo((head(hidden[row, :n]) if plain else logits[row, :n]).float(), ids[row, :n], top)
    return out


def _echo(logits: Any, ids: Any, top: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """(log-probability of ``ids[1:]``, the ``max(top, 1)`` most likely tokens at each position) from one
    prompt's ``logits``, in chunks of positions of at most :data:`LOGPROB_BUDGET` logits."""
    chosen: list[float] = []
    tops: list[list[tuple[int, float]]] = []
    step = max(1, LOGPROB_BUDGET // logits.shape[-1])
    for a in range(0, logits.shape[0], step):
        part = logits[a : a + step]
        norm = part.logsumexp(-1, keepdim=True)  # log-probabilities are logits - norm
        nxt = ids[a + 1 : a + step + 1]
        chosen += (part[: len(nxt)].gather(1, nxt[:, None]) - norm[: len(nxt)])[:, 0].tolist()
        values, indices = part.topk(max(top, 1), dim=-1)
        tops += [list(zip(i, v)) for i, v in zip(indices.tolist(), (values - norm).tolist())]
    return chosen, tops


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
                    labels = token_labels(tok, indices.tolist())
                    tops.append(dict(zip(labels, values.tolist())))
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
    join to the decoded text; a sequence that ends mid-character ends with what the tokenizer decodes it to.

    Where no character spans tokens, the windows are decoded in one call into a fast tokenizer's decoder."""
    backend = _backend(tokenizer)
    if backend is not None:
        windows = [ids[max(0, i - 4) : i] for i in range(len(ids))]
        windows += [ids[max(0, i - 4) : i + 1] for i in range(len(ids))]
        texts = backend.decode_batch(windows, skip_special_tokens=True)
        before, after = texts[: len(ids)], texts[len(ids) :]
        if not any(t.endswith("\ufffd") for t in after[:-1]):
            return [a[len(b) :] for b, a in zip(before, after)]
    pieces: list[str] = []
    start = 0  # the first token whose text is not given out yet
    for i in range(len(ids)):
        lead = max(0, start - 4)  # a few tokens before, for tokenizers whose decoding depends on them
        before_text = tokenizer.decode(ids[lead:start], skip_special_tokens=True)
        text = tokenizer.decode(ids[lead : i + 1], skip_special_tokens=True)
        if text.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")
            continue
        pieces.append(text[len(before_text) :])
        start = i + 1
    return pieces


def token_labels(tokenizer: Any, tokens: list[int]) -> list[str]:
    """Each token's text for a top_logprobs key: its decoded text, or its vocabulary entry where that is not
    whole characters (so that distinct byte tokens keep distinct keys)."""
    backend = _backend(tokenizer)
    if backend is not None:
        pieces = backend.decode_batch([[t] for t in tokens], skip_special_tokens=False)
    else:
        pieces = [tokenizer.decode([t]) for t in tokens]
    return [p if "\ufffd" not in p else tokenizer.convert_ids_to_tokens(t) for p, t in zip(pieces, tokens)]


def _backend(tokenizer: Any) -> Any:
    """A fast tokenizer's own decoder, where decoding through it equals ``tokenizer.decode`` (no clean-up of
    tokenisation spaces afterwards); else None."""
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    return getattr(tokenizer, "backend_tokenizer", None)
