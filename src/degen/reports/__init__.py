"""Reports: self-contained HTML pages (and Markdown beside them) rendered from what an
experiment wrote: a tuning study (:mod:`~degen.reports.tune`), a comparison
(:mod:`~degen.reports.compare`), survival curves (:mod:`~degen.reports.survival`),
with the shared page parts in :mod:`~degen.reports.html`."""
