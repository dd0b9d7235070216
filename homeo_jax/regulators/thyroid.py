"""Spectral Thyroid: a small learned filter bank that sets lr, weight-decay and
quantization-temperature multipliers (α, λ, τ) from the run's own loss and grad-norm history.

Inputs are windows of the last 16 finite losses and gradient norms, each turned into
three channels of log values x = log v (``window_features``):

* shape: z = (x − mean) / (std + 1e-3), the history's form (trend, oscillation, spikes)
  independent of its scale;
* level: tanh(4·(x − mean)), the deviation from the window's mean in log units;
* change: tanh(4·Δx), the step-to-step relative change.

The seed feeds the raw 16-loss buffer: its input scale is the loss's, so filter weights
trained on losses near 2 meet another task's losses near 5 outside their range. The shape
channel alone would lose amplitude (a 1% jitter and a 50% cliff give the same z), so two
amplitude channels carry how large the movement is, in relative terms (they are unchanged
when the loss is multiplied by a constant, so tasks of every loss scale look alike),
bounded by the tanh (4 maps a 25% relative move to tanh(1) ≈ 0.76).

Versions (all ≤ 10K parameters; ``thyroid_param_count`` checks it):

* ``"alpha"`` (v0.1): loss window → Conv1D(3→8, k3, same) → ReLU → Conv1D(8→16, k3,
  same) → ReLU → average pool to 4 bins → 64 → Dense 16 → ReLU → Dense 1 → sigmoid,
  α = 0.1 + 1.9·σ. 1,537 parameters.
* ``"alpha_lambda_tau"`` (v0.2): two streams (loss, grad norm), each Conv1D(3→8, k3) →
  ReLU → pool to 4 → concat (64) → Dense 32 → ReLU → three heads: α, λ ∈ [0.1, 2.0],
  τ ∈ [0.5, 2.0]. 2,339 parameters.
* ``"per_group"`` (v0.3): the v0.2 backbone shared; each parameter group ("organelle")
  feeds its *own* grad-norm window through the shared grad stream and has its own
  (α, λ) head; τ comes from one shared head (quantization temperature is global).
  2,273 + 66·G parameters.

Multipliers are computed every ``update_every`` steps (default 10) once both windows
are full, and held in between; before that they are 1.0. Hard clamps always hold (the
heads are bounded sigmoids). A NaN/Inf loss or grad norm never enters a window.

Steering goes through ``homeo_jax.regulators.steering.steer_hyperparams``:
effective lr = base lr·α and effective weight decay = base wd·λ (per group for v0.3, via
one ``optax.multi_transform`` inside ``inject_hyperparams``); τ is published as the
control ``quant_temperature`` that ``models.quant.QuantTransformer`` reads.

Weights: ``weights="shipped"`` (default) loads the meta-trained file
``thyroid_weights/<version>.npz`` shipped in the package (made by
``experiments/thyroid_meta.py``; the README's Spectral Thyroid section gives how and what it
measured); ``weights="random"`` is an explicit untrained initialisation whose outputs
start at 1.0; a path loads another file. A missing, corrupt or mismatched file raises an
error naming it.

Which hyperparameters: whichever of ``learning_rate`` and ``weight_decay`` (or
``weight_decay_rate``, as ``optax.adafactor`` names it) the inner factory accepts — α
scales the first, λ the second; a factory that accepts neither is an error.

Reads ``value`` (the loss) and, when given, ``grad_norm`` (the step's pre-clip gradient
norm, which the training loop passes). Without ``grad_norm`` — a plain optax loop that
passes only ``value`` — the norm is measured from the updates the thyroid receives: the
gradient norm itself when the thyroid is first in the chain, the clipped norm after a clip.
v0.3 measures each group's norm from the updates it receives and rescales them by
``grad_norm`` / ‖updates‖, which undoes a global-norm clip before it exactly (the clip
scales every leaf alike), so every version reads pre-clip norms when ``grad_norm`` is
given. Offers the control ``quant_temperature`` = τ. ``name`` (default ``"thyroid"``) keys
its metrics and controls. Under ``optax.inject_hyperparams``
wrap it in a function with named arguments (inject_hyperparams cannot bind the
``**inner_kwargs`` it forwards).

References: the Spectral Thyroid seed document; Metz et al., learned optimizers
(google/learned_optimization).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from homeo_jax.cores import signals
from homeo_jax.regulators import registry
from homeo_jax.regulators.base import (
  RegulatorSpec,
  read_telemetry,
  regulator_spec,
  static_int,
)
from homeo_jax.regulators.steering import HyperparamController, steer_hyperparams

VERSIONS = ("alpha", "alpha_lambda_tau", "per_group")
WINDOW = 16
FEATURES = 3  # channels per window: shape, level, change (window_features)
AMPLITUDE_GAIN = 4.0
MAX_PARAMS = 10_000
ALPHA_RANGE, LAMBDA_RANGE, TAU_RANGE = (0.1, 2.0), (0.1, 2.0), (0.5, 2.0)
WEIGHTS_DIR = Path(__file__).with_name("thyroid_weights")


def _logit_of(value: float, lo: float, hi: float) -> float:
  """The sigmoid input that maps to the multiplier ``value`` in [lo, hi]; a value on a
  bound is moved 2% of the range inside it (a sigmoid reaches its bounds only at ±∞)."""
  p = float(np.clip((value - lo) / (hi - lo), 0.02, 0.98))
  return float(np.log(p / (1 - p)))


def _dense(key, n_in, n_out, scale=None):
  std = (2.0 / n_in) ** 0.5 if scale is None else scale
  return {"w": jax.random.normal(key, (n_in, n_out)) * std, "b": jnp.zeros((n_out,))}


def _conv(key, c_in, c_out, k=3):
  return {
    "w": jax.random.normal(key, (k, c_in, c_out)) * (2.0 / (k * c_in)) ** 0.5,
    "b": jnp.zeros((c_out,)),
  }


def _head(key, n_in, lo, hi, value=1.0):
  # Zero weights and a bias at `value`: an untrained head outputs that constant.
  p = _dense(key, n_in, 1, scale=0.0)
  return {"w": p["w"], "b": jnp.full((1,), _logit_of(value, lo, hi))}


def init_thyroid_params(
  version: str,
  num_groups: int = 1,
  seed: int = 0,
  multipliers: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> dict:
  """Random filters and heads that output the constant ``multipliers`` (α, λ, τ): the
  neutral thyroid by default, or a meta-training start at the best constant."""
  if version not in VERSIONS:
    raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
  alpha0, lam0, tau0 = multipliers
  k = jax.random.split(jax.random.key(seed), 8)
  if version == "alpha":
    return {
      "conv1": _conv(k[0], FEATURES, 8),
      "conv2": _conv(k[1], 8, 16),
      "dense": _dense(k[2], 64, 16),
      "alpha": _head(k[3], 16, *ALPHA_RANGE, alpha0),
    }
  params = {
    "loss_conv": _conv(k[0], FEATURES, 8),
    "grad_conv": _conv(k[1], FEATURES, 8),
    "fusion": _dense(k[2], 64, 32),
    "tau": _head(k[5], 32, *TAU_RANGE, tau0),
  }
  heads = {
    "alpha": _head(k[3], 32, *ALPHA_RANGE, alpha0),
    "lam": _head(k[4], 32, *LAMBDA_RANGE, lam0),
  }
  if version == "per_group":
    heads = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_groups, *x.shape)), heads)
  return {**params, **heads}


def thyroid_param_count(params: dict) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def window_features(window: jax.Array) -> jax.Array:
  """``[T] -> [3, T]``: shape, level and change of the log window (module docstring).

  Every channel is unchanged when the window is multiplied by a constant, and finite
  for constant and extreme windows."""
  x = jnp.log(jnp.maximum(window, 1e-12))
  centered = x - jnp.mean(x, -1, keepdims=True)
  shape = centered / (jnp.std(x, -1, keepdims=True) + 1e-3)
  change = jnp.diff(x, prepend=x[..., :1], axis=-1)
  return jnp.stack(
    [shape, jnp.tanh(AMPLITUDE_GAIN * centered), jnp.tanh(AMPLITUDE_GAIN * change)], -2
  )


def _conv1d(x, p):
  """Same-padded 1-D convolution: ``[C_in, T] -> [C_out, T]``."""
  k = p["w"].shape[0]
  padded = jnp.pad(x, ((0, 0), (k // 2, k // 2)))
  patches = jnp.stack([padded[:, i : i + x.shape[1]] for i in range(k)])  # [k, C_in, T]
  return jnp.einsum("kct,kco->ot", patches, p["w"]) + p["b"][:, None]


def _pool4(x):
  return x.reshape(x.shape[0], 4, -1).mean(-1).reshape(-1)


def _bounded(p, h, lo, hi):
  return lo + (hi - lo) * jax.nn.sigmoid(h @ p["w"] + p["b"])[..., 0]


def thyroid_forward(
  params: dict, version: str, loss_window: jax.Array, grad_windows: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(α ``[G]``, λ ``[G]``, τ ``[]``) from a loss window ``[16]`` and grad windows ``[G, 16]``."""
  loss_in = window_features(loss_window)
  groups = grad_windows.shape[0]
  if version == "alpha":
    h = jax.nn.relu(_conv1d(jax.nn.relu(_conv1d(loss_in, params["conv1"])), params["conv2"]))
    h = jax.nn.relu(_pool4(h) @ params["dense"]["w"] + params["dense"]["b"])
    alpha = _bounded(params["alpha"], h, *ALPHA_RANGE)
    return jnp.full((groups,), alpha), jnp.ones((groups,)), jnp.ones(())
  loss_feat = _pool4(jax.nn.relu(_conv1d(loss_in, params["loss_conv"])))
  grad_feat = jax.vmap(
    lambda g: _pool4(jax.nn.relu(_conv1d(window_features(g), params["grad_conv"])))
  )(grad_windows)
  fused = jnp.concatenate([jnp.broadcast_to(loss_feat, (groups, 32)), grad_feat], -1)
  h = jax.nn.relu(fused @ params["fusion"]["w"] + params["fusion"]["b"])  # [G, 32]
  if version == "per_group":
    alpha = jax.vmap(lambda p, x: _bounded(p, x, *ALPHA_RANGE))(params["alpha"], h)
    lam = jax.vmap(lambda p, x: _bounded(p, x, *LAMBDA_RANGE))(params["lam"], h)
  else:
    alpha = _bounded(params["alpha"], h, *ALPHA_RANGE)
    lam = _bounded(params["lam"], h, *LAMBDA_RANGE)
  tau = _bounded(params["tau"], jnp.mean(h, 0), *TAU_RANGE)
  return alpha, lam, tau


