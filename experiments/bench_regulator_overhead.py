"""Update-time overhead of each regulator over its bare inner optimizer, side by side.

    python experiments/bench_regulator_overhead.py [--preset full|cpu] [--repeats 30]

The parameter tree is the baseline LM's (``configs/shakespeare_char.py``: the nanoGPT
recipe's 10.75M parameters with ``--preset full``). Each transform's jitted ``update``
is timed alone (median after warm-up, outputs blocked on), with the loss and grad norm
passed as telemetry as the train step does. Targets: ARS < 5% over AdamW; the Thyroid
< 2% with update_every=10 (its network runs every step under jit and is selected by
``where``: the cost of a 2K-parameter convnet on 16-sample windows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from homeo_jax.regulators.ars import ars_adamw  # noqa: E402
from homeo_jax.regulators.thyroid import thyroid  # noqa: E402
from homeo_jax.regulators.update_prox import fisher_subspace_prox  # noqa: E402
from homeo_jax.training import config as config_lib  # noqa: E402
from homeo_jax.training.experiment import markdown_table  # noqa: E402
from homeo_jax.training.loop import build_model, hardware_description  # noqa: E402
from homeo_jax.training.step import functional_model  # noqa: E402


def pairs():
  """(name, regulator, its bare inner optimizer)."""
  return [
    (
      "ars_adamw (window 100)",
      ars_adamw(1e-3, b2=0.99, weight_decay=0.1),
      optax.adamw(1e-3, b2=0.99, weight_decay=0.1),
    ),
    (
      "ars_adamw, spectral detector",
      ars_adamw(1e-3, b2=0.99, weight_decay=0.1, detector="spectral"),
      optax.adamw(1e-3, b2=0.99, weight_decay=0.1),
    ),
    (
      "fisher_subspace_prox(ars_adamw), rank 8",
      fisher_subspace_prox(ars_adamw(1e-3, b2=0.99, weight_decay=0.1), rank=8),
      optax.adamw(1e-3, b2=0.99, weight_decay=0.1),
    ),
    (
      "thyroid α/λ/τ (update_every 10, untrained weights)",
      thyroid(optax.adamw, 1e-3, 0.1, weights="random", b2=0.99),
      optax.adamw(1e-3, b2=0.99, weight_decay=0.1),
    ),
  ]


def time_update(tx, params, grads, repeats):
  update = jax.jit(tx.update, donate_argnums=1)
  state = tx.init(params)
  telemetry = {"value": jnp.asarray(2.5), "grad_norm": jnp.asarray(1.0)}
  _, state = update(grads, state, params, **telemetry)  # compile
  jax.block_until_ready(state)
  times = []
  for i in range(repeats):
    telemetry["value"] = jnp.asarray(2.5 + 0.1 * (i % 7))
    start = time.perf_counter()
    updates, state = update(grads, state, params, **telemetry)
    jax.block_until_ready((updates, state))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="full", choices=["full", "cpu"])
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args()
  spec = "configs/shakespeare_char.py" + ("" if args.preset == "full" else ":cpu")
  config = config_lib.load_config(str(Path(__file__).parents[1] / spec))
  _, params = functional_model(build_model(config, vocab_size=84))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  n = sum(x.size for x in jax.tree.leaves(params))
  rows = []
  for name, regulated, bare in pairs():
    # Interleave so drift in machine load hits both alike.
    t_bare, t_reg = [], []
    for _ in range(3):
      t_bare.append(time_update(optax.with_extra_args_support(bare), params, grads, args.repeats))
      t_reg.append(time_update(regulated, params, grads, args.repeats))
    b, r = min(t_bare), min(t_reg)
    rows.append([name, f"{n:,}", f"{b:.2f}", f"{r:.2f}", f"{100 * (r / b - 1):+.1f}%"])
  print(f"hardware: {hardware_description()}")
  print(
    markdown_table(["regulator", "parameters", "bare inner ms", "regulated ms", "overhead"], rows)
  )


if __name__ == "__main__":
  main()
