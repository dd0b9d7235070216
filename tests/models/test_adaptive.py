"""Ouro-Spec model: causality, scan/while agreement, gather, gate gradients, forcing, limits."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from homeo_jax.models.adaptive import AdaptiveTransformer
from homeo_jax.models.adaptive_layer import (
  AdaptiveConfig,
  AdaptiveDecoderLayer,
  attention_features,
  safe_cosine,
)
from homeo_jax.models.decode import generate
from homeo_jax.models.losses import adaptive_lm_loss

VOCAB = 30
STRINGS = [chr(97 + i % 26) * (1 + i // 26) for i in range(VOCAB)]
CFG = AdaptiveConfig(
  vocab_size=VOCAB,
  num_layers=2,
  num_heads=2,
  d_model=16,
  d_ff=32,
  max_seq_len=32,
  char_dim=8,
  pos_dim=4,
  ffn="mlp",
  price_from="price",
)


def ctl(compute_price=0.0, force_k=0, gate_clamp=0, halt_bias=0.0):
  """The controls of a regulator named "price", as ``homeo_jax.controls`` nests them."""
  return {
    "price": {
      "compute_price": jnp.float32(compute_price),
      "force_k": jnp.int32(force_k),
      "gate_clamp": jnp.int32(gate_clamp),
      "halt_bias": jnp.float32(halt_bias),
    }
  }


def build(cfg=CFG, seed=0):
  return AdaptiveTransformer(cfg, rngs=nnx.Rngs(seed), token_strings=STRINGS)


def widen_gate(model, std=4.0, bias=0.5):
  """Spread the continue gate so tokens halt at different passes (a trained-like gate)."""
  for i, layer in enumerate(model.layers):
    key = jax.random.key(10 + i)
    layer.gate_out.kernel[...] = std * jax.random.normal(key, layer.gate_out.kernel.shape)
    layer.gate_out.bias[...] = jnp.full_like(layer.gate_out.bias[...], bias)
    # the features, not the (per-layer constant) layer embedding, decide
    layer.layer_embedding[...] = jnp.zeros_like(layer.layer_embedding[...])
    layer.gate_hidden.kernel[...] = 10.0 * layer.gate_hidden.kernel[...]


@nnx.jit(static_argnames=("deterministic", "path"))
def forward(model, tokens, controls, deterministic=True, path=None):
  return model(tokens, controls=controls, deterministic=deterministic, path=path)


TOKENS = jax.random.randint(jax.random.key(1), (3, 24), 0, VOCAB)


@pytest.mark.slow
def test_scan_and_while_paths_agree():
  model = build()
  widen_gate(model)
  logits_w, tel_w = forward(model, TOKENS, ctl(), path="while")
  logits_s, tel_s = forward(model, TOKENS, ctl(), path="scan")
  np.testing.assert_allclose(logits_w, logits_s, atol=1e-6)
  for key in ("avg_k", "k_exec", "s_fin", "p_mu"):
    np.testing.assert_allclose(tel_w[key], tel_s[key], atol=1e-6, err_msg=key)
  # the recurrence really varied per token, and the gates were not all the same
  assert 1.0 < float(tel_w["k_exec"]) < CFG.max_passes
  assert float(tel_w["p_std"]) > 0.05


@pytest.mark.slow
def test_early_exit_condition_is_shared():
  # Enough halting that the 2% rule stops the loop before Kmax in both paths.
  model = build()
  widen_gate(model, bias=-1.5)
  _, tel_w = forward(model, TOKENS, ctl(), path="while")
  _, tel_s = forward(model, TOKENS, ctl(), path="scan")
  assert float(tel_w["passes_run"]) < CFG.max_passes
  np.testing.assert_allclose(tel_w["passes_run"], tel_s["passes_run"])


@pytest.mark.slow
@pytest.mark.parametrize("path", ["scan", "while"])
def test_causal_masking_holds_through_all_passes(path):
  # min_alive_fraction=0: the 2% early exit is a batch-level decision, so exact
  # causality needs it off (documented); everything per token is causal.
  model = build(dataclasses.replace(CFG, min_alive_fraction=0.0))
  widen_gate(model, bias=3.0)
  changed = TOKENS.at[:, 15:].set((TOKENS[:, 15:] + 7) % VOCAB)
  a, tel = forward(model, TOKENS, ctl(), path=path)
  b, _ = forward(model, changed, ctl(), path=path)
  np.testing.assert_allclose(a[:, :15], b[:, :15], atol=1e-6)
  assert np.abs(np.asarray(a[:, 15:] - b[:, 15:])).max() > 1e-3
  assert float(tel["k_exec"]) > 1.2 and float(tel["passes_run"]) >= 2  # later passes ran


class TopMassGate(AdaptiveDecoderLayer):
  """p = 0.9 where the top-16 attention mass is 1 (positions < 16), else 0.05."""

  def continue_gate(self, features, bias=0.0):
    return jnp.where(features[..., 1] > 0.9999, 0.9, 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kv_per_pass", [False, True], ids=["static_kv", "kv_per_pass"])
def test_gathered_block_equals_the_full_path_and_counts_overflow(kv_per_pass):
  base = dataclasses.replace(CFG, num_layers=1, min_alive_fraction=0.0, kv_per_pass=kv_per_pass)
  x = jax.random.normal(jax.random.key(3), (2, 32, 16))
  force, clamp = jnp.int32(0), jnp.int32(0)
  outs = {}
  for capacity in (0.0, 0.5, 0.25):
    layer = TopMassGate(dataclasses.replace(base, gather_capacity=capacity), 0, rngs=nnx.Rngs(0))
    outs[capacity] = layer(x, force=force, clamp=clamp, num_passes=4, path="scan")
  full, half, quarter = outs[0.0], outs[0.5], outs[0.25]
  # 16 of 32 tokens stay alive: a block of C = 16 holds them all.
  np.testing.assert_allclose(full[0], half[0], atol=1e-5)
  np.testing.assert_allclose(full[1]["expected_k"], half[1]["expected_k"], atol=1e-6)
  assert float(half[1]["overflow"]) == 0.0
  assert float(full[1]["k_exec"]) == pytest.approx((16 * 4 + 16 * 1) / 32)
  # wasted compute: dense pays 4 passes for 2.5 executed; the block of 16 pays 1 + 3·½.
  assert float(full[1]["wasted_compute"]) == pytest.approx(1 - 2.5 / 4)
  assert float(half[1]["wasted_compute"]) == pytest.approx(0.0, abs=1e-6)
  # C = 8: half of the alive tokens are treated as halted and counted.
  assert float(quarter[1]["overflow"]) > 0.0
  assert float(quarter[1]["k_exec"]) < float(full[1]["k_exec"])


@pytest.mark.slow
@pytest.mark.parametrize("kv_per_pass", [False, True], ids=["static_kv", "kv_per_pass"])
def test_gathered_training_gradients_equal_the_dense_path(kv_per_pass):
  """Training on the gathered path: where nothing overflows, the parameter and input
  gradients are the dense path's (the scan, as in training)."""
  base = dataclasses.replace(CFG, num_layers=1, min_alive_fraction=0.0, kv_per_pass=kv_per_pass)
  x = jax.random.normal(jax.random.key(3), (2, 32, 16))
  grads = {}
  for capacity in (0.0, 0.5):
    layer = TopMassGate(dataclasses.replace(base, gather_capacity=capacity), 0, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(params, x, graphdef=graphdef, rest=rest):
      out, tel = nnx.merge(graphdef, params, rest)(
        x, force=jnp.int32(0), clamp=jnp.int32(0), num_passes=4, path="scan"
      )
      return jnp.sum(jnp.sin(out)) + tel["expected_k"]

    grads[capacity] = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  for a, b in zip(jax.tree.leaves(grads[0.0]), jax.tree.leaves(grads[0.5]), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def reference_passes(layer, x, kv_per_pass):
  """Two forced passes of ``layer`` written out in jnp: pass 2 reads keys/values of x
  (static) or of the state after pass 1 (per pass)."""
  b, t, d = x.shape
  heads = layer.cfg.num_heads

  def split(y):
    return y.reshape(b, t, heads, d // heads)

  def one_pass(h, source, k):
    q = split(layer.query(layer.attn_norm(h)))
    kv = layer.key_value(layer.attn_norm(source)).reshape(b, t, 2, heads, d // heads)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, kv[:, :, 0]) / np.sqrt(d // heads)
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
    attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), kv[:, :, 1])
    a = layer.out(attn.reshape(b, t, d))
    f, _ = layer.mlp(layer.mlp_norm(h + a), deterministic=True, rngs=None, controls=None)
    return h + layer.damping[k] * (a + f)

  h1 = one_pass(x, x, 0)
  return one_pass(h1, h1 if kv_per_pass else x, 1)


@pytest.mark.slow
def test_kv_per_pass_reads_the_state_after_each_pass():
  # a small input, so that pass 1's update moves the normalized state visibly
  x = 0.05 * jax.random.normal(jax.random.key(4), (2, 12, 16))
  outs = {}
  for kv_per_pass in (False, True):
    cfg = dataclasses.replace(CFG, num_layers=1, kv_per_pass=kv_per_pass)
    layer = AdaptiveDecoderLayer(cfg, 0, rngs=nnx.Rngs(0))
    layer.out.kernel[...] = 5.0 * layer.out.kernel[...]  # attention that moves the state
    out, _ = layer(x, force=jnp.int32(2), clamp=jnp.int32(0), num_passes=4, path="while")
    np.testing.assert_allclose(out, reference_passes(layer, x, kv_per_pass), atol=2e-5)
    outs[kv_per_pass] = out
  assert np.abs(np.asarray(outs[True] - outs[False])).max() > 1e-3  # the two really differ


@pytest.mark.slow
def test_gradients_reach_the_continue_head():
  model = build()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, controls):
    m = nnx.merge(graphdef, params, rest)
    logits, tel = m(TOKENS[:, :-1], controls=controls, deterministic=False)
    return adaptive_lm_loss(logits, TOKENS[:, 1:], tel, max_passes=CFG.max_passes)[0]

  grad = jax.jit(jax.grad(loss))
  g = grad(params, ctl(compute_price=0.05))
  gate = g["layers"][0]["gate_out"]["kernel"][...]
  assert np.all(np.isfinite(gate)) and np.abs(gate).max() > 1e-6
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
  # Forced depth overrides survival: the gate gets no gradient.
  g_forced = grad(params, ctl(compute_price=0.05, force_k=2))
  np.testing.assert_array_equal(g_forced["layers"][0]["gate_out"]["kernel"][...], 0.0)


@pytest.mark.slow
def test_forcing_and_hard_kill():
  model = build()
  for k in (1, 2, 4):
    _, tel = forward(model, TOKENS, ctl(force_k=k))
    assert float(tel["k_exec"]) == k and float(tel["avg_k"]) == k
    assert float(tel["wasted_compute"]) == 0.0
  killed = build(dataclasses.replace(CFG, hard_kill=True))
  _, tel = forward(killed, TOKENS, ctl(force_k=3))  # static config wins
  assert float(tel["k_exec"]) == 1.0 and float(tel["passes_run"]) == 1.0


class ExtremeGate(AdaptiveDecoderLayer):
  """p = 1 where the top-16 attention mass is 1 (positions < 16), else 0."""

  def continue_gate(self, features, bias=0.0):
    return jnp.where(features[..., 1] > 0.9999, 1.0, 0.0)


@pytest.mark.slow
def test_gate_clamp_control():
  cfg = dataclasses.replace(CFG, num_layers=1, min_alive_fraction=0.0)
  layer = ExtremeGate(cfg, 0, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(4), (2, 32, 16))
  run = functools.partial(layer, x, force=jnp.int32(0), num_passes=3, path="scan")
  free = run(clamp=jnp.int32(0))[1]["survival"]
  clamped = run(clamp=jnp.int32(1))[1]["survival"]
  # survival entering pass 2 is the mean gate: p ∈ {1, 0} free, {0.95, 0.01} clamped
  np.testing.assert_allclose(free[:2], [1.0, 0.5], atol=1e-6)
  np.testing.assert_allclose(clamped[:2], [1.0, (0.95 + 0.01) / 2], atol=1e-6)
  # pass 3: the p = 0.01 tokens have halted (s < 0.1); the others carry 0.95²
  np.testing.assert_allclose(clamped[2], (0.95**2 + 0.01) / 2, atol=1e-6)


@pytest.mark.slow
def test_halt_bias_control_shifts_the_gate_logit():
  """With the gate's output kernel zeroed its logit is its bias z₀ for every token, so the
  survival entering pass 2 is sigmoid(z₀ + b) exactly, and depth rises with b."""
  model = build(dataclasses.replace(CFG, min_alive_fraction=0.0, gate_bias_init=0.3))
  for layer in model.layers:
    layer.gate_out.kernel[...] = jnp.zeros_like(layer.gate_out.kernel[...])
  depths = []
  for b in (-2.0, 0.0, 1.5):
    _, tel = forward(model, TOKENS, ctl(halt_bias=b))
    np.testing.assert_allclose(tel["survival"][:, 1], 1 / (1 + np.exp(-(0.3 + b))), rtol=1e-5)
    depths.append(float(tel["avg_k"]))
  assert depths[0] < depths[1] < depths[2]


@pytest.mark.slow
def test_gate_logit_bound_gives_the_bias_authority_over_any_gate():
  """Hand-derived: a gate whose logit z₀ = 50 outruns a bias clamped at ±30 unbounded;
  with the bound B = 8 its logit is 8·tanh(50/8), and a bias of −B − 5 halts every token
  after pass 1."""
  survival, depth = {}, {}
  for bound in (0.0, 8.0):
    cfg = dataclasses.replace(CFG, min_alive_fraction=0.0, gate_bias_init=50.0)
    model = build(dataclasses.replace(cfg, gate_logit_bound=bound))
    for layer in model.layers:
      layer.gate_out.kernel[...] = jnp.zeros_like(layer.gate_out.kernel[...])
    for b in (0.0, -5.0, -13.0, -30.0):
      _, tel = forward(model, TOKENS, ctl(halt_bias=b))
      survival[bound, b], depth[bound, b] = np.asarray(tel["survival"][:, 1]), float(tel["avg_k"])
  np.testing.assert_allclose(survival[0.0, -30.0], 1 / (1 + np.exp(-20.0)), rtol=1e-6)
  assert depth[0.0, -30.0] > 2.9  # all 3 passes: the clamped bias cannot halt this gate
  logit = 8.0 * np.tanh(50.0 / 8.0)
  for b in (0.0, -5.0):
    np.testing.assert_allclose(survival[8.0, b], 1 / (1 + np.exp(-(logit + b))), rtol=1e-5)
  # p = sigmoid(logit − 13) ≈ 0.007 < halt_threshold: no token enters pass 2
  assert depth[8.0, -13.0] == 1.0


@pytest.mark.slow
def test_one_token_sequences_and_degenerate_features_are_finite():
  model = build()
  logits, tel = forward(model, TOKENS[:, :1], ctl())
  assert np.all(np.isfinite(logits)) and all(np.all(np.isfinite(v)) for v in tel.values())
  probs = jnp.ones((1, 2, 1, 1))
  ent, top, agree = attention_features(probs, jnp.ones((1, 1)), 16)
  np.testing.assert_allclose([ent, top, agree], [[[0.0]], [[1.0]], [[1.0]]], atol=1e-5)
  z = jnp.zeros((3, 4))
  assert np.all(safe_cosine(z, z) == 0.0)
  assert np.all(np.isfinite(jax.grad(lambda a: safe_cosine(a, z).sum())(z)))


def test_attention_features_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5, 5))
  n_keys = np.broadcast_to(np.arange(1, 6, dtype=np.float64), (2, 5))
  mask = np.arange(5)[None, :] < n_keys[0][:, None]  # [Q, T]
  logits = np.where(mask, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ent, top, agree = attention_features(jnp.asarray(p, jnp.float32), jnp.asarray(n_keys), 2)
  h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)
  norm = np.where(n_keys[:, None] > 1, h / np.log(np.maximum(n_keys[:, None], 2)), 0)
  np.testing.assert_allclose(ent, norm.mean(1), atol=1e-5)
  # The seed's Agree = 1 − std_over_heads(attn_weights).mean(), over each query's visible keys
  spread = p.std(1)  # [B, Q, T], float64
  want = 1 - np.array([[spread[b, q, : q + 1].mean() for q in range(5)] for b in range(2)])
  np.testing.assert_allclose(agree, want, atol=1e-5)
  np.testing.assert_allclose(top, np.sort(p, -1)[..., -2:].sum(-1).mean(1), atol=1e-5)
  _, _, agree_entropy = attention_features(
    jnp.asarray(p, jnp.float32), jnp.asarray(n_keys), 2, agreement="entropy"
  )
  np.testing.assert_allclose(agree_entropy, 1 - norm.std(1), atol=1e-5)


