"""What every regulator state shares: published controls and logged fields.

A regulator's state is a ``NamedTuple`` that may carry two class attributes (class
attributes, not fields, so they never enter the pytree):

* ``regulator_name``: the namespace of its metrics (``regulators/<name>/<field>``);
* ``logged_fields``: the scalar fields the training loop logs every step.

A regulator that steers the *model* stores what it publishes in a field named
``controls`` (a dict of arrays). ``controls(opt_state)`` gathers them from anywhere in
an optax state tree — inside ``chain``, ``multi_transform`` or ``inject_hyperparams``
— so the training step reads them without knowing which regulators are present.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _is_regulator_state(node: Any) -> bool:
  return isinstance(node, tuple) and hasattr(type(node), "regulator_name")


def regulator_states(opt_state: Any) -> list[Any]:
  """Every regulator state in ``opt_state``, in tree order."""
  nodes = jax.tree.leaves(opt_state, is_leaf=_is_regulator_state)
  return [n for n in nodes if _is_regulator_state(n)]


def controls(opt_state: Any) -> dict[str, jax.Array]:
  """The controls all regulators in ``opt_state`` publish to the model, merged.

  Two regulators publishing the same control name is a configuration error.
  """
  merged: dict[str, jax.Array] = {}
  for state in regulator_states(opt_state):
    for name, value in getattr(state, "controls", {}).items():
      if name in merged:
        raise ValueError(f"control {name!r} is published by two regulators")
      merged[name] = value
  return merged


def regulator_metrics(opt_state: Any) -> dict[str, jax.Array]:
  """``{"regulators/<name>/<field>": scalar}`` for every logged field of every regulator.

  A field that is an array or a tree (e.g. one value per parameter leaf) is logged as
  the mean over all its elements.
  """
  metrics: dict[str, jax.Array] = {}
  for state in regulator_states(opt_state):
    for field in getattr(type(state), "logged_fields", ()):
      leaves = [
        jnp.ravel(jnp.asarray(x, jnp.float32)) for x in jax.tree.leaves(getattr(state, field))
      ]
      if leaves:
        metrics[f"regulators/{state.regulator_name}/{field}"] = jnp.mean(jnp.concatenate(leaves))
  return metrics
