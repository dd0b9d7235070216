"""Training on a CPU: one data-parallel device per core, and an allocator that keeps pages.

Two process-level settings, both measured on nanoGPT's CPU recipe and the ``cpu``
preset by ``experiments/bench_cpu_step.py`` (README, Benchmarks), both applied by the
command-line entry points (``homeo_jax.train``, the experiments) before JAX starts:

* ``split_cpu_cores`` (opt-in, ``--set mesh.cpu_devices=0``): XLA:CPU runs one op at a
  time and splits each over the cores; at the shapes a CPU trains, the split's
  synchronisation eats part of its gain. One JAX device per core runs each core's share
  of the batch on its own, with one gradient all-reduce per step (the mesh's ``data``
  axis takes the devices; the loss is the global batch mean, so the math is the same).
  Measured: 15% faster on the ``cpu`` preset's old 128-token shape, no gain at nanoGPT's
  64-token shape. Not the default: XLA:CPU aborts the process when one device reaches an
  all-reduce more than 40 s after another, which happened once here at a checkpoint while
  another JAX process shared the two cores; when it splits, the library raises that
  limit to 10 minutes.
* ``reexec_with_page_keeping_allocator``: XLA:CPU allocates each step's temporaries as
  one block far above glibc's mmap threshold, so every step maps fresh pages and faults
  each 4 KiB of them in (1.6 M faults in 30 steps of the ``cpu`` preset). tcmalloc keeps
  freed pages; glibc's ``hugetlb`` tunable backs the block with 2 MiB pages. Either is
  set in the environment and the process re-executed once (the dynamic loader and
  glibc read them only at start-up).
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys

from homeo_jax.training.sharding import MeshConfig

ALLOCATOR_ENV = "HOMEO_JAX_ALLOCATOR"  # "auto" (default), "tcmalloc", "hugepages", "system"
TCMALLOC_PATHS = (
  "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
  "/usr/lib64/libtcmalloc_minimal.so.4",
)


def accelerator_installed() -> bool:
  """True when a JAX GPU/TPU plugin is installed (JAX would not default to the CPU)."""
  plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")
  return any(importlib.util.find_spec(name) is not None for name in plugins)


def cpu_is_the_platform() -> bool:
  platform = os.environ.get("JAX_PLATFORMS", "").split(",")[0]
  return platform == "cpu" or (platform == "" and not accelerator_installed())


def cpu_device_count(requested: int, cores: int, batch_size: int) -> int:
  """``requested`` devices, or with 0 the most, up to one per core, that split the batch."""
  if requested > 0:
    return requested
  return max(d for d in range(1, max(cores, 1) + 1) if batch_size % d == 0)


COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds=600"


def split_cpu_cores(mesh: MeshConfig, batch_size: int) -> int | None:
  """Expose this host's CPU cores as ``mesh.cpu_devices`` data-parallel JAX devices
  (see the module docstring); returns the device count it set.

  Call it before JAX starts (the CLI and the experiments do). It changes nothing, and
  returns None, when JAX's backends are already up, the device count is set already
  (``XLA_FLAGS`` or ``JAX_NUM_CPU_DEVICES``), an accelerator or another platform is
  selected, several processes run, ``cpu_devices`` is 1 (the default), or a user-set mesh
  is in force with ``cpu_devices=0``.
  """
  import jax
  from jax._src import xla_bridge

  default_mesh = (mesh.data, mesh.fsdp, mesh.expert) == (-1, 1, 1)
  if (
    xla_bridge.backends_are_initialized()
    or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    or "JAX_NUM_CPU_DEVICES" in os.environ
    or not cpu_is_the_platform()
    or "JAX_COORDINATOR_ADDRESS" in os.environ
    or mesh.cpu_devices == 1
    or (mesh.cpu_devices == 0 and not default_mesh)
  ):
    return None
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  count = cpu_device_count(mesh.cpu_devices, cores or 1, batch_size)
  if count > 1 and "collective_call_terminate" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {COLLECTIVE_TIMEOUT_FLAG}".strip()
  jax.config.update("jax_num_cpu_devices", count)
  return count


def allocator_environment(choice: str) -> dict[str, str]:
  """The environment that gives this process a page-keeping allocator (empty: none)."""
  if choice == "system" or not sys.platform.startswith("linux"):
    return {}
  if choice in ("auto", "tcmalloc"):
    found = ctypes.util.find_library("tcmalloc_minimal")
    paths = [p for p in TCMALLOC_PATHS if os.path.exists(p)]
    library = paths[0] if paths else found
    if library:
      preload = os.environ.get("LD_PRELOAD", "")
      return {"LD_PRELOAD": f"{library}:{preload}".rstrip(":")}
    if choice == "tcmalloc":
      raise RuntimeError(
        f"{ALLOCATOR_ENV}=tcmalloc but libtcmalloc_minimal.so.4 is not installed "
        "(Debian/Ubuntu: apt install libtcmalloc-minimal4)"
      )
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  return {"GLIBC_TUNABLES": f"{tunables}:glibc.malloc.hugetlb=1".lstrip(":")}


def reexec_with_page_keeping_allocator(argv: list[str]) -> None:
  """Re-execute this process (same PID, ``argv``) with tcmalloc preloaded, or glibc's
  huge-page tunable, when training on the CPU. Returns without doing anything when it
  already ran, the allocator is set, ``HOMEO_JAX_ALLOCATOR=system``, or JAX will not
  run on the CPU."""
  choice = os.environ.get(ALLOCATOR_ENV, "auto")
  if choice not in ("auto", "tcmalloc", "hugepages", "system"):
    raise ValueError(f"{ALLOCATOR_ENV} must be auto, tcmalloc, hugepages or system, got {choice!r}")
  already = "tcmalloc" in os.environ.get("LD_PRELOAD", "") or "hugetlb" in os.environ.get(
    "GLIBC_TUNABLES", ""
  )
  if os.environ.get("HOMEO_JAX_REEXECUTED") or already or not cpu_is_the_platform():
    return
  env = allocator_environment(choice)
  if not env:
    return
  os.environ.update(env, HOMEO_JAX_REEXECUTED="1")
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *argv])
