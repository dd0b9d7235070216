import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import thyroid_meta
from homeo_jax import controls
from homeo_jax.regulators.thyroid import (
  ALPHA_RANGE,
  LAMBDA_RANGE,
  MAX_PARAMS,
  TAU_RANGE,
  VERSIONS,
  init_thyroid_params,
  load_thyroid_params,
  save_thyroid_params,
  thyroid,
  thyroid_forward,
  thyroid_param_count,
  window_features,
)

PARAMS = {"embed": jnp.ones((4, 4)), "hidden": jnp.ones((4, 4)) * 2}
LABELS = {"embed": "embed", "hidden": "hidden"}


@pytest.mark.parametrize(
  "version, count", [("alpha", 1537), ("alpha_lambda_tau", 2339), ("per_group", 2273 + 66 * 3)]
)
def test_param_counts(version, count):
  params = init_thyroid_params(version, 3)
  assert thyroid_param_count(params) == count <= MAX_PARAMS


@settings(max_examples=30, deadline=None)
@given(
  st.sampled_from(VERSIONS),
  st.integers(0, 1000),
  st.lists(st.floats(1e-8, 1e8), min_size=16, max_size=16),
  st.lists(st.floats(1e-8, 1e8), min_size=16, max_size=16),
)
@pytest.mark.slow
def test_clamps_hold_for_extreme_histories_and_weights(version, seed, losses, norms):
  params = jax.tree.map(lambda x: x * 50.0, init_thyroid_params(version, 2, seed))
  params = jax.tree.map(lambda x: x + 3.0, params)  # far from the trained regime
  groups = 2 if version == "per_group" else 1
  alpha, lam, tau = thyroid_forward(
    params, version, jnp.asarray(losses), jnp.tile(jnp.asarray(norms), (groups, 1))
  )
  for value, (lo, hi) in ((alpha, ALPHA_RANGE), (lam, LAMBDA_RANGE), (tau, TAU_RANGE)):
    v = np.asarray(value)
    assert np.isfinite(v).all() and (v >= lo).all() and (v <= hi).all()


def test_window_features_against_float64():
  window = np.array(
    [2.0, 2.1, 1.9, 2.0, 3.5, 2.2, 2.1, 2.0, 1.95, 2.0, 2.05, 2.0, 1.9, 2.0, 2.1, 2.0]
  )
  x = np.log(window)
  centered = x - x.mean()
  expected = np.stack(
    [
      centered / (x.std() + 1e-3),
      np.tanh(4 * centered),
      np.tanh(4 * np.diff(x, prepend=x[0])),
    ]
  )
  np.testing.assert_allclose(window_features(jnp.asarray(window)), expected, atol=2e-5)


def test_amplitude_channels_tell_a_cliff_from_a_jitter_of_the_same_shape():
  shape = np.zeros(16)
  shape[10] = 1.0
  jitter, cliff = np.exp(0.05 * shape), np.exp(0.5 * shape)  # +5% vs +65% at step 10
  fj, fc = window_features(jnp.asarray(jitter)), window_features(jnp.asarray(cliff))
  np.testing.assert_allclose(fj[0], fc[0], atol=0.3)  # the seed's input: nearly alike
  assert float(fc[2, 10]) > 0.95 > 0.25 > float(fj[2, 10]) > 0  # the change channel differs
  assert float(fc[1, 10]) > 3 * float(fj[1, 10]) > 0  # and the level channel
  # every channel is unchanged when the window is scaled (tasks of any loss scale)
  np.testing.assert_allclose(window_features(jnp.asarray(cliff * 1e3)), fc, atol=1e-5)


def run(tx, losses, grad_norm=1.0):
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  out = []
  for v in losses:
    extra = {"value": jnp.asarray(v), "grad_norm": jnp.asarray(grad_norm)}
    _, state = update(PARAMS, state, PARAMS, **extra)
    out.append(state)
  return out


def perturbed(version):
  """A random (not neutral) thyroid so its outputs differ from 1."""
  params = init_thyroid_params(version, 1, 0)
  return jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), params)


