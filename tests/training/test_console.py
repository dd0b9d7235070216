from homeo_jax.training.console import layer_rows, ouro_lines


def metrics(**overrides):
  m = {
    "loss": 2.0, "lr": 1e-3, "grads/norm": 0.5, "dt": 0.01, "tok_s": 1000.0,
    "telemetry/ce_loss": 1.9, "telemetry/ponder": 0.0, "telemetry/ponder_raw": 0.01,
    "telemetry/coupon": 0.02, "telemetry/p_low": 0.1, "telemetry/baton_rat": 0.2,
    "telemetry/lam_mu": 0.456,
    "telemetry/passes_run": 3.0, "telemetry/k_exec": 1.6, "telemetry/avg_k": 1.5,
    "telemetry/gap": 1.5, "telemetry/wasted_compute": 0.4667, "telemetry/delta_ce": 0.01,
    "telemetry/delta_pred_entropy": -0.02,
    "telemetry/pass1_ce": 1.91, "telemetry/forced_k": 0.0,
    "telemetry/layer0/passes_run": 3.0, "telemetry/layer0/k_exec": 1.6,
    "telemetry/layer0/delta_p": -0.05,
    "regulators/compute_price/price": 0.03, "regulators/compute_price/deadband": 0.0,
    "regulators/compute_price/ctrl_err": 0.1, "regulators/compute_price/audit_delta_ce": 0.5,
  }  # fmt: skip
  m.update({k.replace("__", "/"): v for k, v in overrides.items()})
  return m


def test_ouro_lines_use_the_seeds_semantics():
  lines = ouro_lines(10, metrics())
  # exec is the batch's executed passes; the layer line: k_exec = passes run, avg = mean
  assert "exec 3.00/k 1.50/gap +1.50 | waste 47%" in lines[0]
  assert "L0 k_exec 3 " in lines[2] and "avg 1.60" in lines[2] and "Δp -0.050" in lines[2]
  assert "ponder 0.0000 λp 0.03" in lines[2]
  # the coupon covered the raw cost; recurrence sharpened the prediction (ΔH < 0)
  assert "[ECONOMIC WIN]" in lines[1] and "[CONFIDENCE+]" in lines[1]
  # a positive ΔCE from an earlier audit does not latch onto a regular step
  assert "[AUDIT-POS]" not in lines[1] and "[AUDIT]" not in lines[0]


def test_ouro_flags_follow_the_step():
  audit = ouro_lines(11, metrics(telemetry__forced_k=2.0))
  assert "[AUDIT]" in audit[0] and "[AUDIT-POS]" in audit[1]
  hurt = ouro_lines(11, metrics(telemetry__delta_ce=-0.01, telemetry__delta_pred_entropy=0.01))
  assert "ΔCE -0.0100" in hurt[1]  # signed: a step where recurrence hurt is visible
  assert not any(tag in hurt[1] for tag in ("[ECONOMIC WIN]", "[CONFIDENCE+]", "[AUDIT-POS]"))


def test_layer_rows_group_the_per_layer_telemetry():
  m = {"telemetry/layer0/k_exec": 1.5, "telemetry/layer1/k_exec": 2.0,
       "telemetry/layer1/survival2": 0.4, "telemetry/avg_k": 1.7, "loss": 1.0}  # fmt: skip
  assert layer_rows(m) == [{"k_exec": 1.5}, {"k_exec": 2.0, "survival2": 0.4}]
  assert layer_rows({"loss": 1.0}) == []


def test_a_named_compute_price_keeps_its_dashboard():
  renamed = {
    k.replace("regulators/compute_price/", "regulators/price_l2/"): v for k, v in metrics().items()
  }
  lines = ouro_lines(10, renamed)
  assert "λp 0.03 " in lines[0] and "CTRL_ERR +0.100" in lines[0]
  assert "audit ΔCE +0.5000" in lines[1]


def test_tags_follow_the_seeds_conditions():
  """[ECONOMIC WIN]: ΔCE > 0; [CONFIDENCE+]: ΔCE > 0 and ΔH < 0 (the seed's table); the
  BATON field carries the gate's mean (lam)."""
  paid = ouro_lines(10, metrics(telemetry__ponder=0.004))  # the coupon did not cover the cost
  assert "[ECONOMIC WIN]" in paid[1] and "BATON 0.200 (lam=0.456)" in paid[0]
  sharper = ouro_lines(10, metrics(telemetry__delta_ce=-0.01, telemetry__delta_pred_entropy=-0.1))
  assert "[CONFIDENCE+]" not in sharper[1] and "[ECONOMIC WIN]" not in sharper[1]
