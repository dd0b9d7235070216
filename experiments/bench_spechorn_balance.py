"""Do SpecHorn's balancers act when Sinkhorn converges? A closed-loop routing simulation.

    python -m experiments.bench_spechorn_balance [--steps 300] [--seeds 0 1 2]

A fixed, skewed router (token logits = N(0, 1) + a per-expert preference drawn once, as a
trained router that favours a few experts) routes batches of 1,024 tokens top-2 over 8
experts through the real MoE layer's selection (``MoEFeedForward.select``: logits + the
balancer's control, per token) and its Sinkhorn telemetry (``sinkhorn_dual``); the real
``spechorn_balancer`` / ``deepseek_balancer`` read that telemetry and publish the next
step's control. Reported over the last third of the steps, on the hard top-k loads: load
CV and MaxVio (max/mean − 1), mean ± std over seeds. Arms: Sinkhorn iterations 4 / 16 / 64,
each with stages 2–4 (load bias, capacity penalty; orthogonality needs routed inputs and
is off) and Sinkhorn duals, with the duals alone, and with stages 2–4 alone; DeepSeek's
bias at u = 1e-3 and 1e-2; and no balancer.

In the founding design the router took top-k of Sinkhorn's *plan*, for which a per-expert
shift of the logits is an exact invariance once Sinkhorn converges (the balancers acted
only through truncation). Here routing is per token and causal, so every stage moves the
hard loads directly; this script measures how much each contributes.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax
from flax import nnx

from experiments.common import markdown_table, mean_std, write_results
from homeo_jax import controls as read_controls
from homeo_jax.models import MoEConfig, MoETransformerConfig
from homeo_jax.models.moe import MoEFeedForward
from homeo_jax.regulators.load_balance import (
  Stages,
  deepseek_balancer,
  load_stats,
  spechorn_balancer,
)
from homeo_jax.training.build import hardware_description

EXPERTS, TOP_K, TOKENS, SKEW = 8, 2, 1024, 1.5


def layer_for(router: str, iterations: int) -> MoEFeedForward:
  moe = MoEConfig(
    num_experts=EXPERTS,
    top_k=TOP_K,
    router=router,
    balancer="balancer",
    sinkhorn_iter=iterations,
  )
  cfg = MoETransformerConfig(vocab_size=1, num_layers=1, num_heads=1, d_model=8, moe=moe)
  return MoEFeedForward(cfg, 0, rngs=nnx.Rngs(0))


def simulate(arm: dict, steps: int, seed: int) -> tuple[float, float, float]:
  """Mean hard-load CV and MaxVio per batch over the last third of ``steps``, and the
  global MaxVio of the loads summed over that third (Loss-Free Balancing's MaxVio_global:
  per-batch sampling noise averages out, a standing imbalance does not)."""
  layer = layer_for(arm["router"], arm.get("iterations", 4))
  tx = arm["balancer"]()
  state = tx.init({})
  preference = SKEW * jax.random.normal(jax.random.key(1000 + seed), (EXPERTS,))
  sinkhorn = arm["router"] == "spechorn" and arm.get("sinkhorn", True)

  @jax.jit
  def step(state, key):
    logits = jax.random.normal(key, (TOKENS, EXPERTS)) + preference
    scores = layer.select(logits, read_controls(state))
    choice = jax.nn.one_hot(jax.lax.top_k(scores, TOP_K)[1], EXPERTS).sum(1)  # [N, E]
    load = choice.sum(0)[None]  # [1, E]
    telemetry = {"moe_load": load}
    if sinkhorn:
      telemetry["moe_sinkhorn_dual"] = layer.sinkhorn_dual(scores)[None]
    _, state = tx.update({}, state, None, **telemetry)
    _, cv, max_vio = load_stats(load)
    return state, (cv, max_vio, load[0])

  keys = jax.random.split(jax.random.key(seed), steps)
  cvs, vios, loads = [], [], []
  for key in keys:
    state, (cv, vio, load) = step(state, key)
    cvs.append(float(cv))
    vios.append(float(vio))
    loads.append(np.asarray(load))
  tail = slice(2 * steps // 3, None)
  total = np.sum(loads[tail], axis=0)
  global_vio = float(total.max() / total.mean() - 1)
  return float(np.mean(cvs[tail])), float(np.mean(vios[tail])), global_vio


def arms() -> dict[str, dict]:
  def horn(stages: bool, sinkhorn: bool, mode: str = "shift"):
    scales = {} if stages else {"bias_scale": 0.0, "cap_penalty_scale": 0.0}
    return lambda: spechorn_balancer(
      1,
      EXPERTS,
      8,
      stages=Stages(mode=mode, **scales),
      scheduler=None,
      spectral=None,
      sinkhorn_rate=0.5 if sinkhorn else None,
      name="balancer",
    )

  out: dict[str, dict] = {"no balancer": {"router": "softmax_aux", "balancer": _identity}}
  for u in (1e-3, 1e-2):
    out[f"DeepSeek bias, u = {u:g}"] = {
      "router": "deepseek",
      "balancer": lambda u=u: deepseek_balancer(1, EXPERTS, update_rate=u, name="balancer"),
    }
  out["SpecHorn: seed's gains (bias 8, capacity 15) + Sinkhorn duals"] = {
    "router": "spechorn",
    "balancer": lambda: spechorn_balancer(
      1,
      EXPERTS,
      8,
      stages=Stages(bias_scale=8.0, cap_penalty_scale=15.0),
      scheduler=None,
      spectral=None,
      name="balancer",
    ),
  }
  for iterations in (4, 16, 64):
    for name, stages, sinkhorn, mode in (
      ("stages 2-4 + Sinkhorn duals", True, True, "shift"),
      ("stages 2-4 integrated with the duals", True, True, "integral"),
      ("Sinkhorn duals only", False, True, "shift"),
      ("stages 2-4 only", True, False, "shift"),
      ("stages 2-4 only, integrated", True, False, "integral"),
    ):
      if not sinkhorn and iterations != 4:
        continue  # iterations do not matter without Sinkhorn
      label = f"SpecHorn: {name}" + (f", {iterations} iterations" if sinkhorn else "")
      out[label] = {
        "router": "spechorn",
        "iterations": iterations,
        "sinkhorn": sinkhorn,
        "balancer": horn(stages, sinkhorn, mode),
      }
  return out


def _identity():
  return optax.with_extra_args_support(optax.identity())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  args = parser.parse_args()
  rows = []
  for label, arm in arms().items():
    results = np.array([simulate(arm, args.steps, s) for s in args.seeds])
    rows.append([label, *(mean_std(list(results[:, i]), 3) for i in range(3))])
    print(rows[-1], flush=True)
  setting = (
    f"{args.steps} steps, seeds {args.seeds}, {TOKENS} tokens x top-{TOP_K} of {EXPERTS} "
    f"experts, preference std {SKEW}; mean ± std over seeds"
  )
  print(f"\n{hardware_description()}; {setting}\n")
  header = ["arm", "hard-load CV (last third)", "MaxVio per batch", "MaxVio global (last third)"]
  table = markdown_table(header, rows)
  print(table)
  title = "Do the balancers act? A closed-loop simulation"
  write_results("bench_spechorn_balance", title, table, [setting])


if __name__ == "__main__":
  main()