def load_thyroid_params(version: str, weights: str | os.PathLike, num_groups: int = 1) -> dict:
  """Shipped, random or file weights; an unreadable or mismatched file names itself."""
  template = init_thyroid_params(version, 1)
  if weights == "random":
    params = template
  else:
    path = WEIGHTS_DIR / f"{version}.npz" if weights == "shipped" else Path(weights)
    if weights == "shipped" and not path.exists():
      raise ValueError(
        f"no meta-trained thyroid weights are shipped for version {version!r} yet ({path}): "
        "pass weights='random' for an untrained thyroid, or a file from "
        "experiments/thyroid_meta.py (meta_train)"
      )
    try:
      with np.load(path) as f:
        flat = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to a user
      raise ValueError(f"thyroid weights file {str(path)!r} cannot be read: {e}") from None
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    loaded = []
    for key_path, leaf in leaves:
      key = jax.tree_util.keystr(key_path)
      if key not in flat or flat[key].shape != leaf.shape:
        got = flat[key].shape if key in flat else "missing"
        raise ValueError(
          f"thyroid weights file {str(path)!r} does not match version "
          f"{version!r}: {key} expected {leaf.shape}, got {got}"
        )
      loaded.append(jnp.asarray(flat[key], jnp.float32))
    params = treedef.unflatten(loaded)
  return tie_group_heads(params, num_groups) if version == "per_group" else params


