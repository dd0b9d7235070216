"""optax's own contract suite for contributed optimizers, run over our optimizer regulators.

The suite is generated from the installed optax (``optax/contrib/_common_test.py``), not
copied: its helper section is executed, the optimizer tables are replaced by ARS
(``ars_adamw``), the Spectral Thyroid over AdamW and ORD-Muon, and its test class is then
executed against them. One adaptation, of optax's own kind: ``value=`` (the loss) is
passed to our regulators as the suite passes it to momo.
"""

import inspect
import pathlib
import types

import optax
import pytest

from homeo_jax.regulators.ars import ars_adamw
from homeo_jax.regulators.ord_muon import ord_muon
from homeo_jax.regulators.thyroid import thyroid

pytestmark = pytest.mark.slow  # 30,000-step scans per optimizer and target


def thyroid_adamw(learning_rate: float, weight_decay: float = 1e-4):
  """The thyroid over AdamW with named arguments: ``inject_hyperparams`` cannot bind the
  ``**inner_kwargs`` the thyroid forwards (its docstring says to wrap it so)."""
  return thyroid(optax.adamw, learning_rate, weight_decay)


OURS = {"ars_adamw": ars_adamw, "thyroid_adamw": thyroid_adamw, "ord_muon": ord_muon}
TABLE = (
  {"opt_name": "ars_adamw", "opt_kwargs": {"learning_rate": 1e-2}},
  {"opt_name": "thyroid_adamw", "opt_kwargs": {"learning_rate": 1e-2}},
  {"opt_name": "ord_muon", "opt_kwargs": {"learning_rate": 1e-2}},
)
for entry in TABLE:
  entry.update(wrapper_name=None, wrapper_kwargs=None)


def _suite() -> types.ModuleType:
  source = (pathlib.Path(inspect.getfile(optax)).parent / "contrib" / "_common_test.py").read_text()
  helpers, sep, tests = source.partition("class ContribTest(")
  assert sep, "optax's common suite no longer defines ContribTest"
  names = "'ars_adamw', 'thyroid_adamw', 'ord_muon'"
  for momo in (
    "['momo', 'momo_adam']",
    "['momo', 'momo_adam', 'sgd']",
    "['polyak_sgd', 'momo', 'momo_adam']",
  ):  # noqa: E501
    assert momo in tests or momo.endswith("'sgd']") or momo.startswith("['polyak"), momo
    tests = tests.replace(momo, momo[:-1] + f", {names}]")
  module = types.ModuleType("optax_common_suite")
  exec(compile(helpers, "optax/contrib/_common_test.py", "exec"), module.__dict__)  # noqa: S102
  module._get_opt_factory = OURS.__getitem__
  module._MAIN_OPTIMIZERS_UNDER_TEST = TABLE
  module._ALL_OPTIMIZERS_UNDER_TEST = TABLE
  exec(compile(sep + tests, "optax/contrib/_common_test.py", "exec"), module.__dict__)  # noqa: S102
  return module


OptaxContribSuite = _suite().ContribTest
