import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from homeo_jax.models import Transformer, TransformerConfig
from homeo_jax.training.step import functional_model

CFG = TransformerConfig(vocab_size=37, num_layers=2, num_heads=4, d_model=32, max_seq_len=16)


@pytest.fixture(scope="module")
def model_fn():
  apply_fn, params = functional_model(Transformer(CFG, rngs=nnx.Rngs(0)))
  return jax.jit(apply_fn, static_argnames="deterministic"), params


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_and_dtypes(dtype):
  cfg = TransformerConfig(**{**CFG.__dict__, "dtype": dtype})
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  tokens = jnp.zeros((3, 16), jnp.int32)
  logits, telemetry = model(tokens)
  assert logits.shape == (3, 16, 37) and logits.dtype == jnp.float32
  assert telemetry["hidden_rms"].shape == ()
  params = nnx.state(model, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  if dtype == "bfloat16":
    assert model.blocks[0].attn.qkv(jnp.ones((1, 32))).dtype == jnp.bfloat16


def test_causal_masking(model_fn):
  apply_fn, params = model_fn
  rng = np.random.default_rng(0)
  a = rng.integers(0, 37, (2, 16))
  b = a.copy()
  b[:, 9:] = rng.integers(0, 37, (2, 7))  # change the future only
  la, _ = apply_fn(params, jnp.asarray(a))
  lb, _ = apply_fn(params, jnp.asarray(b))
  np.testing.assert_allclose(la[:, :9], lb[:, :9], atol=1e-6)  # past logits unchanged
  assert np.abs(np.asarray(la[:, 9:] - lb[:, 9:])).max() > 1e-3  # the future does change


@pytest.mark.slow
def test_dropout_is_active_only_when_training(model_fn):
  model = Transformer(TransformerConfig(**{**CFG.__dict__, "dropout": 0.5}), rngs=nnx.Rngs(0))
  tokens = jnp.arange(16)[None] % 37
  eval_a, _ = model(tokens, deterministic=True)
  eval_b, _ = model(tokens, deterministic=True)
  train_a, _ = model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=1))
  train_b, _ = model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=2))
  np.testing.assert_array_equal(eval_a, eval_b)
  assert np.abs(np.asarray(train_a - train_b)).max() > 1e-3


@pytest.mark.slow
def test_overfits_tiny_batch(model_fn):
  apply_fn, params = model_fn
  batch = jnp.asarray(np.random.default_rng(1).integers(0, 37, (4, 17)))
  tx = optax.adam(3e-3)

  def loss_fn(p):
    logits, _ = apply_fn(p, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  @jax.jit
  def step(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), loss

  _, losses = jax.lax.scan(step, (params, tx.init(params)), length=150)
  assert losses[0] > 3.4  # ~log(37) at init
  assert losses[-1] < 0.3 * losses[0]


def test_sequence_longer_than_positions():
  model = Transformer(CFG, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_seq_len=16"):
    model(jnp.zeros((1, 17), jnp.int32))


def test_bad_model_config():
  with pytest.raises(ValueError, match="d_model=30 is not divisible by model.num_heads=4"):
    Transformer(TransformerConfig(vocab_size=5, d_model=30, num_heads=4), rngs=nnx.Rngs(0))
