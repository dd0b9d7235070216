"""Scale-out on JAX's own machinery: a named mesh, sharding rules, multi-host start-up.

The mesh has three named axes, ``("data", "fsdp", "expert")``; ``MeshConfig`` gives their
sizes, -1 meaning "the devices left". The batch is split over ``data`` × ``fsdp`` (FSDP
is data parallel with sharded weights). Every leaf of the train state (parameters, the
optimizer's moments — whose tree paths end in the same parameter names — and the
regulators' state) gets its sharding from one rule on its path and shape:

* logical axes first: the one parameter rule (``models/roles.py``) names a parameter's
  axes from its path and rank — embeddings [vocab, embed], matrices [embed, mlp] (in,
  out), MoE experts [expert, embed, mlp] / [expert, mlp, embed];
* ``LOGICAL_RULES`` maps logical axes to mesh axes: expert → ``expert``; the first of
  (vocab, embed, mlp) whose size divides by the ``fsdp`` size → ``fsdp``; the rest are
  replicated;
* anything else — gains, biases, step counters, the regulators' ring buffers, λ_p, EMA
  loads, the thyroid's weights — is replicated (small, and read whole by every device).

The train step is ``jax.jit`` with these shardings as ``in_shardings``/``out_shardings``;
XLA inserts the collectives (gradient reduce-scatter over data/fsdp, weight all-gathers).
Orbax checkpoints are sharded; restoring into a state laid out for another mesh reshards
(``Checkpointer.restore_latest`` takes the target's shardings from its ``like``).

Multi-host: ``initialize_distributed()`` calls ``jax.distributed.initialize`` when the
usual variables are set (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``; on TPU pods and SLURM jax finds them itself), and each host reads its
own disjoint windows (``window_batches(shard_index=process_index, ...)``) that
``global_batch`` assembles into one global array.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from homeo_jax.models.roles import logical_axes

MESH_AXES = ("data", "fsdp", "expert")
BATCH_AXES = ("data", "fsdp")
LOGICAL_RULES = {"expert": "expert", "vocab": "fsdp", "embed": "fsdp", "mlp": "fsdp"}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes; -1 (at most one) takes the devices left. Without a -1 the mesh
  uses the first prod(sizes) devices: 1×1×1 is one device."""

  data: int = -1
  fsdp: int = 1
  expert: int = 1
  # On the CPU backend: how many devices the host's cores are split into (data
  # parallel); 0 = one per core, as many as divide the batch (``split_cpu_cores``).
  # Default 1: XLA:CPU's collectives abort a process whose devices drift > 40 s apart,
  # which a machine shared with other work can cause (README, Benchmarks).
  cpu_devices: int = 1

  def validate(self) -> None:
    """Device-independent checks (config validation runs them before JAX starts)."""
    if self.cpu_devices < 0:
      raise ValueError(f"mesh.cpu_devices must be >= 0 (0 = one per core), got {self.cpu_devices}")
    sizes = [self.data, self.fsdp, self.expert]
    for name, s in zip(MESH_AXES, sizes, strict=True):
      if s == 0 or s < -1:
        raise ValueError(f"mesh.{name} must be >= 1 or -1 (the devices left), got {s}")
    if sizes.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {sizes}")

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    self.validate()
    sizes = [self.data, self.fsdp, self.expert]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"mesh {sizes} does not divide {num_devices} devices")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) > num_devices:
      raise ValueError(f"mesh {sizes} needs {math.prod(sizes)} devices, there are {num_devices}")
    return tuple(sizes)


def make_mesh(config: MeshConfig, devices: list | None = None) -> Mesh:
  """The mesh over the first prod(sizes) devices (all of them when an axis is -1)."""
  devices = jax.devices() if devices is None else devices
  shape = config.shape(len(devices))
  return Mesh(np.asarray(devices[: math.prod(shape)]).reshape(shape), MESH_AXES)


def partition_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Map logical axes to mesh axes: expert → expert; one divisible axis → fsdp."""
  spec: list[str | None] = []
  fsdp_used = mesh.shape["fsdp"] == 1
  for name, size in zip(logical_axes(path, shape), shape, strict=True):
    axis = LOGICAL_RULES.get(name) if name else None
    if axis == "expert" and mesh.shape["expert"] > 1 and size % mesh.shape["expert"] == 0:
      spec.append("expert")
    elif axis == "fsdp" and not fsdp_used and size % mesh.shape["fsdp"] == 0:
      spec.append("fsdp")
      fsdp_used = True
    else:
      spec.append(None)
  return PartitionSpec(*spec)


def state_shardings(tree: Any, mesh: Mesh) -> Any:
  """A ``NamedSharding`` for every leaf of ``tree`` (a TrainState, params, anything)."""

  def rule(path, leaf):
    shape = tuple(np.shape(leaf))
    return NamedSharding(mesh, partition_spec(jax.tree_util.keystr(path), shape, mesh))

  return jax.tree_util.tree_map_with_path(rule, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches ``[B, T]`` split over data × fsdp on the batch axis."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """This host's rows -> the global batch array (one host: a plain sharded put)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local)


def initialize_distributed() -> bool:
  """``jax.distributed.initialize`` from the environment, once; True if it ran."""
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  if not all(n in os.environ for n in names):
    return False
  jax.distributed.initialize(
    coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
    num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
    process_id=int(os.environ["JAX_PROCESS_ID"]),
  )
  return True
