"""Generate text from a trained run: ``python -m homeo_jax.sample --run_dir RUN``.

    python -m homeo_jax.sample --run_dir runs/shakespeare_char_cpu --prompt "ROMEO:" \\
        --num_samples 3 --max_new_tokens 300 --temperature 0.8 --top_k 20

Loads the newest readable checkpoint (the folder is not changed) and samples with the
regulators' deployment controls in one jitted, KV-cached decode loop for every model type
(``models/decode.py``; the adaptive-depth model runs each token's early-exit
``lax.while_loop``, and ``--show_passes`` prints the passes each token took). Exit
status 2 with one line on stderr for a bad folder, prompt or argument.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from homeo_jax.data.tokenizers import encode_prompt
from homeo_jax.training.config import ConfigError
from homeo_jax.training.trained import RunFolderError, TrainedRun, load_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="homeo_jax.sample", description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", required=True, help="a run folder written by homeo_jax.train")
  parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
  parser.add_argument("--num_samples", type=int, default=1)
  parser.add_argument("--max_new_tokens", type=int, default=500)
  parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
  parser.add_argument("--top_k", type=int, default=0, help="0 keeps every token")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--show_passes", action="store_true",
    help="adaptive-depth model: print the passes each token took (mean over layers)",
  )  # fmt: skip
  return parser.parse_args(argv)


def sample(
  run: TrainedRun,
  prompt: str,
  *,
  num_samples: int = 1,
  max_new_tokens: int = 500,
  temperature: float = 0.8,
  top_k: int = 0,
  seed: int = 0,
) -> tuple[list[str], dict[str, np.ndarray]]:
  """``num_samples`` continuations of ``prompt`` (prompt included), decoded to text, and
  the model's per-token decode telemetry (``passes`` for the adaptive model)."""
  from homeo_jax.models.decode import generate

  if num_samples < 1:
    raise ValueError(f"--num_samples must be >= 1, got {num_samples}")
  ids = encode_prompt(run.data.tokenizer, prompt, "--prompt")
  tokens, info = generate(
    run.model,
    np.broadcast_to(ids, (num_samples, len(ids))),
    max_new_tokens,
    key=jax.random.key(seed),
    temperature=temperature,
    top_k=top_k,
    controls=run.controls,
    with_info=True,
  )
  texts = [run.data.tokenizer.decode(row) for row in np.asarray(tokens)]
  return texts, {k: np.asarray(v) for k, v in info.items()}


def describe_passes(passes: np.ndarray) -> str:
  """One sample's passes per token (the last token is sampled, not fed: left out)."""
  fed = passes[:-1]
  counts = np.bincount(np.rint(fed).astype(int))
  shares = ", ".join(f"{k}: {c / len(fed):.0%}" for k, c in enumerate(counts) if c)
  digits = "".join(str(int(round(p))) for p in fed)
  return f"passes per token (mean over layers {fed.mean():.2f}; {shares}):\n{digits}"


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    run = load_run(args.run_dir)
    if args.show_passes and run.config.model_type != "adaptive_transformer":
      raise ValueError(
        f"--show_passes needs the adaptive-depth model; {args.run_dir} is a {run.config.model_type}"
      )
    texts, info = sample(
      run,
      args.prompt,
      num_samples=args.num_samples,
      max_new_tokens=args.max_new_tokens,
      temperature=args.temperature,
      top_k=args.top_k,
      seed=args.seed,
    )
  except (RunFolderError, ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"# {args.run_dir} at step {run.step}", file=sys.stderr)
  blocks = [
    f"{text}\n\n{describe_passes(info['passes'][i])}" if args.show_passes else text
    for i, text in enumerate(texts)
  ]
  print("\n---------------\n".join(blocks))
  return 0


if __name__ == "__main__":
  sys.exit(main())
