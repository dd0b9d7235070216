"""Shipped corpora, tokenizers and resumable batch streams."""

from homeo_jax.data.batches import SwitchedBatches as SwitchedBatches
from homeo_jax.data.batches import TextData as TextData
from homeo_jax.data.batches import load_text_data as load_text_data
from homeo_jax.data.batches import window_batches as window_batches
from homeo_jax.data.corpora import load_corpus as load_corpus
from homeo_jax.data.corpora import split_train_val as split_train_val
from homeo_jax.data.tokenizers import BPETokenizer as BPETokenizer
from homeo_jax.data.tokenizers import CharTokenizer as CharTokenizer
from homeo_jax.data.tokenizers import build_tokenizer as build_tokenizer
