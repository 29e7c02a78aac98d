"""The neutral temperature (collapse/report/neutral.py): drift per generation, T* and its interval, by learner."""

from __future__ import annotations

from pathlib import Path

import pytest

from collapse.metrics.stats import drift_part
from collapse.report import neutral as N
from collapse.report.runs import Run, group_runs


def _run(name: str, T: float, drift: float, half: float, gens: int = 5, seed: int = 0, **train) -> Run:
    """A finished run whose entropy changed by ``drift`` per generation (paired interval ± ``half``·g) and whose
    top-10 shift moved the opposite way."""
    rows = []
    for g in range(gens + 1):
        ch = {} if g == 0 else {"entropy": {"delta": drift * g, "ci95": [(drift - half) * g, (drift + half) * g]},
                                "bucket_shift.1-10": {"delta": -10 * drift * g,
                                                      "ci95": [-10 * (drift + half) * g, -10 * (drift - half) * g]}}
        rows.append({"generation": g, "entropy": 8.0 + drift * g, "changes": {"from_gen0": ch} if ch else {}})
    config = {"seed": seed, "generations": gens, "generation": {"temperature": T}, "train": {"method": "lora", **train}}
    return Run(Path(name), name, config, "", {}, rows, ())


def test_drift_part_is_the_change_from_generation_0_over_g():
    d = drift_part(4, {"entropy": {"delta": -0.8, "ci95": [-1.0, -0.6]}, "bucket_shift.1-10": {"delta": 2.0,
                                                                                                "ci95": [1.0, 3.0]}})
    assert d["entropy_drift"] == pytest.approx(-0.2) and d["entropy_drift_ci"] == pytest.approx([-0.25, -0.15])
    assert d["top10_drift"] == pytest.approx(0.5) and d["top10_drift_ci"] == pytest.approx([0.25, 0.75])
    assert drift_part(0, {"entropy": {"delta": 0.0, "ci95": [0.0, 0.0]}}) == {}


def test_t_star_interpolates_the_sign_change_and_its_interval_spans_the_nearest_resolved_points():
    runs = [_run(f"t{T}", T, d, h) for T, d, h in
            ((0.5, -0.30, 0.05), (0.7, -0.20, 0.05), (0.85, -0.05, 0.08), (1.0, 0.02, 0.05), (1.15, 0.10, 0.05))]
    s = N.neutral_summary(group_runs(runs))
    (learner, entry), = s.items()
    t = entry["t_star"]
    assert t["t_star"] == pytest.approx(0.85 + 0.15 * 0.05 / 0.07)
    assert t["interval"] == [0.7, 1.15]  # 0.85 and 1.0 are not resolved
    assert entry["t_star_top10"]["t_star"] == pytest.approx(t["t_star"])  # the mirror image here
    table = N.neutral_markdown(s)
    assert "0.957" in table and "[0.7, 1.15]" in table


def test_no_sign_change_is_said_and_learners_are_kept_apart():
    runs = [_run(f"a{T}", T, -0.3 + 0.1 * T, 0.01) for T in (0.5, 0.7, 1.0)]
    runs += [_run(f"b{T}", T, d, 0.01, method="full") for T, d in ((0.5, -0.2), (0.7, 0.1), (1.0, 0.3))]
    s = N.neutral_summary(group_runs(runs))
    assert len(s) == 2
    assert set(s) == {"LoRA r=8", "full fine-tune"}
    lora, full = s["LoRA r=8"], s["full fine-tune"]
    assert lora["t_star"]["t_star"] is None and "negative at every temperature" in lora["t_star"]["note"]
    assert 0.5 < full["t_star"]["t_star"] < 0.7 and full["t_star"]["interval"] == [0.5, 0.7]


def test_seeds_are_averaged_and_fewer_than_three_temperatures_draw_nothing():
    runs = [_run(f"t{T}s{s}", T, d + 0.01 * s, 0.05, seed=s) for T, d in ((0.7, -0.1), (1.0, 0.1)) for s in range(3)]
    assert N.neutral_summary(group_runs(runs)) is None
    runs += [_run(f"t1.3s{s}", 1.3, 0.3, 0.05, seed=s) for s in range(3)]
    (entry,) = N.neutral_summary(group_runs(runs)).values()
    p = entry["points"][0]
    assert p["seeds"] == [0, 1, 2] and p["entropy_drift"]["mean"] == pytest.approx(-0.09)
