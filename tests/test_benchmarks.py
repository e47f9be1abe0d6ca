"""The benchmark scripts' own logic: every op case runs, and rounds merge into paired ratios."""

from __future__ import annotations

import pytest

from benchmarks import cluster


@pytest.mark.parametrize("case", ["a", "b"])
def test_cluster_op_cases_run_on_both_paths(case):
    rows = [cluster.run_one(case, impl, "op", 1, "cpu", "inductor") for impl in ("grid", "points")]
    expected = {"a": "regions=8 centres=2x2", "b": "regions=1 centres=4x4"}[case]
    assert [r["what"] for r in rows] == [expected, expected]
    assert all(r["CPU s/step"] > 0 and r["peak GB"] > 0 for r in rows)


def _row(impl, round_, cpu, peak):
    return {"case": "d", "what": "coc_tiny_plain", "impl": impl, "CPU s/step": cpu, "peak GB": peak, "round": round_}


def test_cluster_rounds_merge_into_medians_and_paired_ratios():
    """Ratios are taken round by round (0.5, 0.25, 0.6: median 0.5), not as a ratio of medians
    (1 / 4 = 0.25); a round that failed on one side (round 3) drops out of the ratio only."""
    rows = [_row("grid", 0, 2.0, 1.5), _row("points", 0, 1.0, 0.9), _row("grid", 1, 4.0, 1.7)]
    rows += [_row("points", 1, 1.0, 1.0), _row("grid", 2, 10.0, 1.6), _row("points", 2, 6.0, 1.1)]
    rows += [_row("points", 3, 0.1, 0.8)]
    grid, points = cluster._merge_rounds(rows, "cpu")
    assert (grid["rounds"], grid["CPU s/step"], grid["CPU time / A"]) == (3, 4.0, "A")
    assert (points["rounds"], points["CPU s/step"], points["CPU time / A"]) == (4, 1.0, "0.50")
    assert points["peak GB"] == pytest.approx(0.95)  # median of 0.8, 0.9, 1.0, 1.1
    assert points["peak / ref (target)"] == f"{0.95 / 1.79:.2f} (<= 0.6)"


def _pm(impl, s_step, peak, round_):
    return {"model": "pointmlp_coc", "implementation": impl, "compiled": "no", "batch": 4, "points": 1024,
            "device": "cpu", "s/step": s_step, "peak RSS GB": peak, "round": round_}  # fmt: skip


def test_pointmlp_rounds_pair_each_row_with_its_own_reference():
    """Ratios to the measured reference are taken within each round (6/10, 4/10, 9/12: median 0.6),
    not from the medians (6/10); the quoted ratios use the medians (6 s / 6.5 s, 2.4 GB / 3.95 GB)."""
    from benchmarks import pointmlp

    rounds = [
        [_pm("reference", 10.0, 3.0, 0), _pm("pointcoc", 6.0, 2.4, 0)],
        [_pm("reference", 10.0, 3.2, 1), _pm("pointcoc", 4.0, 2.0, 1)],
        [_pm("reference", 12.0, 3.4, 2), _pm("pointcoc", 9.0, 2.6, 2)],
    ]
    reference, ours = pointmlp._merge_rounds(rounds)
    assert (reference["rounds"], reference["s/step"]) == (3, 10.0) and "time / ref (target)" not in reference
    assert (ours["s/step"], ours["peak RSS GB"]) == (6.0, 2.4)
    assert ours["time / ref (target)"] == "0.60 (<= 0.6)"  # 0.6, 0.4, 0.75
    assert ours["memory / ref"] == "0.76"  # 0.8, 0.625, 0.765
    assert ours["time / quoted (target)"] == f"{6.0 / 6.5:.2f} (<= 0.6)"
    assert ours["memory / quoted (target)"] == f"{2.4 / 3.95:.2f} (<= 0.7)"
