"""degen where generation already runs: each module plugs the same watch into another
library, imported only when used (the library is an optional extra).

- :mod:`degen.integrations.transformers`: a ``StoppingCriteria`` for ``generate``;
- :mod:`degen.integrations.training`: a ``TrainerCallback`` that profiles samples at
  each evaluation;
- :mod:`degen.integrations.vllm`: a logits processor for vLLM's V1 engine;
- :mod:`degen.integrations.litellm`: a guardrail for the LiteLLM proxy.

See docs/integrations/ for a page on each.
"""
