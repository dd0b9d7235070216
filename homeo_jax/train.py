"""Command-line entry point: ``python -m homeo_jax.train --config configs/X.py[:preset]``.

    python -m homeo_jax.train --config configs/shakespeare_char.py:cpu --set train.steps=200

Exit status: 0 when the run finished or paused (launch again to resume), 2 on a bad
config value, data or run folder (one line on stderr naming the key), 3 when non-finite
values stopped the run (``train.on_nonfinite``), 4 when no checkpoint could be restored.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from homeo_jax.training import config as config_lib
from homeo_jax.training.checkpoint import CheckpointError
from homeo_jax.training.loop import NonFiniteError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="homeo_jax.train", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file, optionally :preset")
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config value, e.g. optimizer.learning_rate=3e-4",
  )
  parser.add_argument("--run_dir", default=None, help="shorthand for --set train.run_dir=...")
  parser.add_argument(
    "--set_lambda",
    type=float,
    default=None,
    help="pin the Ouro-Spec compute price λ_p (optimizer.kwargs.fixed_price)",
  )
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    overrides = list(args.set)
    if args.set_lambda is not None:
      overrides.append(f"optimizer.kwargs.fixed_price={args.set_lambda}")
    config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
    if args.run_dir:
      config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, run_dir=args.run_dir)
      )
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
