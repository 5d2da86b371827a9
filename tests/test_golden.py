"""Golden outputs: `sdv2 run --model tiny` gives the frames frozen before the "one house" redesign (issue 9).

The frames were written by `python tests/golden/golden_runs.py` at 571d06c (before any file moved). On the machine
that froze them the redesign reproduces them bit for bit; across CPUs (other SIMD paths in the GEMMs) a uint8
rounding step may differ, so the bound here is a few levels at the worst pixel and a tiny mean.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import golden_runs

GOLDEN = np.load(golden_runs.RUNS)


@pytest.mark.parametrize("name", list(golden_runs.CASES))
def test_cli_frames_match_golden(name, tmp_path):
    got = golden_runs.run_case(name, golden_runs.CASES[name], tmp_path)
    want = GOLDEN[name]
    assert got.shape == want.shape
    if os.environ.get("SDV2_GOLDEN_BITWISE"):  # on the machine that froze them: the redesign changes no bit
        assert np.array_equal(got, want), f"{name}: {np.count_nonzero(got != want)} values differ"
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 4, f"{name}: max abs diff {diff.max()}"
    assert diff.mean() <= 0.05, f"{name}: mean abs diff {diff.mean():.4f}"


def test_preset_round_trips_match_golden():
    want = json.loads(golden_runs.ROUND_TRIPS.read_text())
    assert golden_runs.round_trips() == want