def tie_group_heads(params: dict, num_groups: int) -> dict:
  """v0.3 weights with every group's (α, λ) head a copy of the first group's (the shipped
  file holds one head; meta-training ties them)."""
  tied = {
    h: jax.tree.map(lambda x: jnp.broadcast_to(x[0], (num_groups, *x.shape[1:])), params[h])
    for h in ("alpha", "lam")
  }
  return {**params, **tied}


def save_thyroid_params(
  params: dict, path: str | os.PathLike, provenance: dict | None = None
) -> None:
  """Write the weights to ``path`` (.npz) atomically; with ``provenance`` (command, seeds,
  task family, git revision, ...) also the sidecar ``path.with_suffix(".json")``."""
  flat = {
    jax.tree_util.keystr(p): np.asarray(x)
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp.npz")
  np.savez(tmp, **flat)
  os.replace(tmp, path)
  if provenance is not None:
    sidecar = path.with_suffix(".json")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)


class ThyroidState(NamedTuple):
  spec: RegulatorSpec  # static: name, telemetry read, controls offered
  step: jax.Array  # shape=(), int32
  loss_buffer: signals.RingBuffer  # last 16 finite losses
  grad_buffer: signals.RingBuffer  # [G, 16]: last 16 finite grad norms per group
  weights: dict  # the thyroid network's parameters
  alpha: jax.Array  # shape=(G,), float32: lr multiplier in [0.1, 2]
  lam: jax.Array  # shape=(G,), float32: weight-decay multiplier in [0.1, 2]
  tau: jax.Array  # shape=(), float32: quantization-temperature multiplier in [0.5, 2]
  controls: dict  # {"quant_temperature": tau}

  logged_fields = ("alpha", "lam", "tau")


