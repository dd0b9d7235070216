"""KV-cached decoding reproduces the evaluation forward, for every model type.

Feeding a sequence token by token through ``decode_step`` must give, at every position,
the logits of one evaluation forward over the whole sequence — with capacity drops (the
slots an expert handed out earlier), the GRU gate's state and the balancer's controls.
``generate`` (greedy) must then match a sampler that recomputes the full forward.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from homeo_jax.models.decode import filter_logits, generate
from tests.models.test_causality import CASES, TOKENS, VOCAB, build

DECODABLE = sorted(CASES)  # the adaptive cases with min_alive_fraction 0 (test_causality)


def cached_logits(model, controls, tokens):
  decoder = model.decoder()
  graphdef, state = nnx.split(decoder)

  @jax.jit
  def run(tokens):
    m = nnx.merge(graphdef, state)

    def step(cache, i):
      token = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
      logits, cache, info = m.decode_step(token, cache, i, controls=controls)
      return cache, (logits, info)

    cache = m.init_cache(tokens.shape[0])
    _, (logits, info) = jax.lax.scan(step, cache, jnp.arange(tokens.shape[1]))
    return jnp.swapaxes(logits, 0, 1), {k: jnp.swapaxes(v, 0, 1) for k, v in info.items()}

  return run(tokens)


def mixed_depth(model):
  """Continue gates that vary by token, so tokens halt after 1, 2, 3 or 4 passes."""
  for i, layer in enumerate(model.layers):
    kernel = layer.gate_out.kernel[...]
    layer.gate_out.kernel[...] = jax.random.normal(jax.random.key(i), kernel.shape)
    layer.gate_out.bias[...] = jnp.ones_like(layer.gate_out.bias[...])
  return model


@pytest.mark.slow
@pytest.mark.parametrize("case", DECODABLE)
def test_cached_decoding_gives_the_evaluation_logits(case):
  model, controls = build(CASES[case])
  if CASES[case][0] == "adaptive_transformer":
    mixed_depth(model)
  adaptive = CASES[case][0] == "adaptive_transformer"
  kw = {"per_token": True} if adaptive else {}
  full, telemetry = model(TOKENS, controls=controls, deterministic=True, **kw)
  logits, info = cached_logits(model, controls, TOKENS)
  np.testing.assert_allclose(logits, full, atol=3e-5)
  if adaptive:  # each token's passes, as the forward ran them
    assert 1.5 < float(telemetry["k_exec"]) < 3.5  # tokens really exit at different depths
    assert float(telemetry["tail4"]) < 1.0
    np.testing.assert_allclose(info["passes"], telemetry["token_passes"], rtol=1e-6)
    np.testing.assert_allclose(np.mean(info["passes"]), telemetry["k_exec"], rtol=1e-6)


@pytest.mark.slow
def test_cached_decoding_drops_like_the_full_forward():
  """A router that sends every token to expert 0: capacity drops are identical."""
  model, controls = build(CASES["moe_spechorn_capacity"])
  for block in model.blocks:
    kernel = jnp.zeros_like(block.mlp.gate.kernel[...]).at[:, 0].set(50.0)
    block.mlp.gate.kernel[...] = kernel
  full, telemetry = model(TOKENS, controls=controls, deterministic=True)
  assert float(np.max(telemetry["moe_drop_rate"])) > 0.2
  np.testing.assert_allclose(cached_logits(model, controls, TOKENS)[0], full, atol=3e-5)


def greedy_by_recompute(model, controls, prompt, num_new):
  """nanoGPT's sampler: the full forward over the sequence so far, for every new token
  (one compile: a fixed-size buffer, read at the last filled position — the model is
  causal, so the padding after it changes nothing)."""
  graphdef, state = nnx.split(model)
  b, p = prompt.shape

  @jax.jit
  def next_token(tokens, i):
    logits, _ = nnx.merge(graphdef, state)(tokens, controls=controls, deterministic=True)
    return jnp.argmax(logits[:, i], -1)

  tokens = jnp.zeros((b, p + num_new), jnp.int32).at[:, :p].set(prompt)
  for i in range(p - 1, p + num_new - 1):
    tokens = tokens.at[:, i + 1].set(next_token(tokens, i))
  return np.asarray(tokens)


@pytest.mark.parametrize("case", ["transformer", "quant", "moe_deepseek_capacity"])
def test_greedy_generation_matches_recomputing_the_forward(case):
  model, controls = build(CASES[case])
  prompt = TOKENS[:, :3]
  num_new = model.cfg.max_seq_len - 3  # the whole window, no rebuild
  got = generate(model, prompt, num_new, key=jax.random.key(0), temperature=0.0, controls=controls)
  np.testing.assert_array_equal(got, greedy_by_recompute(model, controls, prompt, num_new))


@pytest.mark.slow
def test_generation_past_the_window_rebuilds_from_the_last_half():
  model, controls = build(CASES["transformer"])
  window = model.cfg.max_seq_len
  prompt = TOKENS[:, :4]
  got = np.asarray(generate(model, prompt, 2 * window, key=jax.random.key(0), temperature=0.0))
  assert got.shape == (2, 4 + 2 * window)
  np.testing.assert_array_equal(got[:, :4], prompt)
  # the first token after a full window is the greedy choice given the last half-window
  context = got[:, window - window // 2 : window]
  logits, _ = model(jnp.asarray(context), deterministic=True)
  np.testing.assert_array_equal(got[:, window], np.argmax(logits[:, -1], -1))


@pytest.mark.slow
def test_sampling_is_seeded_and_respects_top_k():
  model, _ = build(CASES["transformer"])
  prompt = TOKENS[:, :2]
  a = generate(model, prompt, 20, key=jax.random.key(3), temperature=1.0)
  b = generate(model, prompt, 20, key=jax.random.key(3), temperature=1.0)
  np.testing.assert_array_equal(a, b)
  one = generate(model, prompt, 20, key=jax.random.key(4), temperature=1.0, top_k=1)
  greedy = generate(model, prompt, 20, key=jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(one, greedy)
  logits = jnp.array([[1.0, 3.0, 2.0, 0.0]])
  np.testing.assert_allclose(filter_logits(logits, 2.0, 2), [[-np.inf, 1.5, 1.0, -np.inf]])
  assert model.cfg.vocab_size == VOCAB


@pytest.mark.parametrize(
  "kwargs, message",
  [({"temperature": -1.0}, "temperature"), ({"top_k": -2}, "top_k"), ({"num_new": -1}, "max_new")],
)
def test_bad_sampling_arguments_are_named(kwargs, message):
  model, _ = build(CASES["transformer"])
  args = {"num_new": 4, **kwargs}
  with pytest.raises(ValueError, match=message):
    generate(model, TOKENS[:, :2], args.pop("num_new"), key=jax.random.key(0), **args)
