"""Racing a trial against the leader on the same requests: the paired test's error
budget under no difference (simulated with known rates), a better trial never
dropped, a much worse one dropped early, and the unpaired fallback."""

from __future__ import annotations

import random

from degen.experiments.tune.race import Race, outcomes, worse_p
from degen.records import Completion, SamplingParams


def comp(i: int, failed: bool, reason: str | None = None) -> Completion:
    return Completion(str(i), "p", SamplingParams(),
                      reason or ("length" if failed else "stop"), completion_tokens=5)


def simulate(rng: random.Random, p_leader: float, p_trial: float, n: int,
             shared: float = 0.5) -> tuple[bool, int]:
    """One race on ``n`` requests with correlated outcomes (a share of the requests is
    hard for both, as prompts are); returns (dropped, requests the trial used)."""
    leader, trial = {}, []
    for i in range(n):
        hard = rng.random() < shared
        u = rng.random() if not hard else rng.random() * 0.5  # hard ones fail more
        leader[str(i)] = u < p_leader
        trial.append(comp(i, (rng.random() if not hard else u) < p_trial))
    race = Race(n, leader=leader)
    for k in range(1, n + 1):
        if race.drop(trial[:k], ("runaway",)):
            return True, k
    return False, n


def test_no_difference_is_dropped_at_most_alpha_of_the_time() -> None:
    rng = random.Random(7)
    for rate in (0.1, 0.3):
        drops = sum(simulate(rng, rate, rate, 64)[0] for _ in range(2000))
        assert drops / 2000 <= 0.05, (rate, drops)


def test_a_better_trial_is_never_dropped() -> None:
    rng = random.Random(11)
    assert not any(simulate(rng, 0.35, 0.1, 64)[0] for _ in range(1000))


def test_a_much_worse_trial_is_dropped_early() -> None:
    rng = random.Random(3)
    runs = [simulate(rng, 0.05, 0.5, 64) for _ in range(300)]
    dropped = [k for d, k in runs if d]
    assert len(dropped) / len(runs) > 0.9
    assert sorted(dropped)[len(dropped) // 2] <= 32  # half of them by the half-way look


def test_the_race_counts_only_discordant_measured_pairs_at_its_looks() -> None:
    leader = {str(i): i < 4 for i in range(16)}  # the leader failed on 0-3
    # the trial fails on 4-9 (where the leader did not) and on 0-3 too
    cs = [comp(i, i < 10) for i in range(16)]
    race = Race(16, leader=leader)
    assert race.points == [4, 8, 12]
    assert not race.drop(cs[:3], ("runaway",))  # before the first look: nothing checked
    assert not race.drop(cs[:4], ("runaway",))  # 4 pairs, all concordant
    assert race.seen == (4, 0, 0)
    # 4 discordant against 0: p = 1/16, above the 0.05/3 each look may spend
    assert not race.drop(cs[:8], ("runaway",))
    assert race.seen == (8, 4, 0) and worse_p(4, 0) == 1 / 16
    assert race.drop(cs[:12], ("runaway",))  # 6 against 0: p = 1/64 < 0.05/3
    assert race.seen == (12, 6, 0)


def test_cancelled_and_errors_are_not_pairs_and_the_fallback_is_unpaired() -> None:
    cs = [comp(i, True, "cancelled" if i % 2 else None) for i in range(8)]
    assert outcomes(cs, ("runaway",)) == {str(i): True for i in range(0, 8, 2)}
    race = Race(20, leader_rate=0.05)
    fails = [comp(i, True) for i in range(5)]
    assert race.drop(fails, ("runaway",))  # 5/5: Wilson's lower end 0.57 > 0.05
    assert not Race(20).drop(fails, ("runaway",))  # no leader: nothing to race
