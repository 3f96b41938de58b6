"""Load runs: a :class:`~degen.experiments.load.schedule.Plan` of requests sent to an
engine on a schedule (:mod:`~degen.experiments.load.runner`, through
:mod:`~degen.experiments.load.dispatch`), and the extension that follows the
generations which did not end (:mod:`~degen.experiments.load.extend`)."""
