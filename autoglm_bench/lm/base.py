"""The one interface between the harness and a model: lm-evaluation-harness's two request types.

``loglikelihood`` takes (context, continuations) requests and answers the summed log-probability of each
continuation after its context; ``generate_until`` takes contexts and answers each one's greedy
continuation, cut at the first stop string. Every backend (:mod:`.hf` in this process, :mod:`.openai` on a
server) implements both, and the wrappers (:mod:`.cache`, :mod:`.ray`) are LMs around another LM, so
evaluation, prompt search, fine-tuning's evaluation and the service never ask which one they hold.
"""

from __future__ import annotations

from typing import Any

from ..scoring import ScoreStats

Requests = list[tuple[str, list[str]]]  # (context, continuations) log-likelihood requests
CHUNK_BATCHES = 4  # requests the request cache stores per commit: this many scoring batches


class LM:
    """A model answering scoring requests.

    ``name`` is the model's config name, ``fingerprint`` identifies its outputs (the request cache keys by
    it), ``tokenizer`` is what prompt rendering needs (its chat template, token counts; None for a chat-only
    server without a local tokenizer). ``chat_only``: a server that only offers chat completions, so
    :meth:`generate_until` takes message lists instead of context strings and there are no log-likelihoods.
    """

    backend = ""
    chat_only = False
    name: str
    fingerprint: str
    tokenizer: Any
    device: Any

    def loglikelihood(
        self, requests: Requests, batch_size: int = 16, scorer: str = "batched", progress: bool = True
    ) -> tuple[list[list[float]], ScoreStats]:
        """Summed log-probability of each continuation after its context, and what scoring them cost."""
        raise NotImplementedError

    def generate_until(
        self, contexts: list[Any], until: list[str], max_new_tokens: int, batch_size: int = 16, progress: bool = True
    ) -> tuple[list[str], ScoreStats]:
        """Greedy continuation of each context (a message list on a chat-only server), cut at the first stop
        string (which is not included)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What results.json records in ``env``: the backend and the device (or where the model runs)."""
        return {"backend": self.backend, "device": self.device}

    def usage(self) -> dict[str, int]:
        """Counters for results.json ``cost`` beyond examples and tokens (a server's usage, retries)."""
        return {}

    def chunk_size(self, batch_size: int) -> int:
        """How many requests the request cache hands this LM at once (and commits together)."""
        return CHUNK_BATCHES * batch_size

    def close(self) -> None:
        """Release what the LM holds open (connections, actors)."""
