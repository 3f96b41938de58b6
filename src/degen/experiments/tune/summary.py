"""What a finished study says: every trial with its measure, the best configuration
(confirmed, or the search's with its ties named), which prompts fail under it, the
tokens spent, parameter importance and the stress plan when there was one. The
result is ``tune.json``; :mod:`degen.reports.tune` renders it."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from degen.errors import UsageError
from degen.experiments.tune.space import deviation
from degen.measurement.failure import Measure, examples, lengths, paired, params_key
from degen.measurement.risk import risk
from degen.records import Completion
from degen.store import RECORDS, iter_records, settled

if TYPE_CHECKING:  # pragma: no cover
    from degen.experiments.tune.config import TuneConfig

DEFAULTS_ARM = "baseline"


def confirmation(arms: Sequence[tuple[str, dict[str, Any], int | None, list[Completion]]],
                 kinds: Sequence[str], horizon: int, share: float | None,
                 categories: dict[str, str], requests: int, seed: int) -> dict[str, Any]:
    """What the confirmation says: each arm (name, values, trial, its completions on
    the ``requests`` new requests of ``seed``, baseline first) measured (runaways by
    ``horizon``; ``share``: of the capped generations continued, None for none), the
    best, and best vs baseline paired on the same requests."""
    results: dict[str, Any] = {}
    for name, values, number, cs in arms:
        m = Measure.of(cs, kinds, horizon, share)
        results[name] = {"values": values, "trial": number, "measure": m.to_dict(),
                         "deviation": deviation(values), "examples": examples(cs, kinds),
                         "lengths": lengths(cs), **risk(cs, kinds, categories)}
    done = {name: cs for name, _, _, cs in arms}
    candidates = [a for a in results if a != DEFAULTS_ARM]
    best = min(candidates, key=lambda a: (results[a]["measure"]["rate"] or 0.0,
                                         results[a]["deviation"]), default=None)
    comparison = None
    if best is not None and DEFAULTS_ARM in done:
        comparison = paired(done[best], done[DEFAULTS_ARM], kinds)
        comparison.update(best=best, baseline=DEFAULTS_ARM)
    return {"arms": results, "best": best, "comparison": comparison,
            "requests": requests, "seed": seed, "horizon": horizon,
            "extended": share is not None, "extend_share": share}


def refresh(folder: Path, horizon: int, share: float | None) -> dict[str, Any]:
    """``tune.json`` of ``folder`` with its confirmation measured again from the
    confirmation's records (after :func:`degen.experiments.load.extend.extend`): written back and
    returned."""
    from degen.outcomes import load_run
    from degen.reports.tune import load_summary
    from degen.store import write_json_atomic

    s = load_summary(folder)
    c = s.get("confirmation")
    if not c:
        raise UsageError(f"{folder}: the study has no confirmation to extend (it ran with "
                         "--confirm 0)")
    cfg = s["config"]
    arms = [(name, a["values"], a["trial"],
             load_run(Path(folder) / "confirm" / params_key(a["values"])))
            for name, a in c["arms"].items()]
    cats = {r["prompt_id"]: r["category"] for a in c["arms"].values()
            for r in a.get("by_prompt", [])}
    new = confirmation(arms, cfg["kinds"], horizon, share, cats, c["requests"], c["seed"])
    s["confirmation"] = new
    s["config"]["horizon"] = horizon
    s.update(best_risk_confirmed(new))
    ext = sum(a["measure"].get("extension_tokens", 0) for a in new["arms"].values())
    tokens = s["tokens"]
    s["generated_tokens"] += ext - tokens.get("extension", 0)
    tokens["extension"] = ext
    write_json_atomic(Path(folder) / "tune.json", s)
    return s


def best_risk_confirmed(conf: dict[str, Any]) -> dict[str, Any]:
    arm = conf["arms"][conf["best"]] if conf.get("best") else {}
    return {"by_prompt": arm.get("by_prompt", []), "by_category": arm.get("by_category", [])}


def best_risk(summary: dict[str, Any], cfg: TuneConfig,
              categories: dict[str, str]) -> dict[str, Any]:
    """``by_prompt`` and ``by_category`` of the best configuration: its confirmation
    arm, or (without one) its search trial's records."""
    best = summary.get("best")
    if not best:
        return {"by_prompt": [], "by_category": []}
    conf = summary.get("confirmation")
    if best["source"] == "confirmed" and conf:
        return best_risk_confirmed(conf)
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
    arms = (confirmation or {}).get("arms", {}).values()
    confirm = sum(a["measure"]["tokens"] for a in arms)
    extension = sum(a["measure"].get("extension_tokens", 0) for a in arms)
    tokens = search + pilot + confirm + extension
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
        "tokens": {"search": search, "stress_pilot": pilot, "confirmation": confirm,
                   "extension": extension},
        "best": best, "confirmation": confirmation,
        "importance": importance,
        "stress": study.user_attrs.get("stress"),
        "states": {s.name.lower(): sum(t.state == s for t in study.get_trials(deepcopy=False))
                   for s in TrialState},
    }
