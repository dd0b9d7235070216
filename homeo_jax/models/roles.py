"""The one parameter-group rule: every parameter's role, from its path, in one table.

``PARAM_RULES`` is a list of ``(regex, role, logical axes)`` in big_vision's style: the
first regex that matches the end of a leaf's tree path (``['blocks'][0]['attn']['qkv']
['kernel']``, also inside an optimizer state, e.g. ``[0].mu['blocks']...``) gives its
role; the logical axes name its dimensions for sharding when the rank matches. Roles:

* ``embedding`` — token and position tables, the hybrid embedding's projection;
* ``attention`` — attention projections (qkv / query, key_value, out);
* ``mlp`` — dense feed-forward matrices;
* ``expert`` — MoE expert stacks ``[E, in, out]``;
* ``router`` — the MoE router (linear gate, GRU, logit norm matrices);
* ``gate`` — the adaptive model's continue gate;
* ``norm`` — gains, biases and other vectors (any 1-D leaf no rule names);
* ``other`` — any other matrix.

Everything that groups parameters reads roles from here: the optimizers (Muon for
``attention``/``mlp``/``expert`` matrices, AdamW for the rest; weight decay on all but
``norm``), the Thyroid's organelle groups, sharding (``logical_axes``) and quantization
(``attention`` and ``mlp`` matrices are stored in 2 bits).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
from optax.contrib import MuonDimensionNumbers

ROLES = ("embedding", "attention", "mlp", "expert", "router", "gate", "norm", "other")
EMBED_MLP = ("embed", "mlp")

PARAM_RULES: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
  (r"\['(scale|bias|lam|layer_embedding)'\]$", "norm", None),
  (r"\['(lookup|token_embed|pos_embed)'\]\['embedding'\]$", "embedding", ("vocab", "embed")),
  (r"\['token_embed'\]\['project'\]\['kernel'\]$", "embedding", EMBED_MLP),
  (r"\['w_up'\]$", "expert", ("expert", "embed", "mlp")),
  (r"\['w_down'\]$", "expert", ("expert", "mlp", "embed")),
  (r"\['mlp'\]\['(gate|gru|logit_norm)'\].*\['kernel'\]$", "router", EMBED_MLP),
  (r"\['gate_(hidden|out)'\]\['kernel'\]$", "gate", EMBED_MLP),
  (r"\['(attn|query|key_value|out)'\].*\['kernel'\]$", "attention", EMBED_MLP),
  (r"\['mlp'\]\['(up|down)'\]\['kernel'\]$", "mlp", EMBED_MLP),
)
_COMPILED = tuple((re.compile(p), role, axes) for p, role, axes in PARAM_RULES)

MUON_ROLES = ("attention", "mlp", "expert")
ORGANELLES = ("embed", "attention", "mlp", "other")  # the Thyroid's v0.3 groups
_ORGANELLE = {"embedding": "embed", "attention": "attention", "mlp": "mlp", "expert": "mlp"}


def _clean(path: str) -> str:
  return path[: -len(".value")] if path.endswith(".value") else path


def _rule(path: str) -> tuple[str, tuple[str, ...] | None] | None:
  path = _clean(path)
  for pattern, role, axes in _COMPILED:
    if pattern.search(path):
      return role, axes
  return None


def param_role(path: str, ndim: int) -> str:
  """The role of the leaf at ``path`` (a ``keystr``) of rank ``ndim``."""
  rule = _rule(path)
  if rule is not None:
    return rule[0]
  return "norm" if ndim <= 1 else "other"


def logical_axes(path: str, shape: tuple[int, ...]) -> tuple[str | None, ...]:
  """Logical axis names of the leaf at ``path``; None (replicated) where no rule names them."""
  rule = _rule(path)
  if rule is not None and rule[1] is not None and len(rule[1]) == len(shape):
    return rule[1]
  return (None,) * len(shape)


def _map(fn, params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(
    lambda path, x: fn(param_role(jax.tree_util.keystr(path), x.ndim), x), params
  )


def param_roles(params: Any) -> Any:
  """A tree of role strings like ``params``."""
  return _map(lambda role, _: role, params)


def weight_decay_mask(params: Any) -> Any:
  """True where weight decay applies: every role but ``norm`` (gains, biases, vectors)."""
  return _map(lambda role, _: role != "norm", params)


def muon_dimension_numbers(params: Any) -> Any:
  """Muon's matrix view of each leaf it orthogonalizes, None (AdamW) elsewhere.

  Attention and MLP matrices are [in, out]; expert stacks [E, in, out] are E matrices.
  Embeddings, the router, the gate and vectors go to AdamW, as in modded-nanogpt.
  """

  def dims(role, x):
    if role not in MUON_ROLES:
      return None
    if role == "expert" and x.ndim == 3:
      return MuonDimensionNumbers(reduction_axis=1, output_axis=2)
    return MuonDimensionNumbers() if x.ndim == 2 else None

  return _map(dims, params)


def organelle_labels(params: Any) -> Any:
  """The Thyroid's v0.3 groups: embed, attention, mlp (experts too), other."""
  return _map(lambda role, _: _ORGANELLE.get(role, "other"), params)


class QueryKeyColumns(NamedTuple):
  """Where layer ``layer``'s queries and keys sit among a kernel's output columns: head h's
  queries are columns ``query + h·hd`` … ``query + (h+1)·hd`` with ``hd = width / heads``,
  its keys likewise from ``key``; -1 where the kernel holds none."""

  layer: int
  query: int
  key: int
  width: int  # columns of all heads' queries (= of their keys)


# (regex, which projection): the fused qkv of ``layers.CausalSelfAttention`` ([q | k | v],
# heads-major within each) and the adaptive layer's separate query and [k | v] kernels.
_QUERY_KEY_RULES = (
  (re.compile(r"\['(?:blocks|layers)'\]\[(\d+)\]\['attn'\]\['qkv'\]\['kernel'\]$"), "qkv"),
  (re.compile(r"\['(?:blocks|layers)'\]\[(\d+)\].*\['query'\]\['kernel'\]$"), "query"),
  (re.compile(r"\['(?:blocks|layers)'\]\[(\d+)\].*\['key_value'\]\['kernel'\]$"), "key_value"),
)


def query_key_columns(params: Any) -> dict[str, QueryKeyColumns]:
  """``{leaf path: QueryKeyColumns}`` for every attention kernel holding queries or keys
  (QK-clip rescales those columns per head); other leaves are absent."""
  found = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = jax.tree_util.keystr(path)
    for pattern, kind in _QUERY_KEY_RULES:
      match = pattern.search(_clean(key))
      if match is None or getattr(x, "ndim", 0) != 2:
        continue
      layer, out = int(match.group(1)), x.shape[-1]
      found[key] = {
        "qkv": QueryKeyColumns(layer, 0, out // 3, out // 3),
        "query": QueryKeyColumns(layer, 0, -1, out),
        "key_value": QueryKeyColumns(layer, -1, 0, out // 2),
      }[kind]
      break
  return found


def is_quantized(role: str, ndim: int) -> bool:
  """The matrices the quantized LM stores in 2 bits: attention and MLP kernels."""
  return role in ("attention", "mlp") and ndim == 2