@pytest.fixture
def weights_file(tmp_path):
  def write(version):
    path = tmp_path / f"{version}.npz"
    save_thyroid_params(perturbed(version), path)
    return str(path)

  return write


def test_before_window_is_one_then_regulates_every_k(weights_file):
  tx = thyroid(
    optax.adamw,
    1e-3,
    0.01,
    version="alpha_lambda_tau",
    weights=weights_file("alpha_lambda_tau"),
    update_every=10,
  )
  states = run(tx, 3.0 - 0.05 * np.arange(40) + 0.1 * np.sin(np.arange(40)), grad_norm=1.5)
  alphas = [float(s.controller.alpha[0]) for s in states]
  assert all(a == 1.0 for a in alphas[:16])  # window not full yet (steps 0..15)
  # first regulation at step 20 (the first multiple of 10 with full windows), held between
  assert alphas[19] == 1.0 and alphas[20] != 1.0
  assert len(set(alphas[20:30])) == 1 and alphas[30] != alphas[29]
  lr = float(states[25].inner.hyperparams["learning_rate"])
  wd = float(states[25].inner.hyperparams["weight_decay"])
  assert lr == pytest.approx(1e-3 * alphas[25], rel=1e-6)
  assert wd == pytest.approx(0.01 * float(states[25].controller.lam[0]), rel=1e-6)
  assert float(controls(states[25])["thyroid"]["quant_temperature"]) == float(
    states[25].controller.tau
  )


def test_nan_telemetry_never_enters_buffers(weights_file):
  tx = thyroid(optax.adamw, 1e-3, version="alpha", weights=weights_file("alpha"), update_every=1)
  clean = run(tx, [2.0 + 0.1 * i for i in range(20)])
  dirty = run(
    tx,
    [2.0 + 0.1 * i for i in range(10)] + [np.nan, np.inf] + [2.0 + 0.1 * i for i in range(10, 20)],
  )
  np.testing.assert_array_equal(
    dirty[-1].controller.loss_buffer.values, clean[-1].controller.loss_buffer.values
  )
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(dirty[-1].controller))


@pytest.mark.slow
def test_per_group_heads_map_to_their_leaves(tmp_path):
  params = init_thyroid_params("per_group", 1, 0)
  path = tmp_path / "pg.npz"
  save_thyroid_params(params, path)
  tx = thyroid(
    optax.adamw,
    1e-3,
    0.01,
    version="per_group",
    group_labels=LABELS,
    group_names=("embed", "hidden"),
    weights=str(path),
    update_every=1,
  )
  state = tx.init(PARAMS)
  # give the two groups different heads: the hidden group's α bias is raised
  net = state.controller.weights
  net["alpha"]["b"] = net["alpha"]["b"].at[1].add(2.0)
  state = state._replace(controller=state.controller._replace(weights=net))
  grads = {"embed": jnp.ones((4, 4)) * 0.1, "hidden": jnp.ones((4, 4)) * 10.0}
  total = jnp.float32(np.hypot(0.4, 40.0))  # the step's gradient norm, nothing clipped
  for i in range(20):
    _, state = tx.update(grads, state, PARAMS, value=jnp.asarray(3.0 - 0.01 * i), grad_norm=total)
  norms = state.controller.grad_buffer.values[:, -1]
  np.testing.assert_allclose(norms, [0.4, 40.0], rtol=1e-5)  # each group sees its own norm
  alpha = np.asarray(state.controller.alpha)
  assert alpha[1] > alpha[0]
  hp = state.inner.hyperparams
  assert float(hp["learning_rate_hidden"]) == pytest.approx(1e-3 * alpha[1], rel=1e-6)
  assert float(hp["learning_rate_embed"]) == pytest.approx(1e-3 * alpha[0], rel=1e-6)
  updates, _ = tx.update(grads, state, PARAMS, value=jnp.asarray(2.0), grad_norm=jnp.float32(1.0))
  ref = optax.adamw(1e-3 * alpha[1], weight_decay=0.01 * float(state.controller.lam[1]))
  assert updates["hidden"].shape == (4, 4)
  del ref


