"""Scoring, the hot path: log-likelihood of answer choices, and greedy generation.

Two request types, as in lm-evaluation-harness: ``loglikelihood`` (a context and its candidate
continuations -> summed log-probability of each continuation) and ``generate_until``.

The batched scorer runs each batch in (at most) two forward passes:

1. the contexts, right-padded, once per example however many choices it has. Only the logits at
   each context's last position are projected to the vocabulary (``logits_to_keep``), because for
   a small model with GLM-4's 151k vocabulary the full-sequence projection is most of the cost;
2. every choice's remaining continuation tokens, right-padded, on top of its own context's KV cache
   (the cache rows are gathered per choice), so only continuation positions are projected.

When every context starts with the same tokens (a k-shot block, a long instruction), that prefix is
run once and its KV cache is copied under each batch, so pass 1 only sees the per-example suffixes.
Requests are sorted by length, longest first, so padding is small and a memory error shows early.
:func:`loglikelihood_naive` is the reference: one full forward pass per (context, continuation).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from .models import LoadedModel


@dataclass
class ScoreStats:
    """What a scoring call cost: examples, real (unpadded) tokens fed through the model, seconds."""

    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def __add__(self, other: ScoreStats) -> ScoreStats:
        return ScoreStats(self.examples + other.examples, self.tokens + other.tokens, self.seconds + other.seconds)


@dataclass
class _Encoded:
    """Token ids of one context and the continuations scored after it; ``example`` and ``choices`` say which
    request and which of its continuations they are (a request splits when its choices cut it differently)."""

    context: list[int]
    continuations: list[list[int]]
    example: int = 0
    choices: tuple[int, ...] = (0,)


REQUEST_ENCODING = 2  # bump when encode_requests changes, so token caches built with the old rules are not reused


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context becomes: BOS where the tokenizer has one, else EOS (lm-eval's
    ``HFLM.prefix_token_id``)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: Any, texts: list[str], lead: str | None = None) -> list[list[int]]:
    """Token ids of each text as lm-evaluation-harness encodes it: with the tokenizer's special tokens
    (GLM-4's ``[gMASK]<sop>``), except for a text that already starts with ``lead`` (default: the string of
    :func:`prefix_token_id`, as ``HFLM.tok_encode``; generation passes the BOS string, as
    ``HFLM.tok_batch_encode``). One tokenizer call per kind."""
    lead = tokenizer.decode(prefix_token_id(tokenizer)) if lead is None else lead
    out: list[list[int]] = [[] for _ in texts]
    for special in (True, False):
        index = [i for i, t in enumerate(texts) if bool(lead and t.startswith(lead)) != special]
        if index:
            for i, row in zip(index, tokenizer([texts[i] for i in index], add_special_tokens=special)["input_ids"]):
                out[i] = list(row)
    return out


def encode_requests(tokenizer: Any, max_length: int, requests: list[tuple[str, list[str]]]) -> list[_Encoded]:
    """Token ids of (context, continuations) requests exactly as lm-evaluation-harness 0.4 forms them
    (``LM.loglikelihood``, ``_encode_pair`` and ``HFLM._loglikelihood_tokens``):

    - trailing whitespace of the context moves to the front of each continuation;
    - a continuation's tokens are what :func:`tok_encode` of ``context + continuation`` adds after those of
      the context;
    - an empty context becomes :func:`prefix_token_id` (or, when a continuation starts with that token,
      the continuation's first token); so does a context of whitespace only (lm-eval fails on one), its
      whitespace moving to the continuations;
    - each (context, continuation) pair keeps its last ``max_length + 1`` tokens, cut from the left of the
      context, so the model sees at most ``max_length`` tokens.

    Shared by evaluation, prompt search and fine-tuning. Pairs of one request whose contexts come out
    equal (the usual case) stay one :class:`_Encoded`.
    """
    texts: list[str] = []
    for context, continuations in requests:
        if context.strip():
            stripped = context.rstrip()
            texts.append(stripped)
            texts.extend(context + c for c in continuations)
    ids = iter(tok_encode(tokenizer, texts))
    prefix = prefix_token_id(tokenizer)
    encoded = []
    for r, (context, continuations) in enumerate(requests):
        if context.strip():
            ctx = next(ids)
            pairs = [(ctx, w[len(ctx) :]) for w in (next(ids) for _ in continuations)]
        else:
            conts = tokenizer([context + c for c in continuations], add_special_tokens=False)["input_ids"]
            pairs = [([prefix], c) if not c or c[0] != prefix else (c[:1], c[1:]) for c in conts]
        groups: dict[tuple[int, ...], _Encoded] = {}
        for j, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"continuation {continuations[j]!r} of context {context[-40:]!r} encodes to no tokens")
            if len(cont) > max_length:
                raise ValueError(f"continuation {continuations[j][:40]!r}: {len(cont)} tokens > {max_length=}")
            keep = tuple(ctx[max(0, len(ctx) + len(cont) - max_length - 1) :])
            group = groups.setdefault(keep, _Encoded(list(keep), [], r, ()))
            group.continuations.append(list(cont))
            group.choices += (j,)
        encoded.extend(groups.values())
    return encoded


def loglikelihood(
    lm: LoadedModel,
    requests: list[tuple[str, list[str]]],
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[list[float]], ScoreStats]:
    """Summed log-probability of each continuation given its context, batched (see module docstring).

    >>> lls, stats = loglikelihood(lm, [("Is it good? Answer:", [" yes", " no"])])  # doctest: +SKIP
    >>> len(lls[0])
    2
    """
    import torch

    start = time.perf_counter()
    encoded = encode_requests(lm.tokenizer, lm.max_length, requests)
    order = sorted(range(len(encoded)), key=lambda i: -_longest(encoded[i]))
    results: list[list[float]] = [[0.0] * len(conts) for _, conts in requests]
    stats = ScoreStats(examples=len(requests))
    bar = _progress(len(encoded), progress)
    with torch.inference_mode():
        prefix = _encode_shared_prefix(lm, encoded, stats)
        for b in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[b : b + batch_size]]
            for enc, lls in zip(batch, _score_batch(lm, batch, prefix, stats)):
                for j, ll in zip(enc.choices, lls):
                    results[enc.example][j] = ll
            bar.update(len(batch))
    bar.close()
    stats.seconds = time.perf_counter() - start
    return results, stats


def _longest(e: _Encoded) -> int:
    return len(e.context) + max(map(len, e.continuations))


@dataclass
class _Prefix:
    """Tokens every context starts with (e.g. a k-shot block) and their KV cache, computed once."""

    length: int = 0
    cache: Any = None


MIN_SHARED_PREFIX = 16  # below this, copying the prefix cache costs more than recomputing it


def _encode_shared_prefix(lm: LoadedModel, encoded: list[_Encoded], stats: ScoreStats) -> _Prefix:
    contexts = [e.context for e in encoded]
    if len(contexts) < 2:
        return _Prefix()
    length = min(len(c) for c in contexts) - 1  # every context keeps its last token: it predicts the answer
    first = contexts[0]
    for ctx in contexts[1:]:
        length = next((i for i in range(length) if ctx[i] != first[i]), length)
    if length < MIN_SHARED_PREFIX:
        return _Prefix()
    import torch

    out = lm.model(input_ids=torch.tensor([first[:length]], device=lm.device), use_cache=True, logits_to_keep=1)
    stats.tokens += length
    return _Prefix(length=length, cache=_cache_of(out))


def _score_batch(lm: LoadedModel, batch: list[_Encoded], prefix: _Prefix, stats: ScoreStats) -> list[list[float]]:
    import torch

    device, pad, n = lm.device, lm.tokenizer.pad_token_id, len(batch)
    suffixes = [e.context[prefix.length :] for e in batch]
    ids, mask = _right_pad(suffixes, pad, device)
    ctx_lens = torch.tensor([len(e.context) for e in batch], device=device)
    kwargs: dict[str, Any] = {}
    if prefix.cache is not None:
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(n)
        mask = torch.cat([torch.ones((n, prefix.length), dtype=mask.dtype, device=device), mask], dim=1)
        kwargs = {
            "position_ids": prefix.length + torch.arange(ids.shape[1], device=device).expand(n, -1),
            _cache_kwarg(type(lm.model)): cache,
        }
    last = ctx_lens - prefix.length - 1
    keep = torch.unique(last)  # logits only at the distinct last-context positions of this batch
    out = lm.model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=keep, **kwargs)
    first = torch.log_softmax(out.logits[torch.arange(n, device=device), torch.searchsorted(keep, last)].float(), -1)
    stats.tokens += sum(map(len, suffixes))

    pairs = [(r, j) for r, e in enumerate(batch) for j in range(len(e.continuations))]
    pair_rows = torch.tensor([r for r, _ in pairs], device=device)
    first_tokens = torch.tensor([batch[r].continuations[j][0] for r, j in pairs], device=device)
    lls = dict(zip(pairs, first[pair_rows, first_tokens].tolist()))
    rest = [(r, j) for r, j in pairs if len(batch[r].continuations[j]) > 1]
    if rest:
        rows = torch.tensor([r for r, _ in rest], device=device)
        cache = _cache_of(out)
        cache.batch_select_indices(rows)  # one copy of each context's cache per choice
        inputs = [batch[r].continuations[j][:-1] for r, j in rest]
        cont_ids, cont_mask = _right_pad(inputs, pad, device)
        positions = ctx_lens[rows, None] + torch.arange(cont_ids.shape[1], device=device)
        step = lm.model(
            input_ids=cont_ids,
            attention_mask=torch.cat([mask[rows], cont_mask], dim=1),
            position_ids=positions,
            **{_cache_kwarg(type(lm.model)): cache},
        )
        logprobs = torch.log_softmax(step.logits.float(), -1)
        targets, _ = _right_pad([batch[r].continuations[j][1:] for r, j in rest], 0, device)
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * cont_mask
        for (r, j), value in zip(rest, picked.sum(-1).tolist()):
            lls[(r, j)] += value
        stats.tokens += sum(len(x) for x in inputs)
    return [[lls[(r, j)] for j in range(len(e.continuations))] for r, e in enumerate(batch)]


def loglikelihood_naive(
    lm: LoadedModel, requests: list[tuple[str, list[str]]], progress: bool = True
) -> tuple[list[list[float]], ScoreStats]:
    """The reference scorer: one unbatched forward pass over context + continuation per choice, with
    logits at every position, exactly as the textbook definition reads."""
    import torch

    start = time.perf_counter()
    stats = ScoreStats(examples=len(requests))
    results: list[list[float]] = [[0.0] * len(conts) for _, conts in requests]
    encoded = encode_requests(lm.tokenizer, lm.max_length, requests)
    bar = _progress(len(encoded), progress)
    with torch.inference_mode():
        for enc in encoded:
            for j, cont in zip(enc.choices, enc.continuations):
                tokens = torch.tensor([(enc.context + cont)[:-1]], device=lm.device)
                logprobs = torch.log_softmax(lm.model(input_ids=tokens).logits[0, -len(cont) :].float(), -1)
                results[enc.example][j] = float(
                    logprobs[torch.arange(len(cont)), torch.tensor(cont, device=lm.device)].sum()
                )
                stats.tokens += tokens.shape[1]
            bar.update(1)
    bar.close()
    stats.seconds = time.perf_counter() - start
    return results, stats


def generate_until(
    lm: LoadedModel,
    contexts: list[str],
    until: list[str],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[str], ScoreStats]:
    """Greedy continuation of each context, cut at the first stop string (which is not included)."""
    import torch

    start = time.perf_counter()
    tok = lm.tokenizer
    encoded = [ids or [prefix_token_id(tok)] for ids in tok_encode(tok, contexts, lead=tok.bos_token or "")]
    max_ctx = max(1, lm.max_length - max_new_tokens)
    encoded = [e[-max_ctx:] for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs = [""] * len(contexts)
    stats = ScoreStats(examples=len(contexts))
    bar = _progress(len(contexts), progress)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ids, mask = _left_pad([encoded[i] for i in idx], tok.pad_token_id, lm.device)
            generated = lm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                stop_strings=list(until) or None,
                tokenizer=tok,
            )[:, ids.shape[1] :]
            for i, row in zip(idx, generated.tolist()):
                text = tok.decode([t for t in row if t != tok.pad_token_id], skip_special_tokens=True)
                outputs[i] = _cut(text, until)
                stats.tokens += len(encoded[i]) + len(row)
            bar.update(len(idx))
    bar.close()
    stats.seconds = time.perf_counter() - start
    return outputs, stats


def _cut(text: str, until: list[str]) -> str:
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


def _cache_of(output: Any) -> Any:
    return output.get("cache", None) or output.get("past_key_values")


@cache
def _cache_kwarg(model_class: type) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept either."""
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _right_pad(seqs: list[list[int]], pad: int, device: Any):
    return _pad(seqs, pad, device, left=False)


def _left_pad(seqs: list[list[int]], pad: int, device: Any):
    return _pad(seqs, pad, device, left=True)


def _pad(seqs: list[list[int]], pad: int, device: Any, left: bool):
    """(ids, attention mask) tensors for token lists padded to the longest (at least 1 column)."""
    import torch

    width = max(1, max(len(s) for s in seqs))
    ids, mask = [], []
    for s in seqs:
        fill = width - len(s)
        ids.append([pad] * fill + s if left else s + [pad] * fill)
        mask.append([0] * fill + [1] * len(s) if left else [1] * len(s) + [0] * fill)
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ex", disable=None if enabled else True, dynamic_ncols=True, leave=False)
