"""Model diagnosis: ``degen doctor`` (:mod:`~degen.diagnose.doctor`: chat template,
end of turn, padding, penalties, a served model's first tokens), the checkpoint checks
(:mod:`~degen.diagnose.checkpoint`), what a diagnosis is made of
(:mod:`~degen.diagnose.checks`), ``degen memory`` (:mod:`~degen.diagnose.memory`)
from a model's architecture (:mod:`~degen.diagnose.arch`, :mod:`~degen.diagnose.presets`)."""
