"""The shared head of the fake-device scripts: tiny configs, trajectories on a mesh."""

PRELUDE = """
import dataclasses, jax, numpy as np
from homeo_jax.data import load_text_data
from homeo_jax.models import AdaptiveConfig, MoEConfig, MoETransformerConfig
from homeo_jax.training.config import OptimizerConfig
from homeo_jax.training.build import setup
from homeo_jax.training.sharding import MeshConfig
from homeo_jax.data import window_batches
from tests.conftest import tiny_config

assert jax.device_count() == 8
data = load_text_data("shakespeare", tokenizer="char", max_chars=200_000)
base = tiny_config("/tmp/unused", model={"dropout": 0.0}, data={"batch_size": 8})
MESHES = [MeshConfig(1, 8, 1), MeshConfig(2, 4, 1), MeshConfig(8, 1, 1)]

def model(kind, optimizer):
  m = base.model
  fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
  if kind == "moe_transformer":
    router = {"adamw_deepseek": "deepseek"}.get(optimizer, "spechorn")
    balancer = {"adamw_spechorn": "spechorn", "adamw_deepseek": "deepseek"}.get(optimizer, "")
    moe = MoEConfig(num_experts=8, top_k=2, router=router, balancer=balancer)
    return MoETransformerConfig(**fields, moe=moe)
  if kind == "adaptive_transformer":
    price = "compute_price" if optimizer == "adamw_compute_price" else ""
    return AdaptiveConfig(**fields, char_dim=8, pos_dim=4, price_from=price, ffn="mlp")
  return m

def trajectory(kind, optimizer, kwargs, mesh, steps=2):
  cfg = dataclasses.replace(
    base, model_type=kind, model=model(kind, optimizer), mesh=mesh,
    optimizer=OptimizerConfig(name=optimizer, learning_rate=3e-3, warmup_steps=1, kwargs=kwargs),
  )
  run = setup(cfg, data)
  batches = window_batches(data.train_tokens, seq_len=32, batch_size=8, seed=0)
  state, losses = run.state, []
  for i in range(steps):
    state, metrics = run.train_step(state, run.put(batches[i]))
    losses.append(float(metrics["loss"]))
  return np.array(losses), state, run

def check(kind, optimizer, kwargs=None, tol=2e-5):
  kwargs = kwargs or {}
  ref, ref_state, _ = trajectory(kind, optimizer, kwargs, MeshConfig(1, 1, 1))
  for mesh in MESHES:
    got, state, run = trajectory(kind, optimizer, kwargs, mesh)
    np.testing.assert_allclose(got, ref, rtol=tol, err_msg=f"{kind} {optimizer} {mesh}")
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(ref_state.opt_state)):
      np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                 rtol=1e-3, atol=1e-5, err_msg=f"opt {kind} {optimizer} {mesh}")
    if mesh.fsdp > 1:  # the big leaves really are split
      leaves = jax.tree.leaves(state.params)
      big = max(leaves, key=lambda x: x.size)
      assert len(big.sharding.device_set) == 8, big.sharding
      assert big.addressable_shards[0].data.size < big.size, big.sharding
"""
