import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from homeo_jax.models.moe import (
  MoEConfig,
  MoEFeedForward,
  MoETransformer,
  MoETransformerConfig,
  capacity,
  capacity_slots,
)
from tests.conftest import assert_script_passes_on_fake_devices


def config(**moe):
  return MoETransformerConfig(
    vocab_size=13, num_layers=2, num_heads=2, d_model=16, max_seq_len=16, moe=MoEConfig(**moe)
  )


def layer(**moe):
  return MoEFeedForward(config(**moe), 0, rngs=nnx.Rngs(0))


X = jax.random.normal(jax.random.key(1), (2, 16, 16))


@settings(max_examples=50, deadline=None)
@given(
  st.integers(1, 40),
  st.integers(1, 3),
  st.integers(3, 6),
  st.integers(1, 12),
  st.integers(0, 2**31 - 1),
)
@pytest.mark.slow
def test_capacity_never_exceeded_and_priority(n, k, e, cap, seed):
  k = min(k, e)
  rng = np.random.default_rng(seed)
  idx = np.stack([rng.permutation(e)[:k] for _ in range(n)])
  choice = jax.nn.one_hot(idx, e)
  position, kept = capacity_slots(choice, cap)
  per_expert = np.einsum("nke,nk->e", np.asarray(choice), np.asarray(kept))
  assert per_expert.max() <= cap
  # nothing is dropped while an expert still has room
  demand = np.asarray(choice).sum((0, 1))
  np.testing.assert_array_equal(per_expert, np.minimum(demand, cap))
  # causal priority: an expert's slots go to its tokens in token order, so a token is
  # never dropped in favour of a later one
  pos = np.asarray(position)
  for ex in range(e):
    np.testing.assert_array_equal(pos[idx == ex], np.arange(int((idx == ex).sum())))


@pytest.mark.slow
@pytest.mark.parametrize("router", ["softmax_aux", "deepseek", "spechorn"])
def test_dropless_matches_capacity_path_when_nothing_dropped(router):
  a = layer(router=router, capacity_factor=8.0)
  b = layer(router=router, dropless=True)
  ya, ta = a(X, deterministic=True, rngs=None)
  yb, tb = b(X, deterministic=True, rngs=None)
  assert float(ta["moe_drop_rate"]) == 0.0
  np.testing.assert_allclose(ya, yb, atol=1e-5)
  np.testing.assert_array_equal(ta["moe_load"], tb["moe_load"])


@pytest.mark.slow
def test_telemetry_against_numpy():
  moe = layer(router="softmax_aux", capacity_factor=8.0, top_k=2)
  y, tel = moe(X, deterministic=True, rngs=None)
  logits = np.asarray(moe.router_logits(X)).reshape(32, 8)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  top = np.argsort(-logits, axis=-1)[:, :2]
  load = np.bincount(top.ravel(), minlength=8)
  np.testing.assert_array_equal(tel["moe_load"], load)
  aux = 0.01 * 8 * np.sum(load / 64 * probs.mean(0))
  np.testing.assert_allclose(float(tel["aux_loss"]), aux, rtol=1e-5)
  entropy = -np.mean(np.sum(probs * np.log(probs + 1e-9), -1))
  np.testing.assert_allclose(float(tel["moe_router_entropy"]), entropy, rtol=1e-5)
  tokens = np.asarray(X).reshape(32, 16)
  for e in range(8):
    rows = (top == e).any(-1)
    if rows.any():
      np.testing.assert_allclose(tel["moe_mean_input"][e], tokens[rows].mean(0), atol=1e-5)


@pytest.mark.parametrize("router", ["softmax_aux", "deepseek"])
def test_router_z_loss_against_numpy(router):
  """ST-MoE's z-loss, weight · mean logsumexp², added to any router's auxiliary loss."""
  _, plain = layer(router=router, capacity_factor=8.0)(X, deterministic=True, rngs=None)
  moe = layer(router=router, capacity_factor=8.0, router_z_loss_weight=1e-3)
  _, tel = moe(X, deterministic=True, rngs=None)
  logits = np.asarray(moe.router_logits(X), np.float64).reshape(32, 8)
  top = logits.max(-1, keepdims=True)
  z = np.mean((top[:, 0] + np.log(np.exp(logits - top).sum(-1))) ** 2)
  np.testing.assert_allclose(float(tel["moe_router_z_loss"]), z, rtol=1e-5)
  aux = float(plain.get("aux_loss", 0.0))
  np.testing.assert_allclose(float(tel["aux_loss"]), aux + 1e-3 * z, rtol=1e-5)


