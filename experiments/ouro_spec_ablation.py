"""Does adaptive depth buy compute? Fixed 1 / 2 / Kmax passes vs the priced adaptive LM.

    python -m experiments.ouro_spec_ablation [--scale tiny|seed] [--seeds 0 1 2]

Arms (identical but for the depth policy): ``fixed_1`` (hard_kill), ``fixed_2``
(force_k=2), ``fixed_kmax`` (force_k=Kmax) with plain AdamW; ``adaptive`` with AdamW +
the compute price (dual ascent toward TARGET_K, deadband, coupon, audits). Reports, per
arm over seeds: validation loss and perplexity, executed passes per token and soft
depth (training telemetry, mean over the last quarter of the run), λ_p there and
|avg_k − TARGET_K|, the sign of ΔCE, measured tokens/s, and forward FLOPs per token
twice: for the passes each token executed (what a gathered implementation pays) and for
the passes the dense path actually ran. Writes runs/ouro_spec_<scale>/report.md.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.common import (
  experiment_setup,
  markdown_table,
  mean_curve,
  mean_std,
  read_run,
  run_arms,
  verdict,
  write_experiment_report,
)
from homeo_jax.training.build import load_data, model_config
from homeo_jax.training.flops import forward_flops_per_token

FIXED = [
  "optimizer.name=adamw",
  "optimizer.kwargs={}",
  "model.coupon=False",
  "model.price_from=",
]


def arms(max_passes: int) -> dict[str, list[str]]:
  return {
    "fixed_1": [*FIXED, "model.hard_kill=True"],
    "fixed_2": [*FIXED, "model.force_k=2"],
    "fixed_kmax": [*FIXED, f"model.force_k={max_passes}"],
    "adaptive": [],
    # The coupon pays for depth whenever ΔCE > raw/η: this arm prices depth without it.
    "adaptive_no_coupon": ["model.reward_eta=0.0"],
  }


def tail_mean(records: list[dict], key: str, fraction: float = 0.25, where=None) -> float:
  """Mean of ``key`` over the last ``fraction`` of the logged training steps."""
  rows = [r for r in records if key in r and (where is None or where(r))]
  if not rows:
    return float("nan")
  last = rows[-1]["step"]
  cut = last * (1 - fraction)
  return float(np.mean([r[key] for r in rows if r["step"] >= cut]))


def not_audit(r: dict) -> bool:
  return r.get("telemetry/forced_k", 0.0) == 0.0


def main() -> None:
  args, base, out = experiment_setup(
    __doc__.splitlines()[0], "ouro_spec.py", ("tiny", "seed"), "ouro_spec"
  )
  data = load_data(base)
  cfg = model_config(base, data.vocab_size)
  semantic_dim = cfg.char_dim * cfg.pos_dim if cfg.embedding == "hybrid_fourier" else 0
  target_k = base.optimizer.kwargs.get("target_k", 1.30)
  runs = run_arms(base, arms(cfg.max_passes), args.seeds, out, data=data)
  results = {arm: [read_run(d) for d in dirs] for arm, dirs in runs.items()}
  final = {arm: [s["val_loss"] for _, s in rs] for arm, rs in results.items()}
  seq = base.data.seq_len

  rows, flops_exec = [], {}
  for arm, rs in results.items():
    adaptive = arm.startswith("adaptive")
    where = not_audit if adaptive else None  # fixed arms force their depth every step

    def layer_tail(records, key, where=where):
      return [
        tail_mean(records, f"telemetry/layer{i}/{key}", where=where) for i in range(cfg.num_layers)
      ]

    ppl = [float(np.exp(v)) for v in final[arm]]
    exec_k = [tail_mean(r, "telemetry/k_exec", where=where) for r, _ in rs]
    soft_k = [tail_mean(r, "telemetry/avg_k", where=where) for r, _ in rs]
    price = [tail_mean(r, "regulators/compute_price/price") for r, _ in rs]
    err = [abs(k - target_k) for k in soft_k]
    dce = [tail_mean(r, "telemetry/delta_ce", where=where) for r, _ in rs]
    f_exec = [
      forward_flops_per_token(cfg, seq, layer_tail(r, "k_exec"), semantic_dim) for r, _ in rs
    ]
    f_run = [
      forward_flops_per_token(cfg, seq, layer_tail(r, "passes_run"), semantic_dim) for r, _ in rs
    ]
    flops_exec[arm] = f_exec
    rows.append(
      [
        arm,
        mean_std(final[arm]),
        mean_std(ppl, 2),
        mean_std(exec_k, 3),
        mean_std(soft_k, 3),
        mean_std(price, 4) if adaptive else "—",
        mean_std(err, 3) if adaptive else "—",
        mean_std(dce, 4) if adaptive else "—",
        mean_std([s["tokens_per_second"] for _, s in rs], 0),
        mean_std([f / 1e6 for f in f_exec], 3),
        mean_std([f / 1e6 for f in f_run], 3),
        "—" if arm == "fixed_kmax" else verdict(final[arm], final["fixed_kmax"]),
      ]
    )
  table = markdown_table(
    [
      "arm",
      "final val loss",
      "val perplexity",
      "executed passes/token",
      "soft depth avg_k",
      "λ_p (last ¼)",
      "abs(avg_k − target)",
      "ΔCE (last ¼)",
      "tokens/s",
      "fwd MFLOPs/token (executed)",
      "fwd MFLOPs/token (dense path)",
      "vs fixed_kmax (val)",
    ],
    rows,
  )
  kmax_flops = np.mean(flops_exec["fixed_kmax"])
  kmax_ppl = np.mean([np.exp(v) for v in final["fixed_kmax"]])
  compute_saved = 100 * (1 - np.mean(flops_exec["adaptive"]) / kmax_flops)
  ppl_change = 100 * (np.mean([np.exp(v) for v in final["adaptive"]]) / kmax_ppl - 1)
  claim = (
    f"adaptive vs fixed_kmax: executed compute {compute_saved:.1f}% less, perplexity "
    f"{ppl_change:+.1f}% (seed claim: ~84% less compute for ~3% worse perplexity, "
    f"k → {target_k})"
  )
  print(table)
  print(claim)

  fig, axes = plt.subplots(1, 4, figsize=(21, 4))
  for i, (arm, dirs) in enumerate(runs.items()):
    color = f"C{i}"
    steps, mean, std = mean_curve(dirs, "val/loss")
    axes[0].plot(steps, mean, marker="o", ms=3, label=arm, color=color)
    axes[0].fill_between(steps, mean - std, mean + std, alpha=0.15, color=color)
  for arm, color in (("adaptive", "C3"), ("adaptive_no_coupon", "C4")):
    for records, _ in results[arm]:
      ks = [
        (r["step"], r["telemetry/avg_k"], r["telemetry/k_exec"])
        for r in records
        if "telemetry/avg_k" in r
      ]
      s, k, e = zip(*ks, strict=True)
      axes[1].plot(s, k, color=color, lw=1)
      axes[1].plot(s, e, color=color, lw=1, ls=":")
      pr = [
        (r["step"], r["regulators/compute_price/price"])
        for r in records
        if "regulators/compute_price/price" in r
      ]
      axes[2].plot(*zip(*pr, strict=True), lw=1, color=color)
  axes[1].axhline(target_k, color="k", ls="--", label=f"TARGET_K {target_k}")
  axes[0].set(xlabel="step", ylabel="validation loss", title="validation loss (mean ± std)")
  axes[1].set(xlabel="step", ylabel="passes", title="soft depth (solid), executed (dotted)")
  axes[2].set(
    xlabel="step", ylabel="λ_p", title="compute price λ_p per seed (red coupon, purple none)"
  )
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  axes[1].legend(fontsize=8)
  for arm, style in (("adaptive", "-"), ("adaptive_no_coupon", "--")):
    for layer in range(cfg.num_layers):
      trace = [
        np.mean(
          [
            tail_mean(records, f"telemetry/layer{layer}/survival{k}", where=not_audit)
            for records, _ in results[arm]
          ]
        )
        for k in range(1, cfg.max_passes + 1)
      ]
      axes[3].plot(
        range(1, cfg.max_passes + 1),
        trace,
        style,
        marker="o",
        color=f"C{layer}",
        label=f"{arm} L{layer}",
      )
  axes[3].axhline(cfg.halt_threshold, color="k", lw=0.8, ls=":")
  axes[3].set(
    xlabel="pass",
    ylabel="mean survival s entering the pass",
    title="survival traces (last ¼, mean over seeds)",
  )
  axes[3].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "curves.png", dpi=110)

  write_experiment_report(
    out,
    f"Ouro-Spec ablation ({args.scale})",
    [
      f"seeds: {args.seeds}; {base.train.steps} steps of {base.data.batch_size}×{seq} tokens; "
      f"model {cfg.num_layers}×{cfg.d_model}, Kmax {cfg.max_passes}, BPE vocab {cfg.vocab_size}",
      "telemetry columns: mean over the last quarter of training, audit steps excluded",
      "FLOPs: forward matmul FLOPs per token; 'executed' counts each token's own passes, "
      "'dense path' the passes the layer ran for the whole batch (the non-gathered path "
      "computes every token in every pass it runs)",
      claim,
      "verdict: better/worse when mean final validation loss differs from fixed_kmax's by "
      "more than 2 standard errors, else neutral",
    ],
    table,
    "curves.png",
  )


if __name__ == "__main__":
  main()
