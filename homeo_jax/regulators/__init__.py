"""Regulators: optax transforms with explicit state that steer a run from its telemetry."""

from homeo_jax.regulators.base import controls as controls
from homeo_jax.regulators.base import regulator_metrics as regulator_metrics
from homeo_jax.regulators.base import regulator_specs as regulator_specs
from homeo_jax.regulators.base import regulator_states as regulator_states
