"""A trained run is usable: sample, evaluate, compare, TensorBoard events, samples in the log.

One tiny run (6 steps, a sample every 3) is trained once for the module and read back by
every tool, in process (``main(argv)``) so nothing compiles twice.
"""

import json
import math
import struct

import numpy as np
import pytest

from homeo_jax import compare, evaluate, sample
from homeo_jax.training import config as config_lib
from homeo_jax.training.loop import train
from homeo_jax.training.trained import RunFolderError, load_run
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("run")
  train(tiny_config(path, train={"sample_every": 3, "sample_tokens": 12, "sample_prompt": "KI"}))
  return path


def read_events(folder):
  """Every (tag, step, value) in a TensorBoard folder: TFRecord framing, Event protos."""
  from tensorboardX.proto import event_pb2

  out = []
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
      i += 12 + length + 4
      for v in event.summary.value:
        if v.HasField("tensor") and v.tensor.string_val:
          out.append((v.tag, event.step, v.tensor.string_val[0].decode()))
        else:
          out.append((v.tag, event.step, v.simple_value))
  return out


def test_config_json_round_trips_for_every_shipped_config():
  for spec in ("shakespeare_char.py:cpu", "spechorn.py:cpu", "ouro_spec.py:tiny",
               "thyroid_2bit.py:cpu", "ord_muon.py", "ars_narcissus.py"):  # fmt: skip
    config = config_lib.load_config(f"configs/{spec}")
    assert config_lib.from_json(config_lib.to_json(config)) == config, spec
  with pytest.raises(config_lib.ConfigError, match="unknown config key train.stepz"):
    config_lib.from_json(json.dumps({"train": {"stepz": 3}}))


@pytest.mark.slow
def test_samples_during_training_reach_log_report_and_tensorboard(run_dir):
  records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
  samples = [r for r in records if "sample" in r]
  assert [r["step"] for r in samples] == [3, 6]
  assert all(r["sample"].startswith("KI") and len(r["sample"]) == 14 for r in samples)
  assert samples[-1]["sample"] in (run_dir / "report.md").read_text()
  events = read_events(run_dir / "tensorboard")
  logged = [(r["step"], r["loss"]) for r in records if "loss" in r]
  scalars = [(step, value) for tag, step, value in events if tag == "loss"]
  np.testing.assert_allclose(scalars, logged, rtol=1e-6)
  assert {("val/loss", 3), ("val/loss", 6)} <= {(tag, step) for tag, step, _ in events}
  texts = {step: value for tag, step, value in events if tag == "sample/text_summary"}
  assert texts[6] == samples[-1]["sample"]


def test_sample_continues_the_prompt(run_dir, capsys):
  assert sample.main(["--run_dir", str(run_dir), "--prompt", "KING", "--num_samples", "2",
                      "--max_new_tokens", "40", "--temperature", "0"]) == 0  # fmt: skip
  texts = capsys.readouterr().out[:-1].split("\n---------------\n")  # print's newline
  assert len(texts) == 2 and texts[0] == texts[1]  # greedy: both samples alike
  assert texts[0].startswith("KING") and len(texts[0]) == 44


