"""What a diagnosis is made of: one :class:`Check` (pass, warn, fail or skip, what was
seen and how to fix it) and a :class:`Diagnosis`, the checks on one target with their
rendering. ``degen doctor`` (:mod:`degen.diagnose.doctor`) and the checkpoint checks
(:mod:`degen.diagnose.checkpoint`) both build them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("pass", "warn", "fail", "skip")


@dataclass(slots=True)
class Check:
    """One diagnosis: ``status`` is pass, warn, fail or skip."""

    name: str
    status: str
    saw: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Diagnosis:
    target: str
    checks: list[Check]

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ok": not self.failed, "counts": self.counts(),
                "checks": [c.to_dict() for c in self.checks]}

    def render(self) -> str:
        lines = [f"degen doctor: {self.target}", ""]
        for c in self.checks:
            lines.append(f"{c.status.upper():<5} {c.name:<18} {c.saw}")
            if c.fix and c.status in ("warn", "fail"):
                lines.append(f"{'':<24} fix: {c.fix}")
        n = self.counts()
        lines += ["", f"{len(self.checks)} checks: {n['pass']} pass, {n['warn']} warn, "
                      f"{n['fail']} fail" + (f", {n['skip']} skipped" if n["skip"] else "")]
        return "\n".join(lines)
