"""What every regulator shares: an instance name, declared telemetry and controls.

A regulator's state is a ``NamedTuple`` whose first field is ``spec``, a static
``RegulatorSpec`` (it lives in the tree *structure*, not in its leaves, so it costs no
buffer, survives ``jit``, ``eval_shape`` and donation, and is not written to checkpoints):

* ``kind`` and ``name``: what the regulator is and which instance (default: the kind).
  Metrics are logged as ``regulators/<name>/<field>`` and controls are keyed by name,
  so two instances of one kind (two MoE stacks, two balancers) coexist in one chain.
* ``reads``: the telemetry keys it needs in ``tx.update(..., **extra_args)``;
* ``publishes``: the controls a model must read (e.g. a router bias);
  ``offers``: controls a model may read or ignore (the Thyroid's τ with a float model).

The state class may carry ``logged_fields`` (a class attribute: the scalar fields the
training loop logs), a ``controls`` field (a dict of arrays published to the model for the
next step) and a ``deployment_controls()`` method giving the controls for evaluation and
generation when they differ from the training ones (the compute price's forced depth,
audits and gate clamp are training-only).

``controls(opt_state)`` gathers ``{name: {control: array}}`` from anywhere in an optax
state tree — inside ``chain``, ``multi_transform``, ``inject_hyperparams``, ``MultiSteps``
— so the train step reads them without knowing which regulators are present.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class RegulatorSpec:
  """Static identity of a regulator instance: kind, name, telemetry read, controls out."""

  kind: str
  name: str
  reads: tuple[str, ...] = ()
  publishes: tuple[str, ...] = ()
  offers: tuple[str, ...] = ()


def regulator_spec(
  kind: str,
  name: str | None,
  *,
  reads: tuple[str, ...] = (),
  publishes: tuple[str, ...] = (),
  offers: tuple[str, ...] = (),
) -> RegulatorSpec:
  """A spec with ``name`` defaulting to ``kind``; a name must be a non-empty identifier."""
  name = kind if name is None else name
  if not isinstance(name, str) or not name or "/" in name:
    raise ValueError(f"{kind}: name must be a non-empty string without '/', got {name!r}")
  return RegulatorSpec(kind, name, tuple(reads), tuple(publishes), tuple(offers))


def _is_regulator_state(node: Any) -> bool:
  return isinstance(node, tuple) and isinstance(getattr(node, "spec", None), RegulatorSpec)


def read_telemetry(spec: RegulatorSpec, extra_args: dict[str, Any]) -> dict[str, jax.Array]:
  """The float32 telemetry ``spec`` declares it reads, from ``tx.update``'s extra args.

  A missing key is a one-line error naming the regulator and the key (``train()`` checks
  the same at setup, before anything compiles).
  """
  for key in spec.reads:
    if key not in extra_args:
      raise ValueError(
        f"{spec.kind} ({spec.name!r}) reads {key!r} from the extra args: pass "
        f"tx.update(..., {key}=...)"
      )
  return {key: jnp.asarray(extra_args[key], jnp.float32) for key in spec.reads}


def regulator_states(opt_state: Any) -> list[Any]:
  """Every regulator state in ``opt_state``, in tree order.

  Two states with one name are a configuration error (their controls and metrics would
  collide): the message names the kind and says to pass ``name=``.
  """
  states = []

  def collect(tree: Any) -> None:
    for node in jax.tree.leaves(tree, is_leaf=_is_regulator_state):
      if _is_regulator_state(node):
        states.append(node)
        # A wrapper (spike guard, Fisher prox) holds its inner optimizer's regulators.
        collect(tuple(node)[1:])

  collect(opt_state)
  seen: dict[str, str] = {}
  for state in states:
    spec = state.spec
    if spec.name in seen:
      raise ValueError(
        f"two regulators are named {spec.name!r} ({seen[spec.name]} and {spec.kind}): "
        "pass name= to tell them apart"
      )
    seen[spec.name] = spec.kind
  return states


def regulator_specs(opt_state: Any) -> list[RegulatorSpec]:
  """The specs of every regulator in a (possibly abstract, ``eval_shape``) state tree."""
  return [state.spec for state in regulator_states(opt_state)]


def controls(opt_state: Any, *, deployment: bool = False) -> dict[str, dict[str, jax.Array]]:
  """``{regulator name: {control: array}}`` for every regulator that publishes controls.

  ``deployment=True`` gives the controls for evaluation and generation: a regulator's
  ``deployment_controls()`` where it defines one, else its training controls.
  """
  out: dict[str, dict[str, jax.Array]] = {}
  for state in regulator_states(opt_state):
    if deployment and hasattr(state, "deployment_controls"):
      published = state.deployment_controls()
    else:
      published = getattr(state, "controls", None)
    if published:
      out[state.spec.name] = dict(published)
  return out


def regulator_metrics(opt_state: Any) -> dict[str, jax.Array]:
  """``{"regulators/<name>/<field>": scalar}`` for every logged field of every regulator.

  A field that is an array or a tree (e.g. one value per parameter leaf) is logged as
  the mean over all its elements; a dict field ``{group: value}`` as one metric per group,
  ``regulators/<name>/<field>/<group>``.
  """
  metrics: dict[str, jax.Array] = {}

  def log(key: str, tree: Any) -> None:
    leaves = [jnp.ravel(jnp.asarray(x, jnp.float32)) for x in jax.tree.leaves(tree)]
    if leaves:
      metrics[key] = jnp.mean(jnp.concatenate(leaves))

  for state in regulator_states(opt_state):
    for field in getattr(type(state), "logged_fields", ()):
      value, prefix = getattr(state, field), f"regulators/{state.spec.name}/{field}"
      if isinstance(value, dict):  # one value per group: one metric each
        for group, tree in value.items():
          log(f"{prefix}/{group}", tree)
      else:
        log(prefix, value)
  return metrics


def is_concrete(value: Any) -> bool:
  """True for a Python or NumPy number, False for a (possibly traced) JAX array."""
  return isinstance(value, numbers.Number | np.number | np.ndarray) and not isinstance(
    value, jax.Array
  )


def check(kind: str, arg: str, value: Any, ok: Callable[[Any], bool], want: str) -> None:
  """Raise ``ValueError("<kind>: <arg> must be <want>, got <value>")`` unless ``ok(value)``.

  Only concrete numbers are checked: under ``optax.inject_hyperparams`` a numeric
  hyperparameter arrives as a traced array, and a Python ``if`` on it would break jit.
  """
  if not is_concrete(value):
    return
  try:
    valid = bool(ok(value))
  except jax.errors.ConcretizationTypeError:  # compared with another, traced argument
    return
  if not valid:
    raise ValueError(f"{kind}: {arg} must be {want}, got {value!r}")


def static_int(kind: str, arg: str, value: Any, minimum: int = 1) -> Any:
  """An integer hyperparameter (a window, a step count), validated when concrete.

  ``optax.inject_hyperparams`` injects *every* numeric argument, defaults included, as an
  array: concrete when ``init`` runs eagerly, traced inside a jitted ``update``. A
  concrete value comes back as a Python int; a traced one passes through unchecked
  (``shape_int`` is for the places that need it as a shape).
  """
  if isinstance(value, jax.Array):
    if not jnp.issubdtype(value.dtype, jnp.integer) or value.ndim:
      raise ValueError(f"{kind}: {arg} must be an int >= {minimum}, got {value!r}")
    try:
      value = int(value)
    except jax.errors.ConcretizationTypeError:
      return value
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{kind}: {arg} must be an int >= {minimum}, got {value!r}")
  return int(value)


def shape_int(kind: str, arg: str, value: Any) -> int:
  """``value`` where it fixes an array shape: it must not be traced."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(
      f"{kind}: {arg} sets a shape and must not be traced "
      f"(under optax.inject_hyperparams pass static_args=({arg!r},))"
    )
  return int(value)