def test_random_weights_are_explicit_and_neutral():
  tx = thyroid(optax.adamw, 1e-3, version="alpha_lambda_tau", weights="random", update_every=1)
  states = run(tx, [3.0 - 0.1 * i for i in range(20)], grad_norm=1.0)
  assert abs(float(states[-1].controller.alpha[0]) - 1.0) < 1e-6


def test_corrupt_or_mismatched_weights_file(tmp_path):
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not an npz")
  with pytest.raises(ValueError, match=f"thyroid weights file '{bad}' cannot be read"):
    load_thyroid_params("alpha", str(bad))
  other = tmp_path / "other.npz"
  save_thyroid_params(init_thyroid_params("alpha_lambda_tau"), other)
  with pytest.raises(ValueError, match=f"'{other}' does not match version 'alpha'"):
    load_thyroid_params("alpha", str(other))


@pytest.fixture(scope="module")
def shakespeare_bytes():
  return thyroid_meta.corpus_bytes("shakespeare", 100_000)


@pytest.mark.slow
@pytest.mark.parametrize("first_seed", [2_000_000, 2_000_001], ids=["float", "2bit"])
def test_meta_gradient_matches_finite_differences(first_seed):
  # The meta-gradient through the 32-step unroll must be the objective's true slope, on
  # float MLP tasks and on 2-bit ones (which is why they train through the soft
  # staircase). On the tiny LMs it is not (docs/systems/thyroid.md: J is rough there).
  start = init_thyroid_params("alpha", 1, 0)
  seeds = jnp.arange(first_seed, first_seed + 32, 2)

  def objective(p):
    return thyroid_meta.mean_objective(p, "alpha", seeds)

  value_and_grad = jax.jit(jax.value_and_grad(objective))

  def shifted(db):
    p = dict(start)
    p["alpha"] = {"w": start["alpha"]["w"], "b": start["alpha"]["b"] + db}
    return float(value_and_grad(p)[0])

  finite_difference = (shifted(0.05) - shifted(-0.05)) / 0.1
  grad = float(value_and_grad(start)[1]["alpha"]["b"][0])
  assert np.sign(grad) == np.sign(finite_difference)
  assert abs(grad - finite_difference) < 0.35 * abs(finite_difference), (grad, finite_difference)


@pytest.mark.slow
def test_meta_training_lowers_the_objective_on_held_out_tasks():
  # A small version of experiments/thyroid_meta_train.py: 16 meta-steps (Adam 3e-2) of 16 tasks,
  # early stopping on 16 validation tasks, judged on 32 tasks it never saw.
  neutral = init_thyroid_params("alpha_lambda_tau")
  trained, history = thyroid_meta.meta_train(
    "alpha_lambda_tau",
    iterations=16,
    tasks_per_step=16,
    learning_rate=3e-2,
    init=neutral,
    validation={"mlp": (thyroid_meta.validation_seeds(16), None)},
    eval_every=8,
  )
  assert len(history) == 16 and np.isfinite(history).all()
  test = thyroid_meta.held_out_seeds(32)
  before = thyroid_meta.evaluate(neutral, "alpha_lambda_tau", test).mean()
  after = thyroid_meta.evaluate(trained, "alpha_lambda_tau", test).mean()
  assert after < before - 0.002, (before, after)  # measured: -0.0560 -> -0.0609


@pytest.mark.parametrize("version", ["alpha", "alpha_lambda_tau", "per_group"])
def test_shipped_weights_load_by_default_and_are_not_neutral(version):
  shipped = load_thyroid_params(version, "shipped", num_groups=2)
  neutral = init_thyroid_params(version, 2)
  assert jax.tree.structure(shipped) == jax.tree.structure(neutral)
  assert thyroid_param_count(shipped) <= 10_000
  moved = [
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(shipped), jax.tree.leaves(neutral), strict=True)
  ]
  assert max(moved) > 1e-3  # trained, not the untrained start
  tx = thyroid(optax.adamw, 1e-3, version=version) if version != "per_group" else None
  if tx is not None:
    assert bool(jnp.all(tx.init(PARAMS).controller.weights["alpha"]["b"] == shipped["alpha"]["b"]))


