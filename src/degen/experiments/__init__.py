"""Experiments: what degen runs against an engine and measures. Load runs and their
extensions (:mod:`degen.experiments.load`), tuning studies (:mod:`degen.experiments.tune`),
comparisons of configurations (:mod:`degen.experiments.compare`) and profiles of
degeneration by position (:mod:`degen.experiments.profile`)."""