def fresh(x: Any, dtype: Any = None) -> jax.Array:
  """A new buffer holding ``x``: every leaf of an ``init`` state must own its memory,
  since a jitted step donates the whole optimizer state."""
  return jnp.array(x, dtype=dtype, copy=True)


def options(kind: str, arg: str, value: Any, default: Any, kinds: dict[str, type] | None = None):
  """An option group (a frozen dataclass) from itself, ``None`` (``default``), or a config
  dict of its fields; with ``kinds`` ({name: class}), a name or a dict with ``"kind"`` picks
  the class. Unknown names and fields are one-line errors naming them."""
  if value is None:
    return default
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    if kinds is not None and type(value) not in kinds.values():
      raise ValueError(f"{kind}: {arg} must be one of {sorted(kinds)}, got {value!r}")
    return value
  if kinds is not None and isinstance(value, str):
    value = {"kind": value}
  if not isinstance(value, dict):
    raise ValueError(f"{kind}: {arg} must be a {type(default).__name__} or a dict, got {value!r}")
  fields = dict(value)
  cls, base = type(default), default
  if kinds is not None:
    name = fields.pop("kind", None)
    if name is not None and name not in kinds:
      raise ValueError(f"{kind}: {arg} must be one of {sorted(kinds)}, got {name!r}")
    if name is not None and kinds[name] is not cls:
      cls, base = kinds[name], kinds[name]()
  names = {f.name for f in dataclasses.fields(cls)}
  for key in fields:
    if key not in names:
      raise ValueError(
        f"{kind}: {arg}.{key} is not a field of {cls.__name__} (it has: {', '.join(sorted(names))})"
      )
  return dataclasses.replace(base, **fields)
