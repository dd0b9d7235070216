"""Per-step console lines: the default one, and the Ouro-Spec operators' dashboard.

``LINE_FORMATS[config.train.log_format](step, metrics) -> list of lines``; ``metrics``
are the logged scalars of one step (train-step metrics plus ``lr``, ``dt``, ``tok_s``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

Metrics = dict[str, float]


def default_lines(step: int, m: Metrics) -> list[str]:
  # "regulators/<name>/<field>[/<group>]" shows as "<field>[/<group>]"
  headline = {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith("regulators/")}
  regs = " | ".join(f"{k} {v:.4g}" for k, v in headline.items())
  return [
    f"step {step:6d} | loss {m['loss']:.4f} | grad {m['grads/norm']:.3f}"
    f" | tok/s {m['tok_s']:,.0f}"
    + (f" | mfu {100 * m['mfu']:.1f}%" if "mfu" in m else "")
    + (f" | {regs}" if regs else "")
  ]


def _layers(m: Metrics) -> list[int]:
  return sorted({int(k.split("/")[1][5:]) for k in m if k.startswith("telemetry/layer")})


def layer_rows(m: Metrics) -> list[dict[str, float]]:
  """The per-layer telemetry ``telemetry/layer{i}/{key}`` as one dict per layer (the
  ``layers`` list of stats.json); empty for a model without per-layer telemetry."""
  return [
    {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith(f"telemetry/layer{i}/")}
    for i in _layers(m)
  ]


def ouro_lines(step: int, m: Metrics) -> list[str]:
  """TOT, LM, PONDER (RAW, RWD), LR, GRAD, λ_p [DB], CTRL_ERR, P_NR, BATON, PL/LM,
  exec/k/gap, dt, tok/s; per-layer stats every 10 steps; survival every 50."""

  def t(key: str, default: float = float("nan")) -> float:
    return m.get(f"telemetry/{key}", default)

  # The compute price's lines, whatever its instance name: the regulator logging ctrl_err.
  prices = sorted(k[: -len("/ctrl_err")] for k in m if k.endswith("/ctrl_err"))
  price_prefix = prices[0] if prices else "regulators/compute_price"

  def r(key: str, default: float = float("nan")) -> float:
    return m.get(f"{price_prefix}/{key}", default)

  lm = t("ce_loss")
  flags = " [DB]" if r("deadband", 0.0) > 0 else ""
  # Forced depth is an audit only under a compute price (a fixed-depth model forces always).
  audit = t("forced_k", 0.0) > 0 and step > 0 and math.isfinite(r("price"))
  flags += " [AUDIT]" if audit else ""
  lines = [
    f"step {step:6d} | TOT {m['loss']:.4f} LM {lm:.4f} | PONDER {t('ponder'):.4f}"
    f" (RAW {t('ponder_raw'):.4f} RWD {t('coupon'):.4f}) | LR {m.get('lr', float('nan')):.2e}"
    f" | GRAD {m['grads/norm']:.3f} | λp {r('price'):.4g}{flags} | CTRL_ERR {r('ctrl_err'):+.3f}"
    f" | P_NR {100 * t('p_low'):.1f}% | BATON {t('baton_rat'):.3f} (lam={t('lam_mu'):.3f})"
    f" | PL/LM {100 * t('ponder') / max(lm, 1e-9):.2f}%"
    f" | exec {t('passes_run'):.2f}/k {t('avg_k'):.2f}/gap {t('gap'):+.2f}"
    f" | waste {100 * t('wasted_compute'):.0f}%"
    f" | dt {1000 * m.get('dt', 0.0):.0f}ms | tok/s {m['tok_s']:,.0f}"
  ]
  delta_ce = t("delta_ce")
  tags = []
  if delta_ce > 0:
    tags.append("[ECONOMIC WIN]")  # the seed's: recurrence lowered the CE (ΔCE = CE₁ − CE_final)
  if delta_ce > 0 and t("delta_pred_entropy") < 0:
    tags.append("[CONFIDENCE+]")  # the seed's: ... and sharpened the predictions (ΔH < 0)
  if audit and delta_ce > 0:
    tags.append("[AUDIT-POS]")  # this step was an audit, and its forced depth paid off
  lines.append(
    f"         recurrence | ΔCE {delta_ce:+.4f} | ΔH {t('delta_pred_entropy'):+.4f}"
    f" | CE1 {t('pass1_ce'):.4f}"
    f" | coupon {t('coupon'):.4f} | audit ΔCE {r('audit_delta_ce'):+.4f} " + " ".join(tags)
  )
  if step % 10 == 0:
    for i in _layers(m):

      def lt(key: str, i: int = i) -> float:
        return m.get(f"telemetry/layer{i}/{key}", float("nan"))

      tails = "/".join(f"{100 * lt(f'tail{n}'):.0f}" for n in (2, 3, 4))
      lines.append(
        f"  L{i} k_exec {lt('passes_run'):.0f} E[k] {lt('expected_k'):.2f}"
        f" s_fin {lt('s_fin'):.3f} avg {lt('k_exec'):.2f} p95 {lt('k_p95'):.1f}"
        f" tail≥2/3/4 {tails}% H {lt('entropy'):.3f} p {lt('p_mu'):.3f}±{lt('p_std'):.3f}"
        f" d_rel {lt('d_rel'):.3f} Δh {lt('delta_h'):.3f} Δp {lt('delta_p'):+.3f}"
        f" | ponder {t('ponder'):.4f} λp {r('price'):.4g}"
      )
  if step % 50 == 0:
    for i in _layers(m):
      trace = [
        m[f"telemetry/layer{i}/survival{k}"]
        for k in range(1, 17)
        if f"telemetry/layer{i}/survival{k}" in m
      ]
      lines.append(f"  L{i} survival " + " → ".join(f"{s:.3f}" for s in trace))
  return lines


LINE_FORMATS: dict[str, Callable[[int, Metrics], list[str]]] = {
  "default": default_lines,
  "ouro": ouro_lines,
}