def test_loss_prices_depth_and_pays_the_coupon():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
  pass1 = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 7, size=(2, 4)))
  ce = float(optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean())
  ce1 = float(optax.softmax_cross_entropy_with_integer_labels(pass1, targets).mean())
  tel = {"avg_k": jnp.float32(2.5), "compute_price": jnp.float32(0.04), "pass1_logits": pass1}
  for eta in (0.0, 2.0, 100.0):
    loss, out = adaptive_lm_loss(logits, targets, tel, reward_eta=eta, max_passes=4)
    raw = 0.04 * (2.5 - 1) / 3
    coupon = eta * max(ce1 - ce, 0.0)
    assert float(out["ponder_raw"]) == pytest.approx(raw, rel=1e-5)
    assert float(out["coupon"]) == pytest.approx(coupon, rel=1e-5, abs=1e-7)
    assert float(loss) == pytest.approx(ce + max(raw - coupon, 0.0), rel=1e-5)
    assert float(out["delta_ce"]) == pytest.approx(ce1 - ce, rel=1e-5)  # signed
    assert "pass1_logits" not in out


def test_coupon_gradient_is_the_seeds_depth_supervision():
  # While the price is paid (raw > coupon > 0), the coupon −η·(CE₁ − CE) adds η·∇CE: the
  # loss's gradient is (1 + η)·∇CE; with coupon_gradient=False it is ∇CE.
  rng = np.random.default_rng(2)
  pass1 = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 7, size=(2, 4)))
  logits = pass1 + 0.3 * jax.nn.one_hot(targets, 7)  # recurrence helped: CE < CE₁
  tel = {"avg_k": jnp.float32(4.0), "compute_price": jnp.float32(1.0), "pass1_logits": pass1}
  eta = 0.5

  def loss(lg, coupon_gradient):
    out = adaptive_lm_loss(lg, targets, tel, reward_eta=eta, coupon_gradient=coupon_gradient)
    return out[0], out[1]

  _, out = loss(logits, True)
  assert 0 < float(out["coupon"]) < float(out["ponder_raw"])  # the price is being paid
  ce_grad = jax.grad(lambda lg: optax.softmax_cross_entropy_with_integer_labels(lg, targets).mean())
  seed = jax.grad(lambda lg: loss(lg, True)[0])(logits)
  frozen = jax.grad(lambda lg: loss(lg, False)[0])(logits)
  np.testing.assert_allclose(seed, (1 + eta) * ce_grad(logits), atol=1e-6)
  np.testing.assert_allclose(frozen, ce_grad(logits), atol=1e-6)


