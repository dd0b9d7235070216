"""Regulators: optax transforms with explicit state that steer a run from its telemetry.

Importing the package registers every built-in optimizer and regulator by name
(``registry.py``), so a config can name them.
"""

from homeo_jax.regulators import (  # noqa: F401  (each module registers its builders)
  ars,
  compute_price,
  load_balance,
  ord_muon,
  qk_clip,
  registry,
  spike_aware,
  spike_guard,
  thyroid,
  update_prox,
  update_ratio,
)
from homeo_jax.regulators.base import controls as controls
from homeo_jax.regulators.base import regulator_metrics as regulator_metrics
from homeo_jax.regulators.base import regulator_specs as regulator_specs
from homeo_jax.regulators.base import regulator_states as regulator_states