def test_every_token_prefers_one_expert():
  moe = layer(router="softmax_aux", capacity_factor=1.0, top_k=1)
  moe.gate.kernel[...] = jnp.zeros_like(moe.gate.kernel[...]).at[:, 3].set(100.0)
  x = jnp.abs(X) + 1.0  # positive inputs: expert 3 wins for every token
  y, tel = moe(x, deterministic=True, rngs=None)
  # ceil(1.0 * 1 * 16 / 8) = 2 slots per sequence: the first two tokens of each row
  assert capacity(moe.moe, 16) == 2 and int(tel["moe_load"][3]) == 32
  np.testing.assert_allclose(float(tel["moe_drop_rate"]), 1 - 4 / 32)
  kept_rows = np.abs(np.asarray(y).reshape(32, 16)).sum(-1) > 0
  np.testing.assert_array_equal(np.flatnonzero(kept_rows), [0, 1, 16, 17])


def test_tiny_capacity_clamps_to_one_slot():
  moe = layer(router="spechorn", capacity_factor=1e-3, top_k=2)
  assert capacity(moe.moe, 16) == 1
  y, tel = moe(X, deterministic=True, rngs=None)
  assert bool(jnp.isfinite(y).all())
  assert float(tel["moe_drop_rate"]) >= 1 - 16 / 64 - 1e-6  # one slot per expert and row


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_huge_logits_route_validly(scale):
  moe = layer(router="spechorn", top_k=2)
  moe.gate.kernel[...] = moe.gate.kernel[...] * scale
  y, tel = moe(X, deterministic=True, rngs=None)
  assert bool(jnp.isfinite(y).all()) and int(tel["moe_load"].sum()) == 64


@pytest.mark.parametrize("router", ["softmax_aux", "deepseek", "spechorn"])
def test_nan_logits_of_one_token_do_not_spread(router, monkeypatch):
  moe = layer(router=router, top_k=2)
  clean = MoEFeedForward.router_logits

  def poisoned(self, x):
    return clean(self, x).at[0, 5].set(jnp.nan)

  monkeypatch.setattr(MoEFeedForward, "router_logits", poisoned)
  y, tel = moe(X, deterministic=True, rngs=None)
  assert bool(jnp.isfinite(y).all()) and bool(jnp.isfinite(tel["moe_router_entropy"]))
  assert int(tel["moe_load"].sum()) == 64  # the bad token still goes to k distinct experts


@pytest.mark.slow
def test_spechorn_has_no_auxiliary_loss():
  model = MoETransformer(config(router="spechorn"), rngs=nnx.Rngs(0))
  _, tel = model(jnp.zeros((2, 16), jnp.int32))
  assert "aux_loss" not in tel
  model = MoETransformer(config(router="softmax_aux"), rngs=nnx.Rngs(0))
  _, tel = model(jnp.zeros((2, 16), jnp.int32))
  assert float(tel["aux_loss"]) > 0


def test_controls_move_the_routing():
  moe = layer(router="spechorn", top_k=1, capacity_factor=8.0, balancer="balancer")
  zero = {"balancer": {"moe_logit_adjust": jnp.zeros((2, 8))}}
  _, before = moe(X, deterministic=True, rngs=None, controls=zero)
  busiest = int(jnp.argmax(before["moe_load"]))
  adjust = jnp.zeros((2, 8)).at[0, busiest].set(-50.0)
  _, after = moe(
    X, deterministic=True, rngs=None, controls={"balancer": {"moe_logit_adjust": adjust}}
  )
  assert int(after["moe_load"][busiest]) < int(before["moe_load"][busiest])


@pytest.mark.parametrize(
  "moe, message",
  [
    ({"top_k": 9}, "top_k must be in \\[1, num_experts=8\\], got 9"),
    ({"capacity_factor": 0.0}, "capacity_factor must be > 0, got 0.0"),
    ({"router": "hash"}, "router must be one of"),
  ],
)
def test_bad_config(moe, message):
  with pytest.raises(ValueError, match=message):
    MoETransformer(config(**moe), rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_expert_axis_shards_on_a_fake_device_mesh():
  script = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from homeo_jax.models.moe import MoEConfig, MoETransformer, MoETransformerConfig
    from homeo_jax.training.step import functional_model
    assert jax.device_count() == 4
    cfg = MoETransformerConfig(vocab_size=13, num_layers=2, num_heads=2, d_model=16,
                               max_seq_len=16, moe=MoEConfig(num_experts=8))
    apply_fn, params = functional_model(MoETransformer(cfg, rngs=nnx.Rngs(0)))
    tokens = jnp.arange(32).reshape(2, 16) % 13
    expected, _ = jax.jit(apply_fn)(params, tokens)
    mesh = Mesh(np.array(jax.devices()), ("expert",))
    def place(path, x):
      name = jax.tree_util.keystr(path)
      spec = P("expert") if ("w_up" in name or "w_down" in name) else P()
      return jax.device_put(x, NamedSharding(mesh, spec))
    sharded = jax.tree_util.tree_map_with_path(place, params)
    w = sharded["blocks"][0]["mlp"]["w_up"][...]
    assert w.sharding.spec == P("expert") and len(w.addressable_shards) == 4
    assert w.addressable_shards[0].data.shape == (2, 16, 64)
    got, _ = jax.jit(apply_fn)(sharded, tokens)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    print("ok")
  """)
  assert_script_passes_on_fake_devices(script, devices=4)