def test_generate_keeps_the_prompt_and_samples_in_vocab():
  model = build()
  out = generate(model, TOKENS[:1, :5], 40, key=jax.random.key(0), controls=ctl())
  assert out.shape == (1, 45)
  np.testing.assert_array_equal(out[:, :5], TOKENS[:1, :5])
  assert int(out.min()) >= 0 and int(out.max()) < VOCAB


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("halt_threshold", 1.0, "halt_threshold must be in \\(0, 1\\), got 1.0"),
    ("max_passes", 0, "max_passes must be >= 1, got 0"),
    ("force_k", 5, "force_k must be in \\[0, max_passes\\], got 5"),
    ("gather_capacity", 1.5, "gather_capacity must be in \\[0, 1\\], got 1.5"),
    ("gate_logit_bound", -1.0, "gate_logit_bound must be >= 0 \\(0: unbounded\\), got -1.0"),
  ],
)
def test_bad_config_values_are_named(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(CFG, **{field: value}).validate()


def test_hybrid_embedding_needs_the_vocabulary():
  with pytest.raises(ValueError, match="needs the tokenizer's token_strings"):
    AdaptiveTransformer(CFG, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_moe_feed_forward_inside_the_recurrence():
  from homeo_jax.models import MoEConfig

  cfg = dataclasses.replace(CFG, ffn="moe", moe=MoEConfig(num_experts=4, top_k=2))
  model = build(cfg)
  _, tel = forward(model, TOKENS, ctl(force_k=2))
  # the load sums over passes: two passes route 2 × 72 tokens × top-2 per layer
  np.testing.assert_allclose(np.asarray(tel["moe_load"]).sum(-1), 2 * 72 * 2)
