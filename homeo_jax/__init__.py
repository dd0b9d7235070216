"""homeo_jax: homeostatic training regulation for JAX.

Models emit telemetry, optax regulators read it and publish controls; see the design
section of the README for the one data flow. Every regulator is an optax
``GradientTransformation(ExtraArgs)``: chain it, inject its hyperparameters, donate its
state, checkpoint it like any optax state.
"""

from homeo_jax.cores.polar import orthogonalize as orthogonalize
from homeo_jax.cores.polar import orthogonalize_many as orthogonalize_many
from homeo_jax.cores.sinkhorn import sinkhorn as sinkhorn
from homeo_jax.regulators.ars import ars as ars
from homeo_jax.regulators.ars import ars_adamw as ars_adamw
from homeo_jax.regulators.ars import ars_controller as ars_controller
from homeo_jax.regulators.base import RegulatorSpec as RegulatorSpec
from homeo_jax.regulators.base import controls as controls
from homeo_jax.regulators.base import regulator_metrics as regulator_metrics
from homeo_jax.regulators.base import regulator_specs as regulator_specs
from homeo_jax.regulators.compute_price import compute_price as compute_price
from homeo_jax.regulators.load_balance import deepseek_balancer as deepseek_balancer
from homeo_jax.regulators.load_balance import spechorn_balancer as spechorn_balancer
from homeo_jax.regulators.ord_muon import ord_muon as ord_muon
from homeo_jax.regulators.ord_muon import scale_by_ord_muon as scale_by_ord_muon
from homeo_jax.regulators.qk_clip import qk_clip as qk_clip
from homeo_jax.regulators.spike_aware import spike_aware as spike_aware
from homeo_jax.regulators.spike_guard import skip_spikes as skip_spikes
from homeo_jax.regulators.steering import steer_hyperparams as steer_hyperparams
from homeo_jax.regulators.thyroid import thyroid as thyroid
from homeo_jax.regulators.thyroid import thyroid_controller as thyroid_controller
from homeo_jax.regulators.update_ratio import update_ratio_homeostat as update_ratio_homeostat

__version__ = "0.4.1"
