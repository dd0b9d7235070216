"""The closed-loop stream: generated rows continue real prompts with the current model."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from homeo_jax.models import Transformer, TransformerConfig
from homeo_jax.models.decode import generate
from homeo_jax.training.closed_loop import (
  SelfGeneratedBatches,
  distinct_ngram_share,
  unigram_entropy_bits,
)
from homeo_jax.training.step import init_train_state

V, T, B = 13, 12, 4
FRESH = [np.random.default_rng(i).integers(0, V, (B, T + 1), dtype=np.int32) for i in range(40)]


def model_and_state():
  model = Transformer(
    TransformerConfig(vocab_size=V, num_layers=1, num_heads=2, d_model=16, max_seq_len=T + 1),
    rngs=nnx.Rngs(0),
  )
  import optax

  return model, init_train_state(nnx.state(model, nnx.Param), optax.sgd(0.1), 0)


def test_entropy_and_distinct_ngrams_by_hand():
  assert unigram_entropy_bits(np.array([0, 1, 2, 3])) == pytest.approx(2.0)
  assert unigram_entropy_bits(np.array([5, 5, 5])) == pytest.approx(0.0)
  assert distinct_ngram_share(np.array([[1, 2, 1, 2, 1, 2]]), n=2) == pytest.approx(2 / 5)


def test_generated_rows_continue_the_prompts_and_the_rest_is_fresh(tmp_path):
  model, state = model_and_state()
  stream = SelfGeneratedBatches(
    model, FRESH, fraction=0.5, every=3, temperature=0.0, prompt_len=4, seed=0, log_dir=tmp_path
  )
  batches = [stream.batch_for(i, state) for i in range(6)]
  for i, batch in enumerate(batches):
    assert batch.shape == (B, T + 1) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch[2:], FRESH[i][2:])  # fresh rows
    np.testing.assert_array_equal(batch[:2, :4], FRESH[i][:2, :4])  # real prompts
  # greedy: the generated rows are the model's own continuation of their prompts
  want = generate(model, FRESH[4][:2, :4], T + 1 - 4, key=jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(batches[4][:2], np.asarray(want))
  log = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [1, 4]  # one generation per block of 3 steps


def test_blocks_are_reproducible_and_fraction_zero_is_fresh():
  model, state = model_and_state()
  make = lambda f: SelfGeneratedBatches(  # noqa: E731
    model, FRESH, fraction=f, every=5, temperature=1.0, prompt_len=2, seed=3
  )
  a, b = make(1.0), make(1.0)
  np.testing.assert_array_equal(a.batch_for(7, state), b.batch_for(7, state))
  np.testing.assert_array_equal(make(0.0).batch_for(7, state), FRESH[7])
  with pytest.raises(ValueError, match="prompt_len must be in \\[1, 12\\], got 13"):
    SelfGeneratedBatches(model, FRESH, fraction=1, every=1, temperature=1, prompt_len=13, seed=0)


@pytest.mark.slow
def test_train_runs_the_closed_loop(tmp_path, tiny_data):
  from homeo_jax.data import window_batches
  from homeo_jax.training.build import build_model
  from homeo_jax.training.loop import train
  from tests.conftest import tiny_config

  config = tiny_config(tmp_path, train={"steps": 4, "eval_every": 4, "checkpoint_every": 4})
  model = build_model(config, tiny_data.vocab_size, tiny_data.tokenizer.token_strings)
  fresh = window_batches(tiny_data.train_tokens, seq_len=32, batch_size=8, seed=0)
  stream = SelfGeneratedBatches(
    model, fresh, fraction=1.0, every=2, temperature=0.8, prompt_len=4, seed=0,
    log_dir=tmp_path, tokenizer=tiny_data.tokenizer,
  )  # fmt: skip
  result = train(config, data=tiny_data, model=model, train_batches=stream)
  assert result.status == "finished"
  log = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [1, 3]  # block 0 serves the MFU lowering and step 1
  bits = log[-1]["sample_entropy_bits"]
  assert isinstance(log[-1]["sample"], str) and 0 < bits <= np.log2(tiny_data.vocab_size)
