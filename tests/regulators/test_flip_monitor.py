"""The level-flip monitor: hand-counted flips of a quantized leaf."""

import jax.numpy as jnp

from homeo_jax.models.quant import quantized_mask
from homeo_jax.regulators.flip_monitor import level_flip_monitor


def test_level_flip_monitor_counts_changed_levels_of_quantized_leaves():
  w = jnp.array([[2.0], [-2.0], [0.5], [-0.5]])  # γ = 1.25: levels 1.5, -1.5, 0.5, -0.5
  params = {"mlp": {"up": {"kernel": w}}, "token_embed": {"embedding": jnp.ones((3, 2))}}
  updates = {
    "mlp": {"up": {"kernel": jnp.array([[0.0], [0.0], [-1.0], [0.0]])}},
    "token_embed": {"embedding": jnp.ones((3, 2))},
  }
  tx = level_flip_monitor(mask=quantized_mask)
  out, state = tx.update(updates, tx.init(params), params)
  assert float(state.flip_rate) == 0.25  # 0.5 -> -0.5 flips one level of four
  assert out is updates
  # ternary levels: x = 0.4 -> -0.4 rounds to 0 both times, so nothing flips
  tx = level_flip_monitor("ternary", mask=quantized_mask)
  _, state = tx.update(updates, tx.init(params), params)
  assert float(state.flip_rate) == 0.0
