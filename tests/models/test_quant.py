import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from homeo_jax.models.quant import (
  QuantTransformer,
  QuantTransformerConfig,
  absmean_scale,
  hard_levels,
  quantize,
  soft_levels,
)

W = jax.random.normal(jax.random.key(0), (32, 8))


@pytest.mark.parametrize(
  "levels, values", [("2bit", [-1.5, -0.5, 0.5, 1.5]), ("ternary", [-1.0, 0.0, 1.0])]
)
def test_eval_weights_lie_on_the_levels(levels, values):
  q = np.asarray(quantize(W, None, levels) / absmean_scale(W))
  np.testing.assert_allclose(np.unique(np.round(q, 5)), values)
  # against a float64 reference of the staircase
  x = np.asarray(W / absmean_scale(W), np.float64)
  ref = np.clip(np.floor(x) + 0.5, -1.5, 1.5) if levels == "2bit" else np.clip(np.round(x), -1, 1)
  np.testing.assert_allclose(q, ref, atol=1e-6)


def test_temperature_goes_from_soft_to_hard():
  x = jnp.linspace(-2.95, 2.95, 100)  # no sample on a step (where soft = the midpoint)
  hard = hard_levels(x)
  errors = [float(jnp.mean(jnp.abs(soft_levels(x, t) - hard))) for t in (1.0, 0.3, 0.1, 1e-3)]
  assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 and errors[0] > 0.1


def test_straight_through_passes_gradients():
  g = jax.grad(lambda w: jnp.sum(quantize(w, jnp.asarray(1e-4)) * 3.0))(W)
  assert float(jnp.abs(g).min()) > 0  # hard rounding alone would give zeros
  true = jax.grad(lambda w: jnp.sum(quantize(w, jnp.asarray(1e-4), straight_through=False)))(W)
  assert float(jnp.abs(true).mean()) < float(jnp.abs(g).mean())


def test_quantized_model_uses_levels_at_eval_and_temperature_control():
  cfg = QuantTransformerConfig(
    vocab_size=11,
    num_layers=1,
    num_heads=2,
    d_model=16,
    max_seq_len=8,
    base_temperature=0.5,
    temperature_from="thyroid",
  )
  model = QuantTransformer(cfg, rngs=nnx.Rngs(0))
  tokens = jnp.arange(8)[None] % 11
  eval_a, _ = model(tokens)
  # eval output equals the float model run on hard-quantized kernels
  graphdef, state = nnx.split(model)
  hard = jax.tree_util.tree_map_with_path(
    lambda p, w: (
      quantize(w, None)
      if "blocks" in jax.tree_util.keystr(p) and "kernel" in jax.tree_util.keystr(p)
      else w
    ),
    state,
  )
  from homeo_jax.models.transformer import Transformer

  expected, _ = Transformer.__call__(nnx.merge(graphdef, hard), tokens)
  np.testing.assert_allclose(eval_a, expected, atol=1e-5)
  with pytest.raises(ValueError, match="reads control 'quant_temperature' from regulator"):
    model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=0))  # no silent default
  soft, _ = model(
    tokens,
    deterministic=False,
    rngs=nnx.Rngs(dropout=0),
    controls={"thyroid": {"quant_temperature": jnp.asarray(1.0)}},
  )
  softer, _ = model(
    tokens,
    deterministic=False,
    rngs=nnx.Rngs(dropout=0),
    controls={"thyroid": {"quant_temperature": jnp.asarray(2.0)}},
  )
  assert float(jnp.abs(soft - softer).max()) > 1e-4  # τ reaches the forward


def test_bad_config():
  with pytest.raises(ValueError, match="model.levels must be one of"):
    QuantTransformer(QuantTransformerConfig(vocab_size=5, levels="3bit"), rngs=nnx.Rngs(0))


def test_level_flip_monitor_counts_changed_levels_of_quantized_leaves():
  from homeo_jax.models.quant import level_flip_monitor

  w = jnp.array([[2.0], [-2.0], [0.5], [-0.5]])  # γ = 1.25: levels 1.5, -1.5, 0.5, -0.5
  params = {"mlp": {"up": {"kernel": w}}, "token_embed": {"embedding": jnp.ones((3, 2))}}
  updates = {
    "mlp": {"up": {"kernel": jnp.array([[0.0], [0.0], [-1.0], [0.0]])}},
    "token_embed": {"embedding": jnp.ones((3, 2))},
  }
  tx = level_flip_monitor()
  out, state = tx.update(updates, tx.init(params), params)
  assert float(state.flip_rate) == 0.25  # 0.5 -> -0.5 flips one level of four
  assert out is updates
