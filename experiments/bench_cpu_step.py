"""Our train step against PyTorch's on the same CPU, side by side, and where ours goes.

    python -m experiments.bench_cpu_step                      # nanoGPT + block128, vs PyTorch
    python -m experiments.bench_cpu_step --systems            # + MoE, adaptive, 2-bit vs dense
    python -m experiments.bench_cpu_step --devices 1 auto     # one device vs one per core

Every measurement runs in its own fresh interpreter, one after another (the JAX CPU
device count is fixed at start-up, and PyTorch's OpenMP threads must not spin while JAX
runs). Each worker times ``--steps`` optimizer steps after warm-up (median, step and
metrics blocked on) and prints one JSON line; this script prints the table and the ratio.

* **ours**: the loop's own jitted step (``training.build.setup``: the config's optimizer,
  clipping, regulators, non-finite guard, state donated) on batches already on device.
* **PyTorch** (the optional ``bench`` extra, ``pip install -e .[bench]``): the same
  architecture (pre-norm GPT, bias-free LayerNorm and Linear, tied head, tanh GELU,
  ``scaled_dot_product_attention``), AdamW (decay on matrices and embeddings, clip 1.0),
  eager, ``torch.get_num_threads()`` = the cores: nanoGPT's CPU recipe as nanoGPT runs it.
* **breakdown**: a ``jax.profiler`` trace of our step, each compiled op attributed by the
  named scope in its HLO metadata (``embed``, ``norm``, ``attention``, ``ffn``, ``head``,
  ``loss``, ``optimizer``, ``nonfinite_guard``), forward vs backward (``transpose(jvp``);
  time per device, summed over ops (idle and dispatch time between ops is the rest).

Recipes: ``nanogpt`` — nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64,
batch 12, AdamW 1e-3 β2 0.99, dropout 0); ``cpu`` — ``configs/shakespeare_char.py:cpu``
(the same shape since it was retuned); ``block128`` — block 128, batch 32
(the older ``cpu`` shape).
With ``--systems``: each system's CPU config (SpecHorn MoE, Ouro-Spec adaptive, 2-bit
Thyroid) against a dense twin of the same shape and batch under plain AdamW.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NANOGPT = [
  "model.num_layers=4",
  "model.num_heads=4",
  "model.d_model=128",
  "model.max_seq_len=64",
  "model.dropout=0.0",
  "data.seq_len=64",
  "data.batch_size=12",
  "optimizer.learning_rate=1e-3",
  "optimizer.min_learning_rate=1e-4",
  "optimizer.warmup_steps=100",
  "train.steps=2000",
]
# The ``cpu`` preset before it became nanoGPT's shape: block 128, batch 32, 4 × 128 wide.
BLOCK128 = ["model.max_seq_len=128", "data.seq_len=128", "data.batch_size=32"]
RECIPES = {
  "nanogpt": ("shakespeare_char.py:cpu", NANOGPT),
  "cpu": ("shakespeare_char.py:cpu", []),
  "block128": ("shakespeare_char.py:cpu", BLOCK128),
  "moe": ("spechorn.py:cpu", []),
  "adaptive": ("ouro_spec.py:tiny", []),
  "2bit": ("thyroid_2bit.py:cpu", []),
}
SCOPES = ("embed", "norm", "attention", "ffn", "head", "loss", "optimizer", "nonfinite_guard")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def load_recipe(recipe: str, dense_twin: bool = False):
  from homeo_jax.models import TransformerConfig
  from homeo_jax.training.config import OptimizerConfig, apply_overrides, load_config

  file, overrides = RECIPES[recipe]
  config = apply_overrides(load_config(f"{ROOT}/configs/{file}"), overrides)
  if dense_twin:  # the same shape and batch as a plain Transformer under AdamW
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    model = TransformerConfig(**{k: v for k, v in vars(config.model).items() if k in fields})
    optimizer = OptimizerConfig(
      name="adamw", learning_rate=config.optimizer.learning_rate, b2=config.optimizer.b2
    )
    config = dataclasses.replace(config, model_type="transformer", model=model, optimizer=optimizer)
  return config


# ----------------------------------------------------------------------------- workers


def op_categories(hlo_text: str) -> dict[str, str]:
  """Compiled op name -> ``scope/forward|backward``, ``collectives`` or ``other``."""
  categories = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
    if not m:
      continue
    name, opcode = m.groups()
    op_name = re.search(r'op_name="([^"]*)"', line)
    op_name = op_name.group(1) if op_name else ""
    if any(opcode.startswith(c) for c in COLLECTIVES):
      categories[name] = "collectives"
      continue
    found = [s for s in SCOPES if re.search(rf"[/(]{s}[)/]", op_name)]
    if not found:
      categories[name] = "other"
    elif found[0] in ("optimizer", "nonfinite_guard"):
      categories[name] = found[0]
    else:
      phase = "backward" if "transpose(jvp(" in op_name else "forward"
      categories[name] = f"{found[-1]}/{phase}"
  return categories


def profile_step(step, state, batches, devices: int) -> dict[str, float]:
  """Milliseconds per step and device in each category, from a jax.profiler trace."""
  import jax

  hlo = step.lower(state, batches[0]).compile().as_text()
  categories = op_categories(hlo)
  steps = 10
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for i in range(steps):
        state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(metrics)
    trace_file = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    with gzip.open(trace_file) as f:
      events = json.load(f)["traceEvents"]
  total = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e["name"] in categories:
      total[categories[e["name"]]] += e["dur"] / 1000 / steps / devices
  return dict(total)


def jax_worker(args) -> dict:
  from homeo_jax.training.cpu import reexec_with_page_keeping_allocator, split_cpu_cores

  os.environ["HOMEO_JAX_ALLOCATOR"] = args.allocator
  reexec_with_page_keeping_allocator(["-m", "experiments.bench_cpu_step", *sys.argv[1:]])

  config = load_recipe(args.recipe, dense_twin=args.dense_twin)
  requested = 0 if args.devices == "auto" else int(args.devices)
  mesh = dataclasses.replace(config.mesh, cpu_devices=requested)
  config = dataclasses.replace(config, mesh=mesh)
  split_cpu_cores(config.mesh, config.data.batch_size)

  import jax
  import numpy as np

  from homeo_jax.data.batches import window_batches
  from homeo_jax.training.build import load_data, setup

  data = load_data(config)
  run = setup(config, data)
  d = config.data
  stream = window_batches(data.train_tokens, seq_len=d.seq_len, seed=0, batch_size=d.batch_size)
  batches = [run.put(stream[i]) for i in range(16)]
  state = run.state
  compile_start = time.perf_counter()
  state, metrics = run.train_step(state, batches[0])
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - compile_start
  for i in range(args.warmup):
    state, metrics = run.train_step(state, batches[i % 16])
  jax.block_until_ready(metrics)
  times = []
  for i in range(args.steps):
    start = time.perf_counter()
    state, metrics = run.train_step(state, batches[i % 16])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  ms = 1000 * float(np.median(times))
  result = {
    "ms": ms,
    "iqr": 1000 * float(np.subtract(*np.percentile(times, [75, 25]))),
    "tokens_per_s": d.batch_size * d.seq_len / ms * 1000,
    "batch_tokens": d.batch_size * d.seq_len,
    "devices": jax.device_count(),
    "compile_s": compile_s,
    "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
    "allocator": os.environ.get("LD_PRELOAD") or os.environ.get("GLIBC_TUNABLES") or "system",
  }
  if args.profile:
    result["breakdown"] = profile_step(run.train_step, state, batches, jax.device_count())
  return result


def torch_worker(args) -> dict:
  import numpy as np
  import torch
  import torch.nn.functional as F
  from torch import nn

  config = load_recipe(args.recipe)
  m, d = config.model, config.data
  vocab, width, heads = 65, m.d_model, m.num_heads
  torch.manual_seed(0)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.attn_norm = nn.LayerNorm(width, bias=False)
      self.qkv = nn.Linear(width, 3 * width, bias=False)
      self.out = nn.Linear(width, width, bias=False)
      self.mlp_norm = nn.LayerNorm(width, bias=False)
      self.up = nn.Linear(width, 4 * width, bias=False)
      self.down = nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
      b, t, _ = x.shape
      q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.out(y.transpose(1, 2).reshape(b, t, width))
      return x + self.down(F.gelu(self.up(self.mlp_norm(x)), approximate="tanh"))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.token_embed = nn.Embedding(vocab, width)
      self.pos_embed = nn.Embedding(m.max_seq_len, width)
      self.blocks = nn.ModuleList([Block() for _ in range(m.num_layers)])
      self.final_norm = nn.LayerNorm(width, bias=False)

    def forward(self, tokens, targets):
      x = self.token_embed(tokens) + self.pos_embed.weight[: tokens.shape[1]]
      for block in self.blocks:
        x = block(x)
      logits = self.final_norm(x) @ self.token_embed.weight.T
      return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

  model = GPT()
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=config.optimizer.learning_rate,
    betas=(config.optimizer.b1, config.optimizer.b2),
  )
  batches = torch.randint(0, vocab, (16, d.batch_size, d.seq_len + 1))
  times = []
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    batch = batches[i % 16]
    loss = model(batch[:, :-1], batch[:, 1:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    loss.item()
    times.append(time.perf_counter() - start)
  times = times[args.warmup :]
  ms = 1000 * float(np.median(times))
  return {
    "ms": ms,
    "iqr": 1000 * float(np.subtract(*np.percentile(times, [75, 25]))),
    "tokens_per_s": d.batch_size * d.seq_len / ms * 1000,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
  }


# ----------------------------------------------------------------------------- driver


def run_worker(*worker_args: str) -> dict | None:
  cmd = [sys.executable, __file__, "--worker", *worker_args]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  if proc.returncode:
    print(f"  worker {' '.join(worker_args)} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
    return None
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--worker", choices=["jax", "torch"])
  parser.add_argument("--recipe", default="nanogpt", choices=sorted(RECIPES))
  parser.add_argument("--recipes", nargs="*", default=["nanogpt", "block128"])
  parser.add_argument(
    "--systems", nargs="*", choices=["moe", "adaptive", "2bit"],
    help="also these systems against their dense twins (no names: all three)",
  )  # fmt: skip
  parser.add_argument("--devices", nargs="+", default=["auto"], help="'auto' or a count")
  parser.add_argument("--dense_twin", action="store_true")
  parser.add_argument(
    "--allocator", default="auto", choices=["auto", "tcmalloc", "hugepages", "system"],
    help="ours: the library's CPU allocator choice (training/cpu.py); PyTorch: the system's",
  )  # fmt: skip
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--no_torch", action="store_true", help="time ours only")
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=2, help="alternations of ours and PyTorch")
  parser.add_argument("--out", default="runs/bench_cpu_step.json")
  args = parser.parse_args()
  if args.worker:
    args.devices = args.devices[0]
    result = jax_worker(args) if args.worker == "jax" else torch_worker(args)
    print(json.dumps(result))
    return

  import importlib.util

  from experiments.common import markdown_table, write_results

  has_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
  if importlib.util.find_spec("torch") is None:
    print("PyTorch is not installed (pip install -e .[bench]): timing ours only")
  common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
  common += ["--allocator", args.allocator]
  rows, results = [], {}
  for recipe in args.recipes:
    ours = {devices: [] for devices in args.devices}
    theirs = []
    for r in range(args.rounds):  # alternate, so drift in the machine hits every arm
      profile = ["--profile"] if r == 0 else []
      for devices in args.devices:
        out = run_worker("jax", "--recipe", recipe, "--devices", devices, *profile, *common)
        ours[devices] += [out] if out else []
      out = run_worker("torch", "--recipe", recipe, *common) if has_torch else None
      theirs += [out] if out else []
    # The best round's median: the least disturbed by the rest of the machine.
    torch_ms = min(t["ms"] for t in theirs) if theirs else None
    results[f"{recipe}/pytorch"] = theirs
    for devices, runs in ours.items():
      if not runs:
        continue
      ms = min(o["ms"] for o in runs)
      key = f"{recipe}/devices={devices}"
      results[key] = runs
      rows.append(
        [
          recipe,
          f"{runs[0]['devices']}",
          f"{ms:.1f}",
          f"{torch_ms:.1f}" if torch_ms else "-",
          f"{torch_ms / ms:.2f}x" if torch_ms else "-",
          f"{runs[0]['batch_tokens'] / ms * 1000:,.0f}",
          f"{runs[0]['compile_s']:.1f}",
        ]
      )
      print_breakdown(key, runs[0].get("breakdown"), ms)
  if args.systems is not None:
    for system in args.systems or ("moe", "adaptive", "2bit"):
      for twin in (False, True):
        flags = ["--recipe", system, "--devices", args.devices[0], *common]
        out = run_worker("jax", *flags, *(["--dense_twin"] if twin else []))
        if out:
          name = f"{system} dense twin" if twin else system
          results[name] = out
          rows.append(
            [name, f"{out['devices']}", f"{out['ms']:.1f}", "-", "-",
             f"{out['tokens_per_s']:,.0f}", f"{out['compile_s']:.1f}"]
          )  # fmt: skip
  header = ["recipe", "devices", "ours ms/step", "PyTorch ms/step", "PyTorch ms / ours ms",
            "ours tokens/s", "compile s"]  # fmt: skip
  table = markdown_table(header, rows)
  print(table)
  write_results("bench_cpu_step", "Step time against PyTorch on the CPU", table)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(results, indent=1))


def print_breakdown(key: str, breakdown: dict | None, step_ms: float) -> None:
  if not breakdown:
    return
  total = sum(breakdown.values())
  parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(breakdown.items(), key=lambda x: -x[1]))
  print(f"{key}: step {step_ms:.1f} ms; op time per device {total:.1f} ms: {parts}")


if __name__ == "__main__":
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  main()
