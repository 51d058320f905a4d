"""Champion/challenger decisions, as a plain function."""

from __future__ import annotations

from piston.bundle import Gate
from workers.retrain import Comparison, Scores, decide

PASSED = [Gate(name="accuracy", value=0.95, threshold=0.9, passed=True)]
FAILED = [Gate(name="accuracy", value=0.5, threshold=0.9, passed=False)]


def scores(new: float, old: float | None, f1_new: float = 0.9,
           f1_old: float = 0.9) -> Comparison:
    return Comparison(
        challenger=Scores(accuracy=new, macro_f1=f1_new, images=40),
        champion=Scores(accuracy=old, macro_f1=f1_old, images=40) if old is not None else None)


def test_promote_only_when_gates_pass_and_not_worse() -> None:
    assert decide("v2", "v1", PASSED, scores(0.95, 0.90), True)[0] is True
    assert decide("v2", "v1", PASSED, scores(0.90, 0.90), True)[0] is True  # a tie
    assert decide("v2", None, PASSED, scores(0.95, None), True)[0] is True
    promoted, why = decide("v2", "v1", PASSED, scores(0.85, 0.90), True)
    assert not promoted and why.startswith("worse than production v1 on the same 40 test")
    promoted, why = decide("v2", "v1", PASSED, scores(0.95, 0.90, 0.70, 0.80), True)
    assert not promoted and "macro_f1 0.700 < 0.800" in why
    promoted, why = decide("v2", "v1", FAILED, scores(0.95, 0.90), True)
    assert not promoted and why == "failed its quality gates: accuracy 0.500 (bar 0.9)"
    promoted, why = decide("v2", "v1", PASSED, scores(0.95, 0.90), False)
    assert not promoted and why.endswith("not asked to promote")
    promoted, why = decide("v2", "v1", [], scores(0.95, 0.90), True)
    assert not promoted and why == "failed its quality gates: no gates were measured"
