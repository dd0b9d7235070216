"""The one parameter rule: roles, weight-decay mask, Muon matrices, organelles, axes."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from optax.contrib import MuonDimensionNumbers

from homeo_jax.models import MODEL_TYPES, AdaptiveConfig, MoEConfig, MoETransformerConfig
from homeo_jax.models.layers import TransformerConfig
from homeo_jax.models.roles import (
  logical_axes,
  muon_dimension_numbers,
  organelle_labels,
  param_roles,
  weight_decay_mask,
)
from homeo_jax.training.step import functional_model

SHAPE = dict(vocab_size=20, num_layers=2, num_heads=2, d_model=16, max_seq_len=8)
CONFIGS = {
  "transformer": TransformerConfig(**SHAPE),
  "quant_transformer": TransformerConfig(**SHAPE),
  "moe_transformer": MoETransformerConfig(**SHAPE, moe=MoEConfig(num_experts=4)),
  "adaptive_transformer": AdaptiveConfig(
    **SHAPE, embedding="learned", ffn="moe", moe=MoEConfig(num_experts=4)
  ),
}


def params_of(kind):
  cfg = CONFIGS[kind]
  if kind == "quant_transformer":
    from homeo_jax.models.quant import QuantTransformerConfig

    cfg = QuantTransformerConfig(**dataclasses.asdict(cfg))
  return functional_model(MODEL_TYPES[kind](cfg, rngs=nnx.Rngs(0)))[1]


def by_path(tree):
  is_leaf = lambda x: x is None or isinstance(x, MuonDimensionNumbers)  # noqa: E731
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {jax.tree_util.keystr(p): v for p, v in flat}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_leaf_has_a_role_and_vectors_are_never_decayed(kind):
  params = params_of(kind)
  roles = by_path(param_roles(params))
  mask = by_path(weight_decay_mask(params))
  shapes = {k: np.shape(v) for k, v in by_path(params).items()}
  assert "other" not in roles.values(), [k for k, r in roles.items() if r == "other"]
  for path, role in roles.items():
    # The rule reproduces "decay matrices, not gains/biases" on every model here.
    assert mask[path] == (len(shapes[path]) >= 2), path
    assert (role == "norm") == (len(shapes[path]) == 1), path


def test_roles_of_the_moe_and_adaptive_models():
  roles = by_path(param_roles(params_of("moe_transformer")))
  pick = lambda suffix: {r for p, r in roles.items() if p.endswith(suffix)}  # noqa: E731
  assert pick("['w_up'].value") == {"expert"}
  assert pick("['gate']['kernel'].value") == {"router"}
  assert pick("['qkv']['kernel'].value") == {"attention"}
  roles = by_path(param_roles(params_of("adaptive_transformer")))
  assert pick("['query']['kernel'].value") == {"attention"}
  assert pick("['gate_out']['kernel'].value") == {"gate"}


def test_muon_takes_expert_stacks_as_batched_matrices_and_leaves_the_router_to_adamw():
  dims = by_path(muon_dimension_numbers(params_of("moe_transformer")))
  up = next(v for p, v in dims.items() if p.endswith("['w_up'].value"))
  assert (up.reduction_axis, up.output_axis) == (1, 2)
  assert all(v is None for p, v in dims.items() if "gate" in p or "embed" in p)
  assert next(v for p, v in dims.items() if "qkv" in p) is not None


def test_organelles_and_logical_axes():
  labels = set(jax.tree.leaves(organelle_labels(params_of("transformer"))))
  assert labels == {"embed", "attention", "mlp", "other"}
  assert logical_axes("[0].mu['blocks'][1]['mlp']['w_down'].value", (4, 64, 16)) == (
    "expert",
    "mlp",
    "embed",
  )
  assert logical_axes(".controller.loss_buffer.values", (16,)) == (None,)
