"""Command-line entry point: ``python -m homeo_jax.train --config configs/X.py[:preset]``.

    python -m homeo_jax.train --config configs/shakespeare_char.py:cpu --set train.steps=200
    python -m homeo_jax.train --resume runs/shakespeare_char_cpu --set train.steps=8000

``--resume`` takes a run folder (or a checkpoint inside it): the run's own config.json is
the config (``--set`` still applies) and training continues from its latest checkpoint.

Exit status: 0 when the run finished or paused (launch again to resume), 2 on a bad
config value, data or run folder (one line on stderr naming the key), 3 when non-finite
values stopped the run (``train.on_nonfinite``), 4 when no checkpoint could be restored.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from homeo_jax.training import config as config_lib
from homeo_jax.training.checkpoint import CheckpointError
from homeo_jax.training.loop import NonFiniteError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="homeo_jax.train", description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=None, help="config file, optionally :preset")
  parser.add_argument(
    "--resume",
    default=None,
    metavar="RUN",
    help="continue the run in this folder (or a checkpoint inside it) from its latest checkpoint",
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config value, e.g. optimizer.learning_rate=3e-4",
  )
  parser.add_argument("--run_dir", default=None, help="shorthand for --set train.run_dir=...")
  parser.add_argument(
    "--set_control",
    action="append",
    default=[],
    metavar="NAME.FIELD=VALUE",
    help="pin the control FIELD that regulator NAME publishes, e.g. compute_price.compute_price"
    "=0.02 (train.pinned_controls)",
  )
  parser.add_argument(
    "--seed", type=int, default=None, help="shorthand for --set train.seed=N --set data.seed=N"
  )
  parser.add_argument(
    "--hard_kill",
    action="store_true",
    help="recurrence off, one pass per layer (shorthand for --set model.hard_kill=true)",
  )
  parser.add_argument(
    "--gen_every",
    type=int,
    default=None,
    help="generate a sample every N steps (shorthand for --set train.sample_every=N)",
  )
  args = parser.parse_args(argv)
  if (args.config is None) == (args.resume is None):
    parser.error("give exactly one of --config and --resume")
  if args.resume is not None and args.run_dir is not None:
    parser.error("--resume continues the run in its own folder: drop --run_dir")
  return args


def cli_overrides(args: argparse.Namespace) -> list[str]:
  """The ``--set`` overrides the command line amounts to, shorthands included."""
  overrides = list(args.set)
  for item in args.set_control:
    overrides.append(f"train.pinned_controls.{item}")
  if args.seed is not None:
    overrides += [f"train.seed={args.seed}", f"data.seed={args.seed}"]
  if args.hard_kill:
    overrides.append("model.hard_kill=true")
  if args.gen_every is not None:
    overrides.append(f"train.sample_every={args.gen_every}")
  return overrides


def resumed_run(path: str) -> tuple[Path, config_lib.Config]:
  """The run folder holding ``path`` (itself or a parent with a config.json) and its config."""
  for folder in (Path(path), *Path(path).parents):
    if (folder / "config.json").is_file():
      return folder, config_lib.from_json((folder / "config.json").read_text())
  raise config_lib.ConfigError(f"--resume {path!r}: no config.json in it or any parent folder")


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    overrides = cli_overrides(args)
    if args.resume is not None:
      run_dir, base = resumed_run(args.resume)
      run_dir = str(run_dir)
    else:
      run_dir, base = args.run_dir, config_lib.load_config(args.config)
    config = config_lib.apply_overrides(base, overrides)
    if run_dir:
      config = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=run_dir))
    config_lib.validate_config(config)
    from homeo_jax.training.cpu import split_cpu_cores
    from homeo_jax.training.loop import train
    from homeo_jax.training.sharding import initialize_distributed

    split_cpu_cores(config.mesh, config.data.batch_size)  # CPU: one device per core
    initialize_distributed()  # multi-host: from JAX_COORDINATOR_ADDRESS etc. when set

    result = train(config)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  except (NonFiniteError, CheckpointError) as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    return 3 if isinstance(e, NonFiniteError) else 4
  print(f"{result.status}: {result.run_dir} (report: {result.run_dir / 'report.md'})")
  return 0


if __name__ == "__main__":
  from homeo_jax.training.cpu import reexec_with_page_keeping_allocator

  # On a CPU: tcmalloc or huge pages, before JAX starts (training/cpu.py); a no-op elsewhere.
  reexec_with_page_keeping_allocator(["-m", "homeo_jax.train", *sys.argv[1:]])
  sys.exit(main())
