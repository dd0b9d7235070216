"""The README's "own loop" example runs as written (so it cannot rot)."""

import re
from pathlib import Path

import chex
import jax
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str) -> str:
  text = README.read_text()
  start = text.index(f"## {heading}\n")
  return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_own_loop_example():
  namespace: dict = {}
  exec(compile(section_code("Use a regulator in your own loop"), str(README), "exec"), namespace)
  losses = namespace["losses"]
  assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20]), (losses[:3], losses[-3:])
  saved = {"params": namespace["params"], "opt_state": namespace["opt_state"]}
  restored = namespace["restored"]
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  chex.assert_trees_all_equal(restored, saved)
  bias = namespace["hj"].controls(restored["opt_state"])["router"]["moe_selection_bias"]
  assert float(np.abs(bias).max()) > 0  # the balancer acted and its state came back
