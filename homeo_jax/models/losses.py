"""Training objectives: ``loss_fn(logits, targets, telemetry) -> (loss, telemetry)``.

* ``lm_loss``: next-token cross entropy (+ an MoE's ``aux_loss``), every model's default;
* ``with_z_loss``: any objective + the PaLM z-loss;
* ``adaptive_lm_loss``: the Ouro-Spec objective, cross entropy + the net ponder cost
  (``AdaptiveTransformer.loss_fn``).

A loss adds what it measures to the telemetry it returns, so regulators can read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict]]


def lm_loss(logits, targets, telemetry):
  """Next-token cross entropy (+ ``telemetry["aux_loss"]`` when a model adds one).

  Telemetry ``output_logit_mean``: the mean output logit, whose drift to large negative
  values is the output-logit divergence of Wortsman et al. (2023)."""
  with jax.named_scope("loss"):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    logit_mean = jax.lax.stop_gradient(jnp.mean(logits.astype(jnp.float32)))
  loss = ce + telemetry.get("aux_loss", 0.0)
  return loss, {**telemetry, "ce_loss": ce, "output_logit_mean": logit_mean}


def with_z_loss(loss_fn: LossFn, weight: float) -> LossFn:
  """``loss_fn`` + weight·mean(log Z²), Z the softmax normaliser of each position (PaLM,
  Chowdhery et al. 2022; Wortsman et al. 2023: it stops output-logit divergence).
  Telemetry ``z_loss`` is the added term."""

  def objective(logits, targets, telemetry):
    loss, telemetry = loss_fn(logits, targets, telemetry)
    log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    z_loss = weight * jnp.mean(jnp.square(log_z))
    return loss + z_loss, {**telemetry, "z_loss": z_loss}

  return objective


def _entropy(logits: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def adaptive_lm_loss(
  logits: jax.Array,
  targets: jax.Array,
  telemetry: Mapping[str, jax.Array],
  *,
  reward_eta: float = 2.0,
  max_passes: int = 4,
  coupon_gradient: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CE + net ponder cost, the Ouro-Spec objective.

      signal  = relu(avg_k − 1) / (Kmax − 1)        avg_k the soft depth
      raw     = λ_p · signal                          λ_p the compute_price control
      ΔCE     = CE₁ − CE                              CE₁ of the one-pass model (no grad)
      coupon  = reward_eta · relu(ΔCE)
      ponder  = relu(raw − coupon)
      loss    = CE + ponder (+ aux_loss of an MoE FFN)

  As the seed: the coupon's gradient flows through CE (while the price is being paid,
  the depth that lowers CE earns (1 + η)× its gradient: direct supervision for depth),
  ΔCE is logged signed (a step where recurrence hurt shows as ΔCE < 0), and
  ``delta_pred_entropy`` = H_final − H₁ (negative when recurrence sharpens the
  prediction). ``coupon_gradient=False`` stops the coupon's gradient (the cost is then
  priced against a constant reward). Without one-pass logits (eval, or the model's
  ``coupon=False``) ΔCE = 0.
  """
  telemetry = dict(telemetry)
  pass1_logits = telemetry.pop("pass1_logits", None)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  pred_entropy = jnp.mean(_entropy(jax.lax.stop_gradient(logits)))
  if pass1_logits is None:
    ce1, pass1_entropy = jax.lax.stop_gradient(ce), pred_entropy
  else:
    ce1 = optax.softmax_cross_entropy_with_integer_labels(pass1_logits, targets).mean()
    pass1_entropy = jnp.mean(_entropy(pass1_logits))
  delta_ce = jax.lax.stop_gradient(ce1) - ce
  credit = jax.nn.relu(delta_ce if coupon_gradient else jax.lax.stop_gradient(delta_ce))
  signal = jax.nn.relu(telemetry["avg_k"] - 1.0) / max(max_passes - 1, 1)
  raw = telemetry.get("compute_price", 0.0) * signal
  coupon = reward_eta * credit
  ponder = jax.nn.relu(raw - coupon)
  loss = ce + ponder + telemetry.get("aux_loss", 0.0)
  telemetry.update(
    ce_loss=ce,
    pass1_ce=jax.lax.stop_gradient(ce1),
    delta_ce=jax.lax.stop_gradient(delta_ce),
    delta_pred_entropy=pred_entropy - jax.lax.stop_gradient(pass1_entropy),
    ponder_raw=raw,
    coupon=jax.lax.stop_gradient(coupon),
    ponder=ponder,
  )
  return loss, telemetry