@pytest.mark.slow
def test_evaluate_matches_the_runs_own_cross_entropy(run_dir, capsys):
  run = load_run(run_dir)
  tokens = run.data.val_tokens[:400]
  score = evaluate.score_tokens(run, tokens, batch_size=4)
  # reference: the eval forward on the same windows, summed over tokens in float64
  total = 0.0
  for rows in evaluate.windows(tokens, run.config.data.seq_len):
    logits, _ = run.model(rows[:, :-1], controls=run.controls, deterministic=True)
    x = np.asarray(logits, np.float64)
    top = x.max(-1, keepdims=True)
    logp = x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))
    total -= np.take_along_axis(logp, rows[:, 1:, None], -1).sum()
  nll = total / 399
  assert score.tokens == 399  # 400 tokens: each after the first scored once
  np.testing.assert_allclose(score.loss, nll, rtol=1e-5)
  np.testing.assert_allclose(score.perplexity, math.exp(nll), rtol=1e-5)
  np.testing.assert_allclose(score.bits_per_char, nll / math.log(2), rtol=1e-5)  # char-level
  assert evaluate.main(["--run_dir", str(run_dir), "--max_tokens", "200", "--json"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["step"] == 6 and printed["tokens"] == 199


def test_compare_tables_and_plots_runs(run_dir, tmp_path, capsys):
  assert (
    compare.main([str(run_dir), str(run_dir), "--out", str(tmp_path), "--metrics", "grad_norm"])
    == 0
  )
  out = capsys.readouterr().out
  assert out.count("| 6 of 6 |") == 2 and "grad_norm" in out
  assert (tmp_path / "compare.png").stat().st_size > 1000


@pytest.mark.parametrize(
  "tool, argv, message",
  [
    (sample, ["--prompt", "€"], "character '€' is not in the tokenizer"),
    (sample, ["--prompt", ""], "--prompt is empty"),
    (evaluate, ["--text", "/no/such/file.txt"], "cannot be read"),
    (evaluate, ["--text", "EMPTY"], "is empty"),
  ],
)
def test_bad_input_is_one_line(run_dir, tmp_path, capsys, tool, argv, message):
  (tmp_path / "empty.txt").write_text("  \n")
  argv = [a.replace("EMPTY", str(tmp_path / "empty.txt")) for a in argv]
  assert tool.main(["--run_dir", str(run_dir), *argv]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and "\n" not in err, err


def test_bad_run_folders_are_named(tmp_path):
  with pytest.raises(RunFolderError, match="no such run folder"):
    load_run(tmp_path / "missing")
  with pytest.raises(RunFolderError, match="config.json: cannot be read"):
    load_run(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(RunFolderError, match="not a homeo_jax config"):
    load_run(tmp_path)
  config = tiny_config(tmp_path)
  (tmp_path / "config.json").write_text(config_lib.to_json(config))
  with pytest.raises(RunFolderError, match="saved no checkpoint"):
    load_run(tmp_path)
  assert not (tmp_path / "checkpoints").exists()  # reading made nothing


@pytest.mark.slow
def test_checkpoint_config_mismatch_is_named(run_dir, tmp_path):
  import shutil

  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy)
  config = config_lib.from_json((copy / "config.json").read_text())
  wider = config.__class__(**{**vars(config), "model": config.model.__class__(
    **{**vars(config.model), "d_model": 48})})  # fmt: skip
  (copy / "config.json").write_text(config_lib.to_json(wider))
  with pytest.raises(RunFolderError, match="checkpoints: no readable checkpoint"):
    load_run(copy)
  assert not (copy / "corrupt_checkpoints").exists()  # a reader moves nothing


@pytest.mark.slow
def test_adaptive_bpe_run_samples_with_its_passes(tmp_path, capsys):
  """The adaptive-depth model on a BPE tokenizer, end to end through the CLI."""
  from homeo_jax.models import AdaptiveConfig

  config = tiny_config(tmp_path, data={"tokenizer": "bpe", "bpe_vocab_size": 300})
  shape = {f: getattr(config.model, f) for f in ("num_layers", "num_heads", "d_model")}
  model = AdaptiveConfig(
    vocab_size=0,
    max_seq_len=32,
    char_dim=8,
    pos_dim=4,
    min_alive_fraction=0.0,
    ffn="mlp",
    **shape,
  )
  config = config.__class__(
    **{**vars(config), "model_type": "adaptive_transformer", "model": model,
       "train": config.train.__class__(**{**vars(config.train), "steps": 2, "eval_every": 2})}
  )  # fmt: skip
  train(config)
  capsys.readouterr()  # the training log
  layers = json.loads((tmp_path / "stats.json").read_text())["layers"]  # per-layer telemetry
  assert len(layers) == model.num_layers and {"k_exec", "passes_run"} <= set(layers[0])
  argv = ["--run_dir", str(tmp_path), "--prompt", "To be", "--max_new_tokens", "20"]
  assert sample.main([*argv, "--show_passes"]) == 0
  out = capsys.readouterr().out
  text, passes = out.split("\n\npasses per token")
  assert text.startswith("To be")
  digits = passes.strip().splitlines()[-1]
  assert len(digits) == len(load_run(tmp_path).data.tokenizer.encode("To be")) + 19
  assert set(digits) <= set("1234")


@pytest.mark.slow
def test_evaluate_leaves_unknown_characters_out_with_one_warning(run_dir, tmp_path, capsys):
  """A text with characters the run never saw is scored without them (the same score as the
  text with them removed), with one warning line; --strict refuses it."""
  run = load_run(run_dir)
  vocab = run.data.tokenizer.token_strings
  clean = "".join(vocab[i % len(vocab)] for i in range(0, 7 * 60, 7))
  dirty = clean[:20] + "€" + clean[20:40] + "€€☃" + clean[40:]
  (tmp_path / "dirty.txt").write_text(dirty)
  (tmp_path / "clean.txt").write_text(clean)
  assert (
    evaluate.main(["--run_dir", str(run_dir), "--text", str(tmp_path / "dirty.txt"), "--json"]) == 0
  )
  captured = capsys.readouterr()
  warning = captured.err.strip()
  assert "\n" not in warning
  assert f"4 of {len(dirty)} characters" in warning and "'€' ×3" in warning and "'☃' ×1" in warning
  with_unknown = json.loads(captured.out)
  assert (
    evaluate.main(["--run_dir", str(run_dir), "--text", str(tmp_path / "clean.txt"), "--json"]) == 0
  )
  without = json.loads(capsys.readouterr().out)
  assert with_unknown["loss"] == without["loss"] and with_unknown["tokens"] == len(clean) - 1
  strict = ["--run_dir", str(run_dir), "--text", str(tmp_path / "dirty.txt"), "--strict"]
  assert evaluate.main(strict) == 2
  assert "character '€' is not in the tokenizer's vocabulary" in capsys.readouterr().err
