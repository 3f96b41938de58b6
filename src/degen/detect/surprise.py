"""How surprised the model was by its own tokens: the mean negative log-probability of
the last ``window`` sampled tokens.

The local engine has every step's distribution; vLLM, llama.cpp and OpenAI return
per-token ``logprobs`` on request. Babble is made of tokens the model itself found
improbable (a window's mean above about 5 nats, where a normal answer stays near 1-2),
so where they are given, :class:`~degen.detect.babble.BabbleTrack` weighs this mean in
with the text's own measures. Text with no log-probabilities (records, logs) is judged
on the text alone.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from degen.errors import InvalidParams


class SurpriseTrack:
    """Running mean of the last ``window`` tokens' negative log-probabilities.

    Args:
        window: tokens averaged.
        min_tokens: fewest tokens before a mean is given (None until then).
    """

    def __init__(self, window: int = 32, min_tokens: int = 16) -> None:
        if window < 1 or not 1 <= min_tokens <= window:
            raise InvalidParams("surprise window must be >= 1 and min_tokens in [1, window]")
        self.window, self.min_tokens = window, min_tokens
        self._nll: deque[float] = deque()
        self._sum = 0.0
        self.tokens = 0
        self.peak = 0.0  # the highest window mean so far

    def feed(self, logprobs: Iterable[float | None]) -> None:
        """Log-probabilities (natural log, <= 0) of the next tokens; None or non-finite
        values (a server that gave none for a token) are skipped."""
        q = self._nll
        for lp in logprobs:
            if lp is None or not math.isfinite(lp):
                continue
            v = -lp if lp < 0 else 0.0
            q.append(v)
            self._sum += v
            if len(q) > self.window:
                self._sum -= q.popleft()
            self.tokens += 1
            if len(q) >= self.min_tokens and self._sum > self.peak * len(q):
                self.peak = self._sum / len(q)

    def mean(self) -> float | None:
        """Mean negative log-probability of the last ``window`` tokens (nats), or None
        before ``min_tokens`` tokens came with one."""
        q = self._nll
        return self._sum / len(q) if len(q) >= self.min_tokens else None
