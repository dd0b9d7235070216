"""The README's "own loop" example runs as written (so it cannot rot)."""

import re
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str) -> str:
  text = README.read_text()
  start = text.index(f"## {heading}\n")
  return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.slow
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


def test_ci_runs_the_readmes_full_test_command():
  """.ci/run's pytest line is the README's command for the full suite (every tier)."""
  ci = (README.parent / ".ci" / "run").read_text().splitlines()
  ci_pytest = [line for line in ci if line.startswith("python -m pytest")]
  assert len(ci_pytest) == 1 and '-m "slow or not slow"' in ci_pytest[0]
  assert ci_pytest[0] in README.read_text()


def layout_block() -> str:
  text = README.read_text()
  start = text.index("## Layout\n")
  return re.search(r"```\n(.*?)```", text[start:], re.S).group(1)


def test_layout_names_every_module_and_only_paths_that_exist():
  """Every module of the package appears in the README's layout, under its folder; every
  ``.py`` file and folder the layout names exists."""
  root = README.parent
  top = {b.split()[0]: b for b in re.split(r"\n(?=\S)", layout_block()) if b.strip()}
  package_block = top.pop("homeo_jax/")
  entries = {
    b.split()[0].rstrip("/"): b for b in re.split(r"\n(?=  \S)", package_block)[1:] if b.strip()
  }
  package = root / "homeo_jax"
  for path in sorted(package.rglob("*.py")):
    rel = path.relative_to(package)
    if rel.name == "__init__.py":
      continue
    key = rel.parts[0] if len(rel.parts) > 1 else rel.name
    assert key in entries, f"homeo_jax/{rel} is missing from the layout"
    assert rel.name in entries[key], f"homeo_jax/{rel} is missing from the layout"
  for key, block in entries.items():
    assert (package / key).exists(), f"homeo_jax/{key} does not exist"
    if (package / key).is_dir():
      for name in re.findall(r"\b([a-z_0-9]+\.py)\b", block):
        assert (package / key / name).is_file(), f"homeo_jax/{key}/{name} does not exist"
  for folder in top:
    assert (root / folder).is_dir(), f"{folder} does not exist"


def test_links_point_at_files_that_exist():
  for doc in [README, *sorted((README.parent / "docs").rglob("*.md"))]:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
      if "://" in target or target.endswith(".png"):
        continue
      assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"