def thyroid_controller(
  version: str,
  *,
  group_names: Sequence[str] = ("all",),
  group_labels: Any = None,
  update_every: int = 10,
  weights: str | os.PathLike = "shipped",
  name: str | None = None,
) -> HyperparamController:
  """The Thyroid as a controller of ``steer_hyperparams``; see the module docstring."""
  if version not in VERSIONS:
    raise ValueError(f"thyroid: version must be one of {VERSIONS}, got {version!r}")
  update_every = static_int("thyroid", "update_every", update_every)
  # grad_norm is optional (measured from the updates when absent): not a declared read.
  spec = regulator_spec("thyroid", name, reads=("value",), offers=("quant_temperature",))
  groups = len(group_names)
  net = load_thyroid_params(version, weights, groups)
  if thyroid_param_count(net) > MAX_PARAMS:
    raise ValueError(f"thyroid has {thyroid_param_count(net)} parameters > {MAX_PARAMS}")
  grouped = version == "per_group"

  def init_fn(params):
    del params
    return ThyroidState(
      spec=spec,
      step=jnp.zeros((), jnp.int32),
      loss_buffer=signals.ring_init(WINDOW),
      grad_buffer=jax.vmap(lambda _: signals.ring_init(WINDOW))(jnp.arange(groups)),
      weights=net,  # steer_hyperparams copies it: a donated state must not delete it
      alpha=jnp.ones((groups,)),
      lam=jnp.ones((groups,)),
      tau=jnp.ones(()),
      controls={"quant_temperature": jnp.ones(())},
    )

  def group_norms(updates, extra_args):
    if grouped:
      labels = group_labels(updates) if callable(group_labels) else group_labels
      sq = {name: jnp.zeros(()) for name in group_names}
      for leaf, label in zip(jax.tree.leaves(updates), jax.tree.leaves(labels), strict=True):
        sq[label] = sq[label] + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
      norms = jnp.sqrt(jnp.stack([sq[name] for name in group_names]))
      # Pre-clip: a global-norm clip scaled every leaf by ‖updates‖ / grad_norm.
      received = jnp.sqrt(sum(sq.values()))
      pre_clip = jnp.asarray(extra_args.get("grad_norm", received), jnp.float32)
      return norms * jnp.where(received > 0, pre_clip / jnp.where(received > 0, received, 1), 1)
    if "grad_norm" not in extra_args:
      return jnp.reshape(optax.tree.norm(updates).astype(jnp.float32), (1,))
    return jnp.reshape(jnp.asarray(extra_args["grad_norm"], jnp.float32), (1,))

  def update_fn(state: ThyroidState, base, updates, params, **extra_args):
    del params
    read_telemetry(spec, extra_args)
    loss_buffer = signals.ring_push(state.loss_buffer, extra_args["value"])
    norms = group_norms(updates, extra_args).astype(jnp.float32)
    grad_buffer = jax.vmap(signals.ring_push)(state.grad_buffer, norms)
    full = jnp.logical_and(
      signals.ring_size(loss_buffer) >= WINDOW,
      jnp.all(jax.vmap(signals.ring_size)(grad_buffer) >= WINDOW),
    )
    regulate = jnp.logical_and(full, state.step % update_every == 0)
    loss_window = signals.ring_ordered(loss_buffer)[0]
    grad_windows = jax.vmap(lambda b: signals.ring_ordered(b)[0])(grad_buffer)
    alpha, lam, tau = thyroid_forward(state.weights, version, loss_window, grad_windows)
    alpha = jnp.where(regulate, alpha, state.alpha)
    lam = jnp.where(regulate, lam, state.lam)
    tau = jnp.where(regulate, tau, state.tau)
    effective = {}
    for g, group in enumerate(group_names):
      suffix = f"_{group}" if grouped else ""
      for hyperparam, multiplier in (("learning_rate", alpha), ("weight_decay", lam)):
        if f"{hyperparam}{suffix}" in base:
          effective[f"{hyperparam}{suffix}"] = base[f"{hyperparam}{suffix}"] * multiplier[g]
    new_state = ThyroidState(
      spec=spec,
      step=optax.safe_increment(state.step),
      loss_buffer=loss_buffer,
      grad_buffer=grad_buffer,
      weights=state.weights,
      alpha=alpha,
      lam=lam,
      tau=tau,
      controls={"quant_temperature": tau},
    )
    return new_state, effective

  return HyperparamController(init_fn, update_fn)