def test_init_survives_a_donated_state():
  tx = thyroid(optax.adamw, 1e-3, weights="random")
  update = jax.jit(tx.update, donate_argnums=1)
  for _ in range(2):  # the second init must not hand out buffers the first donation deleted
    state = tx.init(PARAMS)
    _, state = update(PARAMS, state, PARAMS, value=jnp.asarray(1.0), grad_norm=jnp.asarray(1.0))
    assert bool(jnp.isfinite(state.controller.weights["fusion"]["w"]).all())


@pytest.mark.parametrize(
  ("factory", "kwargs", "steered"),
  [
    (optax.sgd, {"learning_rate": 0.1}, {"learning_rate"}),
    (optax.lion, {"learning_rate": 0.1, "weight_decay": 0.01}, {"learning_rate", "weight_decay"}),
    (
      optax.adafactor,
      {"learning_rate": 0.1, "weight_decay": 0.01},
      {"learning_rate", "weight_decay"},
    ),
    (
      optax.contrib.muon,
      {"learning_rate": 0.1, "weight_decay": 0.01},
      {"learning_rate", "weight_decay"},
    ),
  ],
)
def test_steers_what_the_inner_factory_accepts(factory, kwargs, steered):
  from homeo_jax.regulators.thyroid import thyroid

  params = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
  tx = thyroid(factory, weights="random", update_every=1, **kwargs)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(
    grads, state, params, value=jnp.float32(1.0), grad_norm=jnp.float32(1.0)
  )
  assert set(state.inner.hyperparams) >= steered
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


def test_inner_factory_misuse_is_one_line():
  from homeo_jax.regulators.thyroid import thyroid

  with pytest.raises(ValueError, match="thyroid: inner_factory sgd takes no weight decay"):
    thyroid(optax.sgd, learning_rate=0.1, weight_decay=0.1)
  with pytest.raises(ValueError, match="takes neither learning_rate nor weight_decay"):
    thyroid(optax.identity)


def test_per_group_reads_pre_clip_norms_behind_a_global_clip():
  """chain(clip_by_global_norm, thyroid): the group norms are the unclipped gradient's."""
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    thyroid(
      optax.adamw, 1e-3, 0.01, version="per_group", group_labels=LABELS,
      group_names=("embed", "hidden"), weights="random", update_every=1,
    ),
  )  # fmt: skip
  tx = optax.with_extra_args_support(tx)
  grads = {"embed": jnp.ones((4, 4)) * 0.1, "hidden": jnp.ones((4, 4)) * 10.0}
  state = tx.init(PARAMS)
  _, state = tx.update(grads, state, PARAMS, value=2.0, grad_norm=optax.tree.norm(grads))
  norms = state[1].controller.grad_buffer.values[:, 0]
  np.testing.assert_allclose(norms, [0.4, 40.0], rtol=1e-5)


@pytest.mark.slow
def test_config_per_group_thyroid_never_decays_gains():
  """The config builder gives each group's AdamW the weight-decay mask (1-D leaves: none)."""
  from homeo_jax.training.config import OptimizerConfig
  from homeo_jax.training.optimizers import build_optimizer

  cfg = OptimizerConfig(
    name="thyroid_adamw", learning_rate=0.1, weight_decay=0.5, grad_clip=0.0, warmup_steps=0,
    schedule="constant", kwargs={"version": "per_group", "weights": "random"},
  )  # fmt: skip
  params = {
    "blocks": {
      "0": {"attn_norm": {"scale": jnp.ones(4)}, "mlp": {"up": {"kernel": jnp.ones((4, 4))}}}
    }
  }
  tx = build_optimizer(cfg, 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params, value=2.0, grad_norm=0.0)
  np.testing.assert_allclose(updates["blocks"]["0"]["attn_norm"]["scale"], 0.0)  # not decayed
  np.testing.assert_allclose(updates["blocks"]["0"]["mlp"]["up"]["kernel"], -0.1 * 0.5)


