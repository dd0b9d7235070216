"""Score a trained run on any text: ``python -m homeo_jax.evaluate --run_dir RUN [--text T]``.

    python -m homeo_jax.evaluate --run_dir runs/shakespeare_char_cpu              # its val split
    python -m homeo_jax.evaluate --run_dir runs/shakespeare_char_cpu --text python_stdlib
    python -m homeo_jax.evaluate --run_dir runs/shakespeare_char_cpu --text notes.txt

Prints the mean cross entropy per token (nats), perplexity and bits per character, over
consecutive non-overlapping windows of the run's ``data.seq_len`` (every token after the
first scored once), with the regulators' deployment controls — the run's own evaluation
step. ``--text`` is a built-in corpus name or a file/folder path; without it, the run's
validation split. Characters outside a character-level run's vocabulary are left out of
the text (and so of the score), with one warning line saying how many, which, and what
share; ``--strict`` refuses such a text instead. Exit status 2 with one line on stderr for
a bad folder or text.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import sys

import jax
import numpy as np

from homeo_jax.data import corpora
from homeo_jax.training.config import ConfigError
from homeo_jax.training.trained import RunFolderError, TrainedRun, load_run


@dataclasses.dataclass(frozen=True)
class Score:
  loss: float  # nats per token
  perplexity: float
  bits_per_char: float
  tokens: int  # tokens scored
  chars: int  # characters those tokens decode to


def windows(tokens: np.ndarray, seq_len: int) -> list[np.ndarray]:
  """Consecutive windows overlapping by one token, so every token after the first is a
  target exactly once: ``[n, seq_len + 1]``, then one shorter ``[1, r + 1]`` for the
  remainder (a text shorter than a window is that one window)."""
  if len(tokens) < 2:
    raise ValueError(f"the text has {len(tokens)} token(s); scoring needs at least 2")
  tokens = np.asarray(tokens, np.int32)
  n, rest = divmod(len(tokens) - 1, seq_len)
  groups = []
  if n:
    groups.append(np.stack([tokens[i * seq_len : (i + 1) * seq_len + 1] for i in range(n)]))
  if rest:
    groups.append(tokens[n * seq_len :][None])
  return groups


def score_tokens(run: TrainedRun, tokens: np.ndarray, *, batch_size: int = 32) -> Score:
  from homeo_jax.training.step import functional_model, make_eval_step

  apply_fn, params = functional_model(run.model)
  eval_step = jax.jit(make_eval_step(apply_fn))
  nats, count, chars = 0.0, 0, 0
  for rows in windows(tokens, run.config.data.seq_len):
    for start in range(0, len(rows), batch_size):  # a new batch shape compiles once more
      batch = rows[start : start + batch_size]
      nats += float(eval_step(params, run.state.opt_state, batch)) * batch[:, 1:].size
      count += batch[:, 1:].size
      chars += sum(len(run.data.tokenizer.decode(row[1:])) for row in batch)
  loss = nats / count
  return Score(loss, math.exp(loss), nats / (math.log(2) * max(chars, 1)), count, chars)


def drop_unknown(tokenizer, raw: str) -> tuple[str, str | None]:
  """``raw`` without the characters ``tokenizer`` cannot encode, and a warning line naming
  them (None when there are none, or the tokenizer has no unknown characters)."""
  if not hasattr(tokenizer, "known"):
    return raw, None
  known = tokenizer.known(raw)
  if known.all():
    return raw, None
  chars = np.array(list(raw))
  unknown = collections.Counter(chars[~known].tolist())
  listed = ", ".join(f"{c!r} ×{n}" for c, n in unknown.most_common(10))
  more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
  share = (~known).sum() / len(raw)
  warning = (
    f"warning: {(~known).sum():,} of {len(raw):,} characters ({100 * share:.4f}%) are not in "
    f"the run's vocabulary and are left out of the score: {listed}{more}"
  )
  return "".join(chars[known].tolist()), warning


def text_tokens(
  run: TrainedRun, text: str | None, max_tokens: int = 0, *, strict: bool = False
) -> np.ndarray:
  """The run's validation tokens, or ``text`` (a corpus name or path) tokenized (unknown
  characters dropped with a warning on stderr, or refused with ``strict``)."""
  if text is None:
    tokens = run.data.val_tokens
  else:
    try:
      raw = corpora.load_corpus(text)
    except (OSError, ValueError, UnicodeError) as e:
      reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
      raise ValueError(f"--text {text!r} cannot be read: {reason}") from None
    if not raw.strip():
      raise ValueError(f"--text {text!r} is empty")
    if not strict:
      raw, warning = drop_unknown(run.data.tokenizer, raw)
      if warning:
        print(warning, file=sys.stderr)
    try:
      tokens = run.data.tokenizer.encode(raw)
    except (KeyError, ValueError) as e:
      raise ValueError(f"--text {text!r} cannot be encoded by the run's tokenizer: {e}") from None
  return np.asarray(tokens[:max_tokens] if max_tokens else tokens)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="homeo_jax.evaluate", description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", required=True)
  parser.add_argument("--text", default=None, help="corpus name or path (default: val split)")
  parser.add_argument("--max_tokens", type=int, default=0, help="score the first N (0: all)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--json", action="store_true", help="print the score as one JSON line")
  parser.add_argument(
    "--strict", action="store_true", help="refuse a text with characters outside the vocabulary"
  )
  args = parser.parse_args(argv)
  try:
    if args.batch_size < 1 or args.max_tokens < 0:
      raise ValueError(
        f"--batch_size must be >= 1 and --max_tokens >= 0, got {args.batch_size}, {args.max_tokens}"
      )
    run = load_run(args.run_dir)
    score = score_tokens(
      run,
      text_tokens(run, args.text, args.max_tokens, strict=args.strict),
      batch_size=args.batch_size,
    )
  except (RunFolderError, ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  name = args.text or f"{run.config.data.corpus} (validation split)"
  if args.json:
    print(
      json.dumps(
        {"run_dir": str(args.run_dir), "step": run.step, "text": name, **dataclasses.asdict(score)}
      )
    )
  else:
    print(
      f"{args.run_dir} (step {run.step}) on {name}: loss {score.loss:.4f} nats/token, "
      f"perplexity {score.perplexity:.3f}, {score.bits_per_char:.4f} bits/char "
      f"({score.tokens:,} tokens, {score.chars:,} chars)"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
