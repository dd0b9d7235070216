import numpy as np
import pytest

from homeo_jax.data import (
  BPETokenizer,
  CharTokenizer,
  build_tokenizer,
  corpora,
  load_corpus,
  load_text_data,
  split_train_val,
  window_batches,
)

NON_ASCII = "Ça déjà vu — naïve café, Ἀθῆναι, 東京, emoji 🙂\nline two\ttab"


@pytest.fixture(scope="module")
def shakespeare():
  return load_corpus("shakespeare")


def test_shakespeare_is_shipped_whole(shakespeare):
  assert len(shakespeare) == 5_057_282
  assert shakespeare.startswith("ALL'S WELL THAT ENDS WELL")


def test_python_stdlib_corpus_is_deterministic():
  a = corpora.python_stdlib_text(max_chars=300_000)
  b = corpora.python_stdlib_text(max_chars=300_000)
  assert a == b and len(a) == 300_000
  assert a.startswith("# file: ") and "def " in a


def test_user_folder_corpus_sorted(tmp_path):
  (tmp_path / "b.txt").write_text("second\n")
  (tmp_path / "a.txt").write_text("first\n")
  (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
  text = load_corpus(str(tmp_path))
  assert text.index("first") < text.index("second") and "skip" not in text
  with pytest.raises(FileNotFoundError, match="nope"):
    load_corpus(str(tmp_path / "nope"))


def test_split_is_contiguous_tail():
  tokens = np.arange(100)
  train, val = split_train_val(tokens, 0.1)
  np.testing.assert_array_equal(train, np.arange(90))
  np.testing.assert_array_equal(val, np.arange(90, 100))
  with pytest.raises(ValueError, match="1.5"):
    split_train_val(tokens, 1.5)


def test_char_tokenizer_round_trip(shakespeare):
  tok = CharTokenizer.from_text(shakespeare)
  assert tok.vocab_size == 84
  ids = tok.encode(shakespeare)
  assert ids.dtype == np.int32 and ids.max() < tok.vocab_size
  assert tok.decode(ids) == shakespeare
  uni = CharTokenizer.from_text(NON_ASCII)
  assert uni.decode(uni.encode(NON_ASCII)) == NON_ASCII
  with pytest.raises(ValueError, match="'🙂'"):
    tok.encode("hello 🙂")


def test_bpe_tokenizer_round_trip_and_cache(shakespeare, tmp_path, monkeypatch):
  monkeypatch.setenv("HOMEO_JAX_CACHE", str(tmp_path))
  text = shakespeare[:300_000]
  tok = build_tokenizer("bpe", text, bpe_vocab_size=512)
  assert tok.vocab_size == 512
  ids = tok.encode(text)
  assert len(ids) < len(text) / 1.8  # it really merges (measured 1.93 chars/token)
  assert tok.decode(ids) == text
  assert tok.decode(tok.encode(NON_ASCII)) == NON_ASCII  # byte-level: any text
  strings = tok.token_strings
  assert len(strings) == 512 and "".join(strings[i] for i in tok.encode("the king")) == "the king"
  cached = list(tmp_path.glob("bpe-*-512.json"))
  assert len(cached) == 1
  again = BPETokenizer.from_file(cached[0])
  np.testing.assert_array_equal(again.encode(text[:5000]), tok.encode(text[:5000]))


def test_window_batches_deterministic_and_random_access():
  tokens = np.arange(1000, dtype=np.int32)
  a = window_batches(tokens, seq_len=16, batch_size=4, seed=7)
  b = window_batches(tokens, seq_len=16, batch_size=4, seed=7)
  c = window_batches(tokens, seq_len=16, batch_size=4, seed=8)
  assert a[0].shape == (4, 17) and a[0].dtype == np.int32
  for i in (0, 5, 300):  # random access: batch i does not depend on reading 0..i-1
    np.testing.assert_array_equal(a[i], b[i])
    np.testing.assert_array_equal(np.diff(a[i], axis=1), 1)  # contiguous windows
  assert not np.array_equal(a[0], c[0])
  # one epoch visits every window start exactly once
  starts = np.concatenate([a[i][:, 0] for i in range(984 // 4)])
  np.testing.assert_array_equal(np.sort(starts), np.arange(984))


def test_window_batches_host_shards_are_disjoint():
  tokens = np.arange(500, dtype=np.int32)
  shards = [
    window_batches(tokens, seq_len=8, batch_size=4, seed=0, shard_index=i, shard_count=2)
    for i in range(2)
  ]
  s0 = {int(x) for i in range(20) for x in shards[0][i][:, 0]}
  s1 = {int(x) for i in range(20) for x in shards[1][i][:, 0]}
  assert s0 and s1 and not s0 & s1


def test_seq_len_longer_than_data():
  with pytest.raises(ValueError, match="seq_len=64"):
    window_batches(np.arange(10), seq_len=64, batch_size=2, seed=0)


def test_load_text_data_split(tiny_data):
  assert tiny_data.vocab_size < 90
  n = len(tiny_data.train_tokens) + len(tiny_data.val_tokens)
  assert n == 200_000 and len(tiny_data.val_tokens) == 20_000
  other = load_text_data("shakespeare", tokenizer="char", max_chars=200_000)
  np.testing.assert_array_equal(other.val_tokens, tiny_data.val_tokens)


def test_switched_batches_random_access():
  from homeo_jax.data import SwitchedBatches

  a = window_batches(np.arange(100, dtype=np.int32), seq_len=4, batch_size=2, seed=0)
  b = window_batches(np.arange(1000, 1100, dtype=np.int32), seq_len=4, batch_size=2, seed=0)
  switched = SwitchedBatches(a, b, switch_at=3)
  np.testing.assert_array_equal(switched[2], a[2])
  np.testing.assert_array_equal(switched[3], b[0])
  np.testing.assert_array_equal(switched[7], b[4])
  with pytest.raises(ValueError, match="switch_at must be >= 0, got -1"):
    SwitchedBatches(a, b, -1)
