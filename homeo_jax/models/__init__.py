"""Pure Flax NNX models: parameters and controls in, logits and telemetry out."""

from flax import nnx

from homeo_jax.models.adaptive import AdaptiveConfig as AdaptiveConfig
from homeo_jax.models.adaptive import AdaptiveTransformer as AdaptiveTransformer
from homeo_jax.models.layers import TransformerConfig as TransformerConfig
from homeo_jax.models.moe import MoEConfig as MoEConfig
from homeo_jax.models.moe import MoETransformer as MoETransformer
from homeo_jax.models.moe import MoETransformerConfig as MoETransformerConfig
from homeo_jax.models.quant import QuantTransformer as QuantTransformer
from homeo_jax.models.quant import QuantTransformerConfig as QuantTransformerConfig
from homeo_jax.models.transformer import Transformer as Transformer

# model_type in a Config -> the module class, constructed as cls(model_config, rngs=...).
MODEL_TYPES: dict[str, type[nnx.Module]] = {
  "transformer": Transformer,
  "moe_transformer": MoETransformer,
  "quant_transformer": QuantTransformer,
  "adaptive_transformer": AdaptiveTransformer,
}

# model_type -> its config dataclass (what a run folder's config.json is read back into).
MODEL_CONFIGS: dict[str, type[TransformerConfig]] = {
  "transformer": TransformerConfig,
  "moe_transformer": MoETransformerConfig,
  "quant_transformer": QuantTransformerConfig,
  "adaptive_transformer": AdaptiveConfig,
}