WEIGHT_DECAY_NAMES = ("weight_decay", "weight_decay_rate")


def _steerable(inner_factory: Callable[..., Any]) -> tuple[str | None, str | None]:
  """(lr argument, weight-decay argument) of ``inner_factory``, None where it has none."""
  try:
    accepted = inspect.signature(inner_factory).parameters
  except (TypeError, ValueError):  # a builtin or C callable: assume the optax names
    return "learning_rate", "weight_decay"
  lr = "learning_rate" if "learning_rate" in accepted else None
  wd = next((n for n in WEIGHT_DECAY_NAMES if n in accepted), None)
  return lr, wd


def thyroid(
  inner_factory: Callable[..., optax.GradientTransformation],
  learning_rate: optax.ScalarOrSchedule | None = None,
  weight_decay: optax.ScalarOrSchedule | None = None,
  *,
  version: str = "alpha_lambda_tau",
  group_labels: Any = None,
  group_names: Sequence[str] | None = None,
  update_every: int = 10,
  weights: str | os.PathLike = "shipped",
  name: str | None = None,
  static_args: tuple[str, ...] = (),
  **inner_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  """The Spectral Thyroid steering ``inner_factory``'s learning rate and weight decay.

  ``tx = thyroid(optax.adamw, learning_rate=1e-3, weight_decay=0.01)``, then
  ``tx.update(grads, state, params, value=loss[, grad_norm=g])``.

  Args:
    inner_factory: an optax factory (``optax.adamw``, ``sgd``, ``lion``, ``adafactor``,
      ``contrib.muon``, ``ord_muon``, ...). α scales its ``learning_rate``; λ its
      ``weight_decay`` (``weight_decay_rate`` for adafactor) when it has one.
    learning_rate: base lr, a number or schedule (required when the factory has one).
    weight_decay: base weight decay (None: the factory's own default, unsteered by the
      ``"alpha"`` version; an error if given to a factory without weight decay).
    version: ``"alpha"`` (v0.1), ``"alpha_lambda_tau"`` (v0.2), ``"per_group"`` (v0.3).
    group_labels, group_names: v0.3's parameter groups (a tree or callable of labels, as
      ``optax.multi_transform``, and the names it uses).
    update_every: steps between multiplier updates (10, a Python int).
    weights: ``"shipped"``, ``"random"`` or a path to an ``.npz``.
    name: instance name for metrics and controls (default ``"thyroid"``).
    static_args, inner_kwargs: passed to ``optax.inject_hyperparams`` and the factory.

  State: ``SteeredState(count, inner, controller=ThyroidState(...))`` with the windows,
  the network's weights and α ``[G]``, λ ``[G]``, τ. References: module docstring.
  """
  factory_name = getattr(inner_factory, "__name__", repr(inner_factory))
  lr_arg, wd_arg = _steerable(inner_factory)
  if lr_arg is None and wd_arg is None:
    raise ValueError(
      f"thyroid: inner_factory {factory_name} takes neither learning_rate nor weight_decay, "
      "so there is nothing to steer"
    )
  if lr_arg is None and learning_rate is not None:
    raise ValueError(f"thyroid: inner_factory {factory_name} takes no learning_rate")
  if lr_arg is not None and learning_rate is None:
    raise ValueError(f"thyroid: learning_rate is required to steer {factory_name}")
  if wd_arg is None and weight_decay is not None:
    raise ValueError(
      f"thyroid: inner_factory {factory_name} takes no weight decay, got weight_decay="
      f"{weight_decay!r}"
    )
  controller_args = dict(update_every=update_every, weights=weights, name=name)
  if version == "per_group":
    if group_labels is None or not group_names:
      raise ValueError("thyroid: version='per_group' needs group_labels and group_names")
    names = tuple(group_names)
    controller = thyroid_controller(
      version, group_names=names, group_labels=group_labels, **controller_args
    )
    steered = {}
    for g in names:
      if lr_arg:
        steered[f"learning_rate_{g}"] = learning_rate
      if wd_arg and weight_decay is not None:
        steered[f"weight_decay_{g}"] = weight_decay

    def grouped_factory(**hyperparams):
      def group_factory(g):
        args = dict(inner_kwargs)
        if lr_arg:
          args[lr_arg] = hyperparams[f"learning_rate_{g}"]
        if f"weight_decay_{g}" in hyperparams:
          args[wd_arg] = hyperparams[f"weight_decay_{g}"]
        return inner_factory(**args)

      return optax.multi_transform({g: group_factory(g) for g in names}, group_labels)

    # inject_hyperparams binds hyperparameters by signature: name each one.
    grouped_factory.__signature__ = inspect.Signature(
      [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in steered]
    )
    return steer_hyperparams(grouped_factory, controller, steered)
  controller = thyroid_controller(version, **controller_args)
  steered, other = {}, dict(inner_kwargs)
  if lr_arg:
    steered["learning_rate"] = learning_rate
  if weight_decay is not None:
    # v0.1 has no λ head: its weight decay is passed through unsteered.
    target = other if version == "alpha" else steered
    target["weight_decay" if target is steered else wd_arg] = weight_decay
  if "weight_decay" in steered and wd_arg != "weight_decay":
    factory = inner_factory

    def renamed(**hyperparams):  # adafactor's weight_decay_rate, steered as weight_decay
      hyperparams[wd_arg] = hyperparams.pop("weight_decay")
      return factory(**hyperparams)

    params = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in (*steered, *other)]
    renamed.__signature__ = inspect.Signature(params)
    inner_factory = renamed
  return steer_hyperparams(inner_factory, controller, steered, static_args=static_args, **other)


@registry.register_optimizer("thyroid_adamw", thyroid, optax.adamw)
def _build(ctx: registry.BuildContext, **kwargs) -> optax.GradientTransformation:
  """AdamW steered by the Spectral Thyroid (``version="per_group"``: organelle groups of
  the parameter rule); the weight-decay mask is the parameter rule's in every version."""
  cfg, rules = ctx.cfg, ctx.rules
  args = {"weight_decay": cfg.weight_decay, "b1": cfg.b1, "b2": cfg.b2, "eps": cfg.eps}
  if kwargs.get("version") == "per_group":
    # Each group's AdamW gets the mask too: gains and biases are never decayed.
    args.update(
      group_labels=rules.organelle_labels,
      group_names=rules.organelle_names,
      mask=rules.weight_decay_mask,
    )
  else:
    args.update(static_args=("mask",), mask=rules.weight_decay_mask)
  return thyroid(optax.adamw, ctx.learning_rate, **{**args, **kwargs})