def test_shipped_weights_carry_provenance(tmp_path):
  """Every shipped .npz has a sidecar naming its command, revision and task family; a
  save with provenance writes one."""
  import json

  from homeo_jax.regulators.thyroid import VERSIONS, WEIGHTS_DIR

  for version in VERSIONS:
    meta = json.loads((WEIGHTS_DIR / f"{version}.json").read_text())
    assert meta["version"] == version and len(meta["git_revision"]) >= 7
    assert "teacher" in meta["task_family"] and "QuantTransformer" in meta["task_family"]
    assert meta["corpora"] == {"meta_training": "shakespeare", "held_out_lm": "python_stdlib"}
    assert set(meta["held_out_J"]) == {"mlp", "lm", "lm_2bit"}
  save_thyroid_params(init_thyroid_params("alpha", 1, 0), tmp_path / "w.npz", {"seed": 3})
  assert json.loads((tmp_path / "w.json").read_text()) == {"seed": 3}


@pytest.mark.slow
def test_constant_policy_is_the_bar_on_the_same_tasks():
  """A constant (1, 1, 1) scores exactly as the neutral thyroid; the grid scores each row as
  ``evaluate`` of that constant, and its rows reach the tasks (α and τ move J)."""
  seeds = thyroid_meta.held_out_seeds(8)
  neutral = thyroid_meta.evaluate(
    init_thyroid_params("alpha_lambda_tau"), "alpha_lambda_tau", seeds
  )
  grid = thyroid_meta.constant_grid([(1.0, 1.0, 1.0), (2.0, 1.0, 0.5)], "mlp", seeds)
  np.testing.assert_allclose(grid[0], neutral, atol=1e-5)
  single = thyroid_meta.evaluate(thyroid_meta.constant_policy(2.0, 1.0, 0.5), None, seeds)
  np.testing.assert_allclose(grid[1], single, rtol=1e-5, atol=1e-6)
  assert abs(grid[1].mean() - grid[0].mean()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lm", "lm_2bit"])
def test_lm_tasks_train_the_librarys_models(family, shakespeare_bytes):
  """The LM families really train: AdamW at the task's lr makes more progress (lower J,
  on average over 4 tasks) than at a tenth of it; the objective and its meta-gradient are
  finite."""
  seeds = jnp.arange(2_000_000, 2_000_004)
  grid = thyroid_meta.constant_grid([(1.0, 1.0, 1.0), (0.1, 1.0, 1.0)], family, seeds,
                                    shakespeare_bytes)  # fmt: skip
  assert grid[0].mean() < grid[1].mean() - 0.002, grid  # measured: -0.0049 vs +0.0002
  params = init_thyroid_params("alpha_lambda_tau")
  value, grads = jax.value_and_grad(thyroid_meta.mean_objective)(
    params, "alpha_lambda_tau", seeds[:2], family, shakespeare_bytes
  )
  assert np.isfinite(float(value))
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_grad_norm_is_measured_from_the_updates_when_not_passed():
  """In a plain optax loop (value= only) the thyroid measures ‖updates‖: first in the chain
  that is the gradient norm, so the steps equal those given grad_norm explicitly."""
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  tx = thyroid(optax.adamw, 1e-2, weights="random", update_every=1)
  given, measured = tx.init(params), tx.init(params)
  for i in range(20):
    grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1.0)), params)
    value = jnp.asarray(3.0 - 0.05 * i)
    u1, given = tx.update(grads, given, params, value=value, grad_norm=optax.tree.norm(grads))
    u2, measured = tx.update(grads, measured, params, value=value)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
  np.testing.assert_allclose(given.controller.alpha, measured.controller.alpha, rtol=1e-6)


def test_integer_arguments_of_the_inner_factory_stay_static():
  """adafactor's min_dim_size_to_factor sets shapes: steering must not trace it (it raised
  TracerBoolConversionError), and bfloat16 parameters keep Adam's β2 exact (no NaN)."""
  params = {"w": jnp.ones((256, 256)), "b": jnp.ones(3)}
  tx = thyroid(optax.adafactor, learning_rate=1e-2, weights="random")
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params, value=jnp.asarray(1.0))
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
  half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  tx = thyroid(optax.adamw, 1e-2, weights="random")
  updates, _ = jax.jit(tx.update)(half, tx.init(half), half, value=jnp.asarray(1.0))
  assert all(
    u.dtype == jnp.bfloat16 and bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates)
  )
