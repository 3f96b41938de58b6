"""Tuning: Optuna studies over sampling parameters that find settings which stop
runaways (``degen tune``), and the report that shows what they found
(``degen report``). Optuna is imported only inside this package's functions."""

from degen.experiments.tune.space import PRESETS, Dim, SearchSpace
from degen.experiments.tune.study import TuneConfig, TuneResult, tune

__all__ = ["PRESETS", "Dim", "SearchSpace", "TuneConfig", "TuneResult", "tune"]
