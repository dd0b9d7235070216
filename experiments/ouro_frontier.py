"""The Ouro-Spec frontier on a task where depth matters: loss per token class against
executed FLOPs and wall-clock, fixed depth k ∈ {1..Kmax} against adaptive depth.

    python -m experiments.ouro_frontier [--preset looped] [--seeds 0 1 2]
                                        [--targets 1.3 2.0 3.0]

``--preset depth`` (``configs/ouro_spec.py``): a 2-layer character model (width 128,
Kmax 4) on Shakespeare with three pointer-chasing ``chain`` lines after nearly every line
(``shakespeare_chains``, ``data/algorithmic.py``): each link is one attention lookup, so
the hops one pass can follow are bounded by the layers, and more passes can follow more.
``--preset looped``: one layer whose passes recompute keys/values (``kv_per_pass``) on
Shakespeare with three copy-at-an-offset lines after nearly every line
(``shakespeare_copies``): the copy needs an induction head, which one pass of one
attention layer cannot build and two passes can.

Arms:

* ``fixed_k``: every token runs k passes (no price, no coupon; the ablation's fixed arms);
* ``constant_k<t>`` (``--constant-price λ``): b = 0 and λ_p = λ held for the whole run,
  at the capacity of target t: the open-loop baseline of the priced loop below;
* ``adaptive_k<t>``: the compute price's ``gate_bias`` controller (κ_b 1, |b| ≤ 30: the
  setting that reached every target in ``ouro_price_target.py``) holds the soft depth
  avg_k at target t (deadband ±2%), trained and evaluated on the gathered path
  (``gather_capacity`` c(t) = min(1, 0.5·(t − 1) + 0.1): passes 2..Kmax run on the
  ⌈c·T⌉ most-alive tokens of each row, the overflow is counted). The coupon's one-pass
  forward is off: with λ_p at its floor it prices nothing and would cost a forward.

Variants, passed through ``--set`` to every arm (the fixed arms ignore both,
so their directories can be linked in from the plain run):

* ``--set model.gate_logit_bound=10``: the gate's logit is bounded to ±10, so the halting
  bias (|b| ≤ 30) keeps authority over every token;
* ``... --set optimizer.kwargs.controller.price_gain=0.03 --set optimizer.kwargs.price_max=10.0``:
  the price re-centres b (mid-ranging), so the loss, not only b, opposes surplus depth.

Validation per token class, after training, with the deployment controls: 300K held-out
characters (the last 10% of the plain Shakespeare, snippets from a generator seed never
used in training), labelled by ``algorithmic.labelled``: ``text`` (Shakespeare),
``prompt`` (snippet characters that are not answers), the answers of each kind, and the
chain answers by hop count. Per class: the loss and the passes the gate gave the position
that predicts it. FLOPs per token: ``training.flops.forward_flops_per_token`` at the
executed passes (each token's own) and at the paid passes (what the gathered block
computes: pass 1 for all, then c of a pass for each pass run). Wall-clock: the measured
training seconds per step and the deployment forward's tokens per second.

Verdicts: an adaptive arm is "below the frontier" when its loss sits more than 2 standard
errors below the fixed-k frontier interpolated (piecewise linear in FLOPs) at its paid
FLOPs; the gate "gives answers more passes" when the per-seed difference in passes,
answers − text, is positive beyond 2 standard errors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.common import (
  ROOT,
  markdown_table,
  mean_std,
  read_run,
  reexec,
  run_arms,
  write_experiment_report,
)
from experiments.ouro_spec_ablation import FIXED, not_audit, tail_mean
from homeo_jax.data import algorithmic, corpora
from homeo_jax.training.build import load_data, model_config
from homeo_jax.training.config import apply_overrides, load_config
from homeo_jax.training.flops import forward_flops_per_token

TARGETS = (1.3, 2.0, 3.0)
TOLERANCE = 0.1
HELD_OUT_SEED = 10_001
EVAL_CHARS = 300_000
EVAL_BATCH = 32
SUMMARY = ("text", "prompt", "answers")


def capacity(target: float) -> float:
  """Gathered share of each row for passes 2..Kmax at soft-depth target t."""
  return min(1.0, round(0.5 * (target - 1.0) + 0.1, 2))


def arms(
  kmax: int, targets, gather: float | None = None, constant_price: float | None = None
) -> dict[str, list[str]]:
  """The fixed-k and adaptive arms; ``gather`` fixes every adaptive arm's capacity
  (default: ``capacity(target)``); ``constant_price`` adds, per target, an arm
  ``constant_k<t>`` that holds b = 0 and λ_p at that price (the open-loop baseline of the
  priced loop, at the target's capacity)."""
  fixed = {f"fixed_{k}": [*FIXED, f"model.force_k={k}"] for k in range(1, kmax + 1)}

  def shared(t):
    return [
      "optimizer.kwargs.controller.kind=gate_bias",
      f"optimizer.kwargs.target_k={t}",
      "model.coupon=False",
      f"model.gather_capacity={capacity(t) if gather is None else gather}",
    ]

  adaptive = {
    f"adaptive_k{t:g}": [
      *shared(t),
      "optimizer.kwargs.deadband.band=(0.98, 1.02)",
      "optimizer.kwargs.controller.bias_gain=1.0",  # gate_bias_fast of ouro_price_target.py
      "optimizer.kwargs.controller.bias_max=30.0",
    ]
    for t in targets
  }
  constant = {
    f"constant_k{t:g}": [
      *shared(t),
      "optimizer.kwargs.controller.bias_gain=0.0",
      "optimizer.kwargs.controller.price_gain=0.0",
      f"optimizer.kwargs.fixed_price={constant_price}",
    ]
    for t in (targets if constant_price is not None else ())
  }
  return fixed | adaptive | constant


def held_out(tokenizer, corpus: str, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping windows ``[N, T + 1]`` of the labelled held-out text (generated as
  ``corpus`` is) and the class index (into ``algorithmic.TOKEN_CLASSES``) of each
  window's T targets."""
  plain = corpora.shakespeare_text()
  text, classes = algorithmic.labelled(
    plain[int(0.9 * len(plain)) :][:EVAL_CHARS],
    **algorithmic.GENERATED[corpus],
    seed=HELD_OUT_SEED,
  )
  # characters the training slice never showed (a "/" in the tail) read as spaces
  vocab = set(tokenizer.token_strings)
  text = "".join(c if c in vocab else " " for c in text)
  tokens = np.asarray(tokenizer.encode(text))
  if len(tokens) != len(classes):
    raise ValueError("the depth task's held-out set needs a character tokenizer")
  index = np.asarray([algorithmic.TOKEN_CLASSES.index(c) for c in classes])
  n = (len(tokens) - 1) // seq_len
  n -= n % EVAL_BATCH
  starts = np.arange(n) * seq_len
  windows = np.stack([tokens[s : s + seq_len + 1] for s in starts])
  targets = np.stack([index[s + 1 : s + seq_len + 1] for s in starts])
  return windows, targets


def evaluate_by_class(run_dir: Path, windows: np.ndarray, targets: np.ndarray) -> dict:
  """Per-class loss and passes of a trained run under its deployment controls, the
  deployment forward's tokens/s, and the passes the gathered block paid per layer."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from homeo_jax.training.trained import load_run

  run = load_run(run_dir)
  graphdef, state = nnx.split(run.model)

  @jax.jit
  def forward(batch):
    model = nnx.merge(graphdef, state)
    logits, tel = model(batch[:, :-1], controls=run.controls, deterministic=True, per_token=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])
    runs = jnp.stack([tel[f"layer{i}/passes_run"] for i in range(run.config.model.num_layers)])
    return ce, tel["token_passes"], runs

  batches = windows.reshape(-1, EVAL_BATCH, windows.shape[1])
  jax.block_until_ready(forward(batches[0]))  # compile outside the timing
  ce, passes, runs = [], [], []
  start = time.perf_counter()
  for batch in batches:
    c, p, r = jax.device_get(forward(batch))
    ce.append(c)
    passes.append(p)
    runs.append(r)
  seconds = time.perf_counter() - start
  ce, passes = np.concatenate(ce).ravel(), np.concatenate(passes).ravel()
  labels = targets.ravel()
  names = algorithmic.TOKEN_CLASSES
  out = {"loss/all": float(ce.mean()), "passes/all": float(passes.mean())}
  groups = {name: labels == i for i, name in enumerate(names)}
  groups["answers"] = np.isin(labels, [i for i, n in enumerate(names) if n.startswith("answer")])
  for name, mask in groups.items():
    out[f"loss/{name}"] = float(ce[mask].mean()) if mask.any() else float("nan")
    out[f"passes/{name}"] = float(passes[mask].mean()) if mask.any() else float("nan")
    out[f"count/{name}"] = int(mask.sum())
  out["eval_tokens_per_second"] = ce.size / seconds
  out["passes_run"] = np.mean(np.stack(runs), axis=0).tolist()  # per layer
  return out


def standard_error(values) -> float:
  """s.e. of the mean over seeds (NaN for one seed)."""
  return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def frontier_at(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
  """The fixed-k frontier (piecewise linear through its points, sorted by x) at x."""
  order = np.argsort(xs)
  return float(np.interp(x, xs[order], ys[order]))


def main() -> None:
  reexec("experiments.ouro_frontier")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
  parser.add_argument("--arms", nargs="*", help="run only these arms")
  parser.add_argument("--capacity", type=float, help="gathered share for every adaptive arm")
  parser.add_argument(
    "--constant-price", type=float, help="add constant_k<t> arms: b = 0, λ_p pinned here"
  )
  parser.add_argument("--preset", default="depth", help="configs/ouro_spec.py preset")
  parser.add_argument("--out", help="default runs/ouro_frontier_<preset>")
  parser.add_argument("--steps", type=int, help="train this many steps (a smoke test)")
  parser.add_argument("--set", action="append", default=[], help="override the base config")
  args = parser.parse_args()
  base = load_config(f"{ROOT}/configs/ouro_spec.py:{args.preset}")
  steps = [f"train.{k}={args.steps}" for k in ("steps", "eval_every", "checkpoint_every")]
  base = apply_overrides(base, [*(steps if args.steps else []), *args.set])
  data = load_data(base)
  kmax, seq = base.model.max_passes, base.data.seq_len
  arm_set = arms(kmax, args.targets, args.capacity, args.constant_price)
  if args.arms:
    arm_set = {a: arm_set[a] for a in args.arms}
  out = Path(args.out or f"runs/ouro_frontier_{args.preset}")
  runs = run_arms(base, arm_set, args.seeds, out, data=data)
  model_cfg = model_config(base, data.vocab_size)  # the shape every arm shares
  windows, targets = held_out(data.tokenizer, base.data.corpus, seq)

  results: dict[str, list[dict]] = {}
  for arm, dirs in runs.items():
    results[arm] = []
    for run_dir in dirs:
      cache = run_dir / "eval_by_class.json"
      if not cache.exists():
        cache.write_text(json.dumps(evaluate_by_class(run_dir, windows, targets)))
      records, stats = read_run(run_dir)
      r = json.loads(cache.read_text())
      c = json.loads((run_dir / "config.json").read_text())["model"]["gather_capacity"] or 1.0
      executed = [r["passes/all"]] * model_cfg.num_layers
      paid = [1 + (k - 1) * c for k in r["passes_run"]]
      r.update(
        flops_executed=forward_flops_per_token(model_cfg, seq, executed),
        flops_paid=forward_flops_per_token(model_cfg, seq, paid),
        seconds_per_step=stats.get("seconds_per_step", float("nan")),
        avg_k=tail_mean(records, "telemetry/avg_k", where=not_audit),
        k_exec=tail_mean(records, "telemetry/k_exec", where=not_audit),
        overflow=tail_mean(records, "telemetry/overflow", where=not_audit),
      )
      results[arm].append(r)

  def col(arm, key):
    return [r[key] for r in results[arm]]

  # the answer classes this corpus has (the chain corpus: one per hop count)
  first = next(iter(results.values()))[0]
  answer_classes = [
    n for n in algorithmic.TOKEN_CLASSES if n.startswith("answer") and first[f"count/{n}"] > 0
  ]
  fixed = [a for a in results if a.startswith("fixed")]
  front_x = np.array([np.mean(col(a, "flops_paid")) for a in fixed])
  rows, verdicts = [], []
  # Does depth matter? Each fixed-k arm against one pass, on the answers (seeds paired).
  for arm in fixed[1:] if fixed and fixed[0] == "fixed_1" else []:
    for key in ("answers", *answer_classes):
      pairs = zip(col(arm, f"loss/{key}"), col("fixed_1", f"loss/{key}"), strict=True)
      gaps = [a - b for a, b in pairs]
      se = standard_error(gaps)
      verdicts.append(
        f"{arm} − fixed_1, {key} loss: {np.mean(gaps):+.3f} ± {se:.3f} (s.e., seeds paired)"
        f"{': depth helps' if np.mean(gaps) < -2 * se else ''}"
      )
  for arm in results:
    target = float(arm.split("_k")[1]) if arm.startswith(("adaptive", "constant")) else None
    err = [abs(k - target) for k in col(arm, "avg_k")] if target else None
    rows.append(
      [
        arm,
        mean_std(col(arm, "passes/all"), 2),
        mean_std([f / 1e6 for f in col(arm, "flops_executed")], 3),
        mean_std([f / 1e6 for f in col(arm, "flops_paid")], 3),
        mean_std([1e3 * s for s in col(arm, "seconds_per_step")], 0),
        mean_std(col(arm, "eval_tokens_per_second"), 0),
        mean_std(col(arm, "loss/all"), 4),
        *(mean_std(col(arm, f"loss/{k}"), 3) for k in SUMMARY),
        *(mean_std(col(arm, f"loss/{k}"), 3) for k in answer_classes),
        mean_std(col(arm, "passes/text"), 2),
        mean_std(col(arm, "passes/answers"), 2),
        f"{mean_std(col(arm, 'avg_k'), 3)} ({sum(e <= TOLERANCE for e in err)}/{len(err)})"
        if target
        else "—",
        mean_std(col(arm, "overflow"), 3) if target else "—",
      ]
    )
    if target:
      for key in ("all", "answers", "text") if fixed else ():  # no fixed arms: no frontier
        ys = np.array([np.mean(col(a, f"loss/{key}")) for a in fixed])
        gaps = [r[f"loss/{key}"] - frontier_at(r["flops_paid"], front_x, ys) for r in results[arm]]
        se = standard_error(gaps)
        side = "below" if np.mean(gaps) < -2 * se else "above" if np.mean(gaps) > 2 * se else "on"
        verdicts.append(
          f"{arm}, {key} loss: {np.mean(gaps):+.4f} ± {se:.4f} (s.e.) vs the fixed-k frontier "
          f"at its paid FLOPs: {side} the frontier"
        )
      diff = [r["passes/answers"] - r["passes/text"] for r in results[arm]]
      se = standard_error(diff)
      more = "yes" if np.mean(diff) > 2 * se else "no"
      verdicts.append(
        f"{arm}: passes on answers − on text = {np.mean(diff):+.3f} ± {se:.3f} (s.e.): "
        f"answers get more passes: {more}"
      )
  headers = [
    "arm",
    "executed passes/token",
    "fwd MFLOPs/token (executed)",
    "fwd MFLOPs/token (paid)",
    "train ms/step",
    "eval tok/s",
    "val loss, all",
    *(f"loss, {k}" for k in SUMMARY),
    *(f"loss, {k.removeprefix('answer_')}" for k in answer_classes),
    "passes on text",
    "passes on answers",
    f"avg_k last ¼ (seeds within {TOLERANCE})",
    "overflow",
  ]
  table = markdown_table(headers, rows)
  print(table)
  print("\n".join(verdicts))

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for arm in results:
    style = dict(marker="o" if arm.startswith("fixed") else "s", label=arm)
    for ax, key, x in (
      (axes[0], "loss/all", "flops_paid"),
      (axes[1], "loss/answers", "flops_paid"),
      (axes[2], "loss/all", "seconds_per_step"),
    ):
      xs, ys = col(arm, x), col(arm, key)
      scale = 1e6 if x.startswith("flops") else 1e-3
      ax.errorbar(
        np.mean(xs) / scale, np.mean(ys), xerr=np.std(xs) / scale, yerr=np.std(ys), **style
      )
  axes[0].set(xlabel="fwd MFLOPs/token (paid)", ylabel="val loss, all tokens")
  axes[1].set(xlabel="fwd MFLOPs/token (paid)", ylabel="val loss, answer tokens")
  axes[2].set(xlabel="train ms/step", ylabel="val loss, all tokens")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "frontier.png", dpi=110)
  write_experiment_report(
    out,
    "Ouro-Spec frontier on the depth task",
    [
      f"seeds {args.seeds}; configs/ouro_spec.py:{args.preset}: {base.train.steps} steps of "
      f"{base.data.batch_size}x{seq} characters, {base.model.num_layers} layers x "
      f"{base.model.d_model}, Kmax {kmax}",
      # the variant flags, so a report says which of the README's variants it measured
      f"overrides {args.set or 'none'}; capacity {args.capacity or 'c(t)'}; "
      f"constant price {args.constant_price}",
      f"validation: {windows.size:,} held-out characters, per token class; mean ± std over "
      "seeds; avg_k over the non-audit steps of training's last quarter",
      *verdicts,
    ],
    table,
    "frontier.png",
  )


if __name__ == "__main__":
  main()
