"""homeo_jax: homeostatic training regulation for JAX.

Models emit telemetry, optax regulators read it and publish controls; see DESIGN in
the README for the one data flow.
"""

from homeo_jax.regulators.base import controls as controls
from homeo_jax.regulators.base import regulator_metrics as regulator_metrics

__version__ = "0.1.0"
