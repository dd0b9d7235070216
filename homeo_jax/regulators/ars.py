"""ARS — Adaptive Resonance Suppression: an entropy guard and surprise gate on Adam.

Every step, with surprise S_t (the loss ``value=`` by default, or another telemetry
scalar named by ``surprise_key``, e.g. ``"grad_norm"``):

1. the last ``window`` (W, default 100) finite values of S sit in a ring buffer (in
   ``surprise="relative"`` mode, the relative surprise defined below);
2. ρ₁ = lag-1 autocorrelation of that window (Pearson, window vs itself shifted by one);
3. entropy guard   Ψ_t = max(ε, 1 − ρ₁²)                   (ε = ``epsilon``, 1e-6);
   ``detector="spectral"`` uses r instead of ρ₁: the share of the detrended window's
   spectral power in its strongest oscillation (``cores.signals.spectral_resonance``);
4. effective surprise S̃_t = S_t / Ψ_t;
5. surprise gate   Φ_t = Φ_min + (1 − Φ_min)·exp(−α·S̃_t)   (α 1.0, Φ_min 0.1);
6. chronos-jitter  j_t = U(−1, 1)·jitter_scale·(1 − Ψ_t)   (jitter_scale 0.1), from a
   PRNG key carried in the state;
7. β1_eff = β1·Φ_t, β2_eff = β2·Φ_t, lr_eff = lr_base·(1 + j_t);
8. the inner optimizer steps with those. The base values (numbers or schedules) stay
   the source of truth: effective values are recomputed from them every step.

A periodic (resonant) loss has |ρ₁| → 1, so Ψ → ε: surprise is amplified, Φ drops to
Φ_min (less momentum, shorter second-moment memory) and the learning rate is jittered
to break the resonance. White noise has ρ₁ ≈ 0, so Ψ ≈ 1 and ARS relaxes.

Choices the seed leaves open, made here:

* Detector (``detector``): ``"lag1"`` (default) is the seed's. It reads trend as
  resonance — a smooth decaying loss has ρ₁ ≈ 1, i.e. maximum braking — and misses a
  period-4 oscillation (ρ₁ = 0). ``"spectral"`` removes a cubic trend first and looks for
  one dominant frequency with at least 4 cycles in the window: smooth decay, noise and
  trends give r ≈ 0.05–0.2 (Ψ ≥ 0.96); oscillations of period 2, 4 and 16, with or
  without a trend, give r ≥ 0.99 (Ψ ≤ 0.02). It needs 16 values before it measures.
* Warm-up: until the window holds ``min_window`` (default 3) values, Ψ = 1 and Φ follows
  from S alone (there is no autocorrelation to measure yet); jitter is then 0.
* ``guard=None`` fixes Ψ ≡ 1, which also makes the jitter 0; ``jitter=None`` drops the jitter.
* Bad telemetry: a NaN/Inf S never enters the buffer or the baseline; that step holds
  the previous Ψ and Φ, uses no jitter, and the state stays finite.
* Surprise normalisation (``Gate.surprise``): ``"raw"`` (default) uses S as given, so Φ
  depends on the loss's absolute scale (a loss of 3 gives Φ ≈ 0.14, i.e. β's shrink 7×);
  ``"relative"`` uses S_t = max(0, S_t / EMA(S)_{t−1} − 1), the excess over a running
  baseline (EMA decay ``baseline_decay``, 0.99), so Φ ≈ 1 while the loss is as expected
  and falls only when it exceeds its own recent level. The data-shift ablation in
  ``experiments/ars_narcissus.py`` uses ``"relative"``.

The hyperparameters come in three groups, one per component of the seed: ``Guard`` (Ψ:
window, min_window, ε, detector), ``Gate`` (Φ: α, Φ_min, the surprise signal) and ``Jitter``
(χ: amplitude, seed) — frozen dataclasses with the seed's defaults; a config gives dicts
(``optimizer.kwargs.gate.surprise=relative``). The base lr, betas, eps and weight decay may
be traced (``optax.inject_hyperparams``); ``window`` and ``min_window`` set shapes and must be
Python ints. ``name`` (default ``"ars"``) keys its logged metrics.

Reads: ``value`` (or ``Gate.surprise_key``) from the extra args. Exposes in its state: Ψ
(``psi``), Φ (``phi``), ρ₁ (``rho1``), S̃ (``surprise_eff``), ``jitter`` and the effective
``b1``, ``b2``, ``learning_rate``.

References:
  The ARS seed document (Adaptive Resonance Suppression); Kingma & Ba, Adam (2015).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.cores import signals
from homeo_jax.regulators import registry
from homeo_jax.regulators.base import (
  RegulatorSpec,
  check,
  options,
  read_telemetry,
  regulator_spec,
  shape_int,
  static_int,
)
from homeo_jax.regulators.steering import HyperparamController, steer_hyperparams

SURPRISE_MODES = ("raw", "relative")
DETECTORS = ("lag1", "spectral")
SPECTRAL_MIN_VALUES = 16


class ARSState(NamedTuple):
  """Controller state of ARS (lives in ``SteeredState.controller``)."""

  spec: RegulatorSpec  # static: name, telemetry read
  surprise_buffer: signals.RingBuffer  # last W finite surprises S
  baseline: signals.EMA  # running EMA of the raw signal (used by surprise="relative")
  key: jax.Array  # PRNG key data, uint32[2]: chronos-jitter
  rho1: jax.Array  # shape=(), float32: lag-1 autocorrelation
  resonance: jax.Array  # shape=(), float32: the detector's output (ρ₁, or r if spectral)
  psi: jax.Array  # shape=(), float32: entropy guard Ψ ∈ [ε, 1]
  surprise_eff: jax.Array  # shape=(), float32: S̃ = S / Ψ
  phi: jax.Array  # shape=(), float32: surprise gate Φ ∈ [Φ_min, 1]
  jitter: jax.Array  # shape=(), float32: j ∈ [−jitter_scale, jitter_scale]
  b1: jax.Array  # shape=(), float32: effective β1
  b2: jax.Array  # shape=(), float32: effective β2
  learning_rate: jax.Array  # shape=(), float32: effective learning rate

  logged_fields = (
    "psi",
    "phi",
    "rho1",
    "resonance",
    "surprise_eff",
    "jitter",
    "b1",
    "b2",
    "learning_rate",
  )


@dataclasses.dataclass(frozen=True)
class Guard:
  """The entropy guard Ψ = max(ε, 1 − r²): r from the last ``window`` surprises."""

  window: int = 100  # W (a Python int: it sets the buffer's shape)
  min_window: int = 3  # values before Ψ is measured (Ψ = 1 until then)
  epsilon: float = 1e-6  # ε, Ψ's floor
  detector: str = "lag1"  # "lag1" (the seed's ρ₁) or "spectral" (module docstring)


@dataclasses.dataclass(frozen=True)
class Gate:
  """The surprise gate Φ = Φ_min + (1 − Φ_min)·exp(−α·S/Ψ) on β1 and β2."""

  alpha: float = 1.0  # α, the surprise sensitivity
  phi_min: float = 0.1  # Φ_min, the gate's floor
  surprise: str = "raw"  # "raw" (the seed's) or "relative" (module docstring)
  surprise_key: str = "value"  # the telemetry scalar read as S (the loss)
  baseline_decay: float = 0.99  # EMA decay of the relative mode's baseline


@dataclasses.dataclass(frozen=True)
class Jitter:
  """Chronos-jitter: lr·(1 + U(−1, 1)·scale·(1 − Ψ))."""

  scale: float = 0.1
  seed: int = 0  # of the PRNG key carried in the state


def ars_controller(
  *,
  guard: Guard | dict | None = Guard(),
  gate: Gate | dict = Gate(),
  jitter: Jitter | dict | None = Jitter(),
  name: str | None = None,
) -> HyperparamController:
  """The ARS controller for ``steer_hyperparams`` (steers ``learning_rate``, ``b1``, ``b2``);
  ``guard=None`` fixes Ψ ≡ 1 (and so no jitter), ``jitter=None`` turns the jitter off."""
  guard_on, jitter_on = guard is not None, jitter is not None
  guard_opts = options("ars", "guard", guard, Guard())
  gate = options("ars", "gate", gate, Gate())
  jitter_opts = options("ars", "jitter", jitter, Jitter())
  window, min_window = guard_opts.window, guard_opts.min_window
  epsilon, detector = guard_opts.epsilon, guard_opts.detector
  alpha, phi_min, surprise = gate.alpha, gate.phi_min, gate.surprise
  surprise_key, baseline_decay = gate.surprise_key, gate.baseline_decay
  jitter_scale, seed = jitter_opts.scale, jitter_opts.seed
  window = static_int("ars", "window", window, minimum=3)
  min_window = static_int("ars", "min_window", min_window, minimum=3)
  check("ars", "min_window", min_window, lambda v: v <= window, f"in [3, window={window}]")
  check("ars", "phi_min", phi_min, lambda v: 0.0 < v <= 1.0, "in (0, 1]")
  check("ars", "alpha", alpha, lambda v: v > 0, "> 0")
  check("ars", "jitter_scale", jitter_scale, lambda v: v >= 0, ">= 0")
  check("ars", "epsilon", epsilon, lambda v: 0.0 < v <= 1.0, "in (0, 1]")
  check("ars", "baseline_decay", baseline_decay, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
  if surprise not in SURPRISE_MODES:
    raise ValueError(f"ars: surprise must be one of {SURPRISE_MODES}, got {surprise!r}")
  if detector not in DETECTORS:
    raise ValueError(f"ars: detector must be one of {DETECTORS}, got {detector!r}")
  spec = regulator_spec("ars", name, reads=(surprise_key,))

  def init_fn(params):
    del params
    zero, one = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
    return ARSState(
      spec=spec,
      surprise_buffer=signals.ring_init(shape_int("ars", "window", window)),
      baseline=signals.ema_init(),
      key=jax.random.key_data(jax.random.key(seed)),
      rho1=zero,
      resonance=zero,
      psi=one,
      surprise_eff=zero,
      phi=one,
      jitter=zero,
      b1=zero,
      b2=zero,
      learning_rate=zero,
    )

  def update_fn(state: ARSState, base, updates, params, **extra_args):
    del updates, params
    raw = read_telemetry(spec, extra_args)[surprise_key]
    ok = jnp.isfinite(raw)
    if surprise == "relative":
      baseline = signals.ema_debiased(state.baseline, baseline_decay)
      has_baseline = jnp.logical_and(state.baseline.count > 0, baseline > 0)
      s = jnp.where(
        has_baseline, jnp.maximum(raw / jnp.where(has_baseline, baseline, 1.0) - 1, 0), 0.0
      )
    else:
      s = raw
    buffer = signals.ring_push(state.surprise_buffer, s, ok)
    rho1 = signals.lag1_autocorrelation(buffer)
    if detector == "spectral":
      resonance = signals.spectral_resonance(buffer, min_values=SPECTRAL_MIN_VALUES)
      warm = signals.ring_size(buffer) >= max(min_window, SPECTRAL_MIN_VALUES)
    else:
      resonance = rho1
      warm = signals.ring_size(buffer) >= min_window
    psi = jnp.where(jnp.logical_and(guard_on, warm), jnp.maximum(epsilon, 1.0 - resonance**2), 1.0)
    s_eff = jnp.where(ok, s, 0.0) / psi
    phi = phi_min + (1.0 - phi_min) * jnp.exp(-alpha * s_eff)
    key, subkey = jax.random.split(jax.random.wrap_key_data(state.key))
    noise = jax.random.uniform(subkey, (), jnp.float32, -1.0, 1.0)
    jit = jnp.where(jitter_on, noise * jitter_scale * (1.0 - psi), 0.0)
    # A bad S holds the previous guard and gate and adds no jitter.
    psi = jnp.where(ok, psi, state.psi)
    phi = jnp.where(ok, phi, state.phi)
    jit = jnp.where(ok, jit, 0.0)
    s_eff = jnp.where(ok, s_eff, state.surprise_eff)
    rho1 = jnp.where(ok, rho1, state.rho1)
    resonance = jnp.where(ok, resonance, state.resonance)
    effective = {
      "b1": base["b1"] * phi,
      "b2": base["b2"] * phi,
      "learning_rate": base["learning_rate"] * (1.0 + jit),
    }
    new_state = ARSState(
      spec=spec,
      surprise_buffer=buffer,
      baseline=signals.ema_update(state.baseline, raw, baseline_decay, ok),
      key=jax.random.key_data(key),
      rho1=rho1,
      resonance=resonance,
      psi=psi,
      surprise_eff=s_eff,
      phi=phi,
      jitter=jit,
      **effective,
    )
    return new_state, effective

  return HyperparamController(init_fn, update_fn)


def ars(
  inner_factory: Callable[..., optax.GradientTransformation],
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  *,
  guard: Guard | dict | None = Guard(),
  gate: Gate | dict = Gate(),
  jitter: Jitter | dict | None = Jitter(),
  name: str | None = None,
  static_args: tuple[str, ...] = (),
  **inner_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  """ARS around any inner optimizer whose factory takes ``learning_rate``, ``b1``, ``b2``;
  ``guard``, ``gate`` and ``jitter`` go to ``ars_controller``, the rest to ``inner_factory``.
  """
  return steer_hyperparams(
    inner_factory,
    ars_controller(guard=guard, gate=gate, jitter=jitter, name=name),
    {"learning_rate": learning_rate, "b1": b1, "b2": b2},
    static_args=static_args,
    **inner_kwargs,
  )


def ars_adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 1e-4,
  mask: Any = None,
  *,
  guard: Guard | dict | None = Guard(),
  gate: Gate | dict = Gate(),
  jitter: Jitter | dict | None = Jitter(),
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamW under ARS: ``tx.update(grads, state, params, value=loss)``.

  Args:
    learning_rate: base lr, a number or schedule (jittered by ARS).
    b1, b2: base Adam betas (0.9, 0.999), both scaled by the surprise gate Φ.
    eps, weight_decay, mask: as ``optax.adamw`` (weight decay 1e-4).
    guard: ``Guard`` — W (100, ≥ 3), min_window (3), ε (1e-6), detector (``"lag1"``) — or a
      dict of its fields; None fixes Ψ ≡ 1, and so no jitter.
    gate: ``Gate`` — α (1.0), Φ_min (0.1), the surprise mode (``"raw"``), its telemetry key
      (``"value"``) and baseline decay (0.99) — or a dict.
    jitter: ``Jitter`` — amplitude (0.1) and PRNG seed (0) — or a dict; None turns it off.
    name: instance name for metrics (default ``"ars"``).

  State: ``SteeredState(count, inner, controller=ARSState(...))``; the formula and the
  fields are in the module docstring.
  """
  return ars(
    optax.adamw,
    learning_rate,
    b1,
    b2,
    guard=guard,
    gate=gate,
    jitter=jitter,
    name=name,
    static_args=("mask",),
    eps=eps,
    weight_decay=weight_decay,
    mask=mask,
  )


@registry.register_optimizer("ars_adamw", ars_adamw)
def _build(ctx: registry.BuildContext, **kwargs) -> optax.GradientTransformation:
  """AdamW under ARS with the config's lr schedule, betas, eps and decay mask."""
  return ars_adamw(ctx.learning_rate, **{**registry.adamw_args(ctx), **kwargs})
