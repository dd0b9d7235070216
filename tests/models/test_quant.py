import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from homeo_jax.cores.quantize import absmean_scale, hard_levels, quantize, soft_levels
from homeo_jax.models.quant import QuantTransformer, QuantTransformerConfig

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


@pytest.mark.slow
def test_straight_through_passes_gradients():
  g = jax.grad(lambda w: jnp.sum(quantize(w, jnp.asarray(1e-4)) * 3.0))(W)
  assert float(jnp.abs(g).min()) > 0  # hard rounding alone would give zeros
  true = jax.grad(lambda w: jnp.sum(quantize(w, jnp.asarray(1e-4), straight_through=False)))(W)
  assert float(jnp.abs(true).mean()) < float(jnp.abs(g).mean())


@pytest.mark.slow
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
  with pytest.raises(ValueError, match="model.scale must be one of .* got 'row'"):
    QuantTransformer(QuantTransformerConfig(vocab_size=5, scale="row"), rngs=nnx.Rngs(0))


def test_per_tensor_scale_against_float64():
  # BitNet b1.58's absmean over the whole matrix: one γ, so one outlier moves every level.
  x = np.asarray(W, np.float64)
  gamma = np.abs(x).mean()
  expected = np.clip(np.floor(x / gamma) + 0.5, -1.5, 1.5) * gamma
  np.testing.assert_allclose(quantize(W, None, scale="tensor"), expected, atol=1e-5)
  assert absmean_scale(W, "tensor").shape == (1, 1) and absmean_scale(W).shape == (1, 8)


@pytest.mark.slow
def test_model_without_straight_through_differentiates_the_staircase():
  """straight_through=False: the gradient is the soft forward's true slope (a central
  difference along a random direction agrees); the STE's is not."""
  tokens = jnp.arange(8)[None] % 11

  def slopes(straight_through):
    cfg = QuantTransformerConfig(
      vocab_size=11, num_layers=1, num_heads=2, d_model=16, max_seq_len=8,
      base_temperature=0.3, straight_through=straight_through,
    )  # fmt: skip
    graphdef, params = nnx.split(QuantTransformer(cfg, rngs=nnx.Rngs(0)))

    def loss(kernel):
      p = jax.tree.map(lambda x: x, params)
      p["blocks"][0]["mlp"]["up"]["kernel"] = nnx.Param(kernel)
      return jnp.sum(nnx.merge(graphdef, p)(tokens, deterministic=False)[0] ** 2)

    kernel = params["blocks"][0]["mlp"]["up"]["kernel"][...]
    direction = jax.random.normal(jax.random.key(1), kernel.shape)
    eps = 1e-3
    central = (loss(kernel + eps * direction) - loss(kernel - eps * direction)) / (2 * eps)
    return float(central), float(jnp.vdot(jax.grad(loss)(kernel), direction))

  central, true = slopes(False)
  assert true == pytest.approx(central, rel=0.05)
  central_ste, ste = slopes(True)
  assert central_ste == pytest.approx(central, rel=1e-6)  # the same forward
  assert abs(ste - central) > 0.2 * abs(central)
