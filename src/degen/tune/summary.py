"""What a finished study says: every trial with its measure, the best configuration
(confirmed, or the search's with its ties named), which prompts fail under it, the
tokens spent, parameter importance and the stress plan when there was one. The
result is ``tune.json``; :mod:`degen.report` renders it."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from degen.load.store import RECORDS, iter_records, settled
from degen.measure import params_key
from degen.risk import risk
from degen.tune.space import deviation

if TYPE_CHECKING:  # pragma: no cover
    from degen.tune.study import TuneConfig


def best_risk(summary: dict[str, Any], cfg: TuneConfig,
              categories: dict[str, str]) -> dict[str, Any]:
    """``by_prompt`` and ``by_category`` of the best configuration: its confirmation
    arm, or (without one) its search trial's records."""
    best = summary.get("best")
    if not best:
        return {"by_prompt": [], "by_category": []}
    conf = summary.get("confirmation")
    if best["source"] == "confirmed" and conf:
        arm = conf["arms"][conf["best"]]
        return {"by_prompt": arm["by_prompt"], "by_category": arm["by_category"]}
    records = cfg.out / "trials" / params_key(best["values"]) / RECORDS
    cs = settled(iter_records(records, allow_torn_tail=True)) if records.exists() else []
    return risk(cs, cfg.kinds, categories)


def summarize_study(study: Any, cfg: TuneConfig, confirmation: dict[str, Any] | None
                    ) -> dict[str, Any]:
    from optuna.trial import TrialState

    rows = []
    tokens = 0
    for t in study.get_trials(deepcopy=False):
        m = t.user_attrs.get("measure") or {}
        tokens += m.get("tokens", 0)
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "values": t.user_attrs.get("values") or dict(t.params),
                     "measure": m, "deviation": deviation(t.params),
                     "objectives": t.values, "records": t.user_attrs.get("records"),
                     "worker": t.user_attrs.get("worker"),
                     "reweighted": t.user_attrs.get("reweighted"),
                     "examples": t.user_attrs.get("examples", []),
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None})
    search = tokens
    pilot = ((study.user_attrs.get("stress") or {}).get("pilot") or {}).get("tokens", 0)
    confirm = sum(a["measure"]["tokens"] for a in (confirmation or {}).get("arms", {}).values())
    tokens = search + pilot + confirm
    complete = [r for r in rows if r["state"] == "complete"]
    best = None
    if confirmation and confirmation["best"]:
        arm = confirmation["arms"][confirmation["best"]]
        best = {"values": arm["values"], "trial": arm["trial"], "source": "confirmed"}
    elif complete:
        def key(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r["measure"].get("rate") or 0, r["deviation"])

        r = min(complete, key=key)
        # without a confirmation a tie stays a tie: say which trials share the place
        best = {"values": r["values"], "trial": r["number"], "source": "search",
                "tied_with": [o["number"] for o in complete
                              if o is not r and key(o) == key(r)]}
    importance = None
    if len(complete) >= 4 and len(cfg.space.dims) > 1:
        with contextlib.suppress(Exception):  # importance needs varied finished trials
            import optuna

            importance = optuna.importance.get_param_importances(
                study, target=(lambda t: t.values[0]) if len(cfg.objectives) > 1 else None)
    return {
        "kind": "degen.tune", "study": cfg.study, "config": cfg.to_dict(),
        "trials": rows, "n_complete": len(complete),
        "n_pruned": sum(r["state"] == "pruned" for r in rows),
        "generated_tokens": tokens,
        "tokens": {"search": search, "stress_pilot": pilot, "confirmation": confirm},
        "best": best, "confirmation": confirmation,
        "importance": importance,
        "stress": study.user_attrs.get("stress"),
        "states": {s.name.lower(): sum(t.state == s for t in study.get_trials(deepcopy=False))
                   for s in TrialState},
    }
