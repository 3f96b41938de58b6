"""Measurement: what a set of generations says. Which of them failed and how
(:mod:`~degen.measurement.failure`: the kinds, runaways against a horizon, rates with
their intervals, paired differences), the risk of each prompt
(:mod:`~degen.measurement.risk`), the stress suite's re-weighted rates
(:mod:`~degen.measurement.stress`), a run's summary (:mod:`~degen.measurement.summary`),
the live tally a progress bar shows (:mod:`~degen.measurement.progress`), and the
runaway model fitted from extended runs (:mod:`~degen.measurement.runaway_fit`).
It reads records and detectors' judgments; it never runs a model."""
