"""Every model type with its optimizer families lowers for GPU and TPU from this CPU.

``jax.export`` lowers the jitted, donated train step, the eval step and KV-cached
generation (with the deployment controls) for ``cuda`` and ``tpu`` in bfloat16 compute
without either device present: a user's first accelerator run does not discover a
lowering error. (Compilation and numerics on the device itself are not covered here.)
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import export

from homeo_jax import regulators
from homeo_jax.models import (
  AdaptiveConfig,
  MoEConfig,
  MoETransformerConfig,
  QuantTransformerConfig,
)
from homeo_jax.models.decode import generate
from homeo_jax.training.build import setup
from homeo_jax.training.config import OptimizerConfig
from tests.conftest import tiny_config

PLATFORMS = ("cuda", "tpu")


def fields(model):
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}


def moe(router, balancer):
  return lambda m: MoETransformerConfig(
    **fields(m), moe=MoEConfig(num_experts=4, top_k=2, router=router, balancer=balancer)
  )


CASES = {
  # (model type, model config from the tiny one, optimizer, optimizer kwargs)
  "transformer/adamw": ("transformer", None, "adamw", {}),
  "transformer/sgd": ("transformer", None, "sgd", {}),
  "transformer/ars_adamw": ("transformer", None, "ars_adamw", {}),
  "transformer/ord_muon": ("transformer", None, "ord_muon", {"spectral_lr": 0.5}),
  "transformer/optax_muon": ("transformer", None, "optax_muon", {}),
  "transformer/thyroid": ("transformer", None, "thyroid_adamw", {"weights": "random"}),
  "moe/softmax_aux": ("moe_transformer", moe("softmax_aux", ""), "adamw", {}),
  "moe/deepseek": ("moe_transformer", moe("deepseek", "deepseek"), "adamw_deepseek", {}),
  "moe/spechorn": ("moe_transformer", moe("spechorn", "spechorn"), "adamw_spechorn", {}),
  "quant/thyroid": (
    "quant_transformer",
    lambda m: QuantTransformerConfig(**fields(m), temperature_from="thyroid"),
    "thyroid_adamw",
    {"weights": "random", "version": "per_group"},
  ),
  "adaptive/compute_price": (
    "adaptive_transformer",
    lambda m: AdaptiveConfig(
      **fields(m), char_dim=8, pos_dim=4, price_from="compute_price", ffn="mlp"
    ),
    "adamw_compute_price",
    {},
  ),
}


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_train_and_eval_steps_lower_for_gpu_and_tpu(case, tiny_data, tmp_path):
  model_type, make_model, optimizer, kwargs = CASES[case]
  cfg = tiny_config(tmp_path, model={"dtype": "bfloat16", "dropout": 0.0})
  model = make_model(cfg.model) if make_model else cfg.model
  cfg = dataclasses.replace(
    cfg,
    model_type=model_type,
    model=model,
    optimizer=OptimizerConfig(name=optimizer, learning_rate=1e-3, kwargs=kwargs),
  )
  run = setup(cfg, tiny_data)
  state = abstract(run.state)
  batch = jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.seq_len + 1), jnp.int32)
  train = export.export(run.train_step, platforms=PLATFORMS)(state, batch)
  evaluate = export.export(run.eval_step, platforms=PLATFORMS)(state.params, state.opt_state, batch)
  graphdef, _, rest = nnx.split(run.model, nnx.Param, ...)

  def sample(params, opt_state, prompt, key):
    controls = regulators.controls(opt_state, deployment=True)
    model = nnx.merge(graphdef, params, rest)
    return generate(model, prompt, 4, key=key, temperature=0.8, top_k=5, controls=controls)

  prompt = jax.ShapeDtypeStruct((2, 3), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  sampler = export.export(jax.jit(sample), platforms=PLATFORMS)(
    state.params, state.opt_state, prompt, key
  )
  assert sampler.out_avals[0].shape == (2, 7)
  for exported in (train, evaluate, sampler):
    assert exported.platforms == PLATFORMS
    assert "bf16" in exported.mlir_module()  # the compute really runs in bfloat16
