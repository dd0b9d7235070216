"""experiments.spechorn_maxvio: MaxVio and its noise floor against hand-derived numbers."""

import math

import numpy as np
import pytest

from experiments.spechorn_maxvio import max_vio, noise_floor


def test_max_vio_by_hand():
  assert max_vio([10, 10, 10, 10]) == 0.0
  assert max_vio([30, 10, 10, 10]) == pytest.approx(30 / 15 - 1)


def test_noise_floor_against_the_binomial_and_the_measured_figures():
  # Every token takes both of two experts: the loads are equal, MaxVio is 0 exactly.
  assert noise_floor(1000, 2, 2, draws=5) == (0.0, 0.0)
  # One of two experts: load X ~ Binomial(N, ½) and MaxVio = |2X/N − 1|, whose mean is
  # √(2/(πN)) to within O(1/N) (the normal approximation).
  mean, _ = noise_floor(10_000, 2, 1, draws=2000, seed=1)
  assert mean == pytest.approx(math.sqrt(2 / (math.pi * 10_000)), rel=0.06)
  # top-2 of 8 experts on 16,384 tokens (the 16 validation batches of spechorn.py:cpu_long):
  # 0.021 on average, 0.034 at the 95th percentile; on 500,000 tokens 0.004.
  mean, p95 = noise_floor(16_384, 8, 2, draws=300)
  assert mean == pytest.approx(0.021, rel=0.08) and p95 == pytest.approx(0.034, rel=0.12)
  assert np.isclose(noise_floor(500_000, 8, 2, draws=30)[0], 0.004, rtol=0.2)
  with pytest.raises(ValueError, match="top_k must be in"):
    noise_floor(10, 4, 5)
