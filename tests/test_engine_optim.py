"""Optimisers and schedules against their formulas (numpy), and the weight-decay mask."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cvrl import config_lib, objectives
from cvrl.engine import optim


def optim_config(**kw):
  c = config_lib.pretrain_config("cvrl").optim
  c.update(kw)
  return c


def test_warmup_then_cosine_matches_the_formula():
  peak, w, total = 0.64, 10, 110
  s = optim.warmup_cosine(peak, w, total)
  for t in [0, 1, 5, 9, 10, 11, 37, 60, 109, 110, 150]:
    want = peak * t / w if t < w else peak * 0.5 * (1 + math.cos(math.pi * min(t - w, 100) / 100))
    assert float(s(t)) == pytest.approx(want, rel=1e-5, abs=1e-7), t
  assert float(optim.warmup_cosine(1.0, 0, 10)(0)) == pytest.approx(1.0)
  assert float(optim.warmup_cosine(2.0, 4, 10, "constant")(7)) == pytest.approx(2.0)
  with pytest.raises(ValueError, match="cosine"):
    optim.warmup_cosine(1.0, 0, 10, "step")


def test_learning_rate_scales_linearly_with_batch():
  c = optim_config(base_lr=0.32, base_batch_size=1024)
  assert optim.peak_learning_rate(c, 1024) == pytest.approx(0.32)
  assert optim.peak_learning_rate(c, 256) == pytest.approx(0.08)
  assert optim.peak_learning_rate(c, 4096) == pytest.approx(1.28)


def test_decay_mask_selects_conv_and_dense_kernels_only():
  c = config_lib.pretrain_config("cvrl")
  c.model.update(depth=18, width=0.125, preset="r3d18")
  c.objective.update(head_hidden=16, head_out=8)
  model = nnx.eval_shape(lambda: objectives.method(**config_lib.method_args(c)).build(nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  mask = optim.decay_mask(params)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_mask = jax.tree.leaves(mask)
  assert len(flat) == len(flat_mask)
  decayed = kept = 0
  for (path, leaf), m in zip(flat, flat_mask):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    is_kernel = "kernel" in names
    assert m == is_kernel, names
    if m:
      assert leaf.ndim in (2, 5)  # dense or conv
      decayed += 1
    else:
      assert leaf.ndim == 1 and ("bn" in names or "hidden_norms" in names or names[-2] == "bias")
      kept += 1
  assert decayed > 10 and kept > 10


def toy_params():
  rng = np.random.default_rng(0)
  return {"conv": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
          "bn": {"scale": rng.normal(size=(4,)).astype(np.float32),
                 "bias": rng.normal(size=(4,)).astype(np.float32)}}


def toy_grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), toy_params())


def run(tx, params, steps):
  state = tx.init(params)
  for t in range(steps):
    updates, state = tx.update(toy_grads(t), state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params)


SCHED = lambda t: 0.1 * (1 + t)  # a learning rate that changes every step


def test_sgd_is_keras_momentum_with_l2_on_kernels():
  c = optim_config(name="sgd", momentum=0.9, weight_decay=0.01, nesterov=False)
  got = run(optim.build(c, SCHED), toy_params(), 4)
  p = toy_params()
  v = jax.tree.map(np.zeros_like, p)
  for t in range(4):
    g = toy_grads(t)
    for mod, name in [("conv", "kernel"), ("bn", "scale"), ("bn", "bias")]:
      grad = g[mod][name] + (0.01 * p[mod][name] if name == "kernel" else 0)
      v[mod][name] = 0.9 * v[mod][name] - SCHED(t) * grad
      p[mod][name] = p[mod][name] + v[mod][name]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, p)


def test_lars_trust_ratio_and_exclusions():
  c = optim_config(name="lars", momentum=0.9, weight_decay=0.01, lars_trust=0.001, lars_eps=0.0)
  got = run(optim.build(c, SCHED), toy_params(), 3)
  p = toy_params()
  v = jax.tree.map(np.zeros_like, p)
  for t in range(3):
    g = toy_grads(t)
    for mod, name in [("conv", "kernel"), ("bn", "scale"), ("bn", "bias")]:
      w = p[mod][name]
      u = g[mod][name]
      if name == "kernel":
        u = u + 0.01 * w
        u = u * 0.001 * np.linalg.norm(w) / np.linalg.norm(u)
      v[mod][name] = 0.9 * v[mod][name] + SCHED(t) * u
      p[mod][name] = w - v[mod][name]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, p)


def test_adamw_decays_kernels_only():
  c = optim_config(name="adamw", weight_decay=0.5)
  zero = lambda t: jax.tree.map(np.zeros_like, toy_params())
  tx = optim.build(c, lambda t: 0.1)
  params = toy_params()
  updates, _ = tx.update(zero(0), tx.init(params), params)
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * 0.5 * params["conv"]["kernel"],
                             rtol=1e-6)
  assert not np.any(updates["bn"]["scale"]) and not np.any(updates["bn"]["bias"])


def test_grad_clip_and_bad_name():
  c = optim_config(name="sgd", momentum=0.0, weight_decay=0.0, grad_clip=1.0)
  tx = optim.build(c, lambda t: 1.0)
  g = {"kernel": jnp.full((4,), 10.0)}
  updates, _ = tx.update(g, tx.init(g), g)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)
  with pytest.raises(ValueError, match="sgd"):
    optim.build(optim_config(name="adam"), lambda t: 1.0)


def slowfast_lr(cur_epoch, base_lr, max_epoch, warmup_epochs, warmup_start_lr):
  """SlowFast's lr_policy.get_lr_at_epoch with LR_POLICY 'cosine' (COSINE_END_LR 0,
  COSINE_AFTER_WARMUP False), written out from its definition."""
  cosine = lambda e: base_lr * (math.cos(math.pi * e / max_epoch) + 1.0) * 0.5
  if cur_epoch < warmup_epochs:
    alpha = (cosine(warmup_epochs) - warmup_start_lr) / warmup_epochs
    return cur_epoch * alpha + warmup_start_lr
  return cosine(cur_epoch)


def test_half_cosine_is_slowfast_lr_policy():
  # 200 epochs of 10 steps, 35 warm-up epochs: the rho study's schedule.
  c = optim_config(base_lr=0.6, base_batch_size=64, schedule="half_cosine",
                   warmup_start_lr=0.001)
  _, s, peak_lr = optim.make(c, 128, 2000, 350)  # the function every job calls
  peak = 1.2
  assert peak_lr == pytest.approx(peak)
  for t in [0, 1, 100, 349, 350, 351, 1000, 1500, 1999, 2000]:
    want = slowfast_lr(t / 10, peak, 200, 35, 0.001)
    assert float(s(t)) == pytest.approx(want, rel=1e-5, abs=1e-6), t
  # Not restarted: just after warm-up the rate is already below the peak, by the cosine
  # of 35 / 200 of the run (CVRL's 'cosine' restarts at the peak there).
  assert float(s(350)) == pytest.approx(peak * (1 + math.cos(math.pi * 35 / 200)) / 2, rel=1e-5)
  assert float(optim.warmup_cosine(peak, 350, 2000, "cosine")(350)) == pytest.approx(peak)
  # Warm-up is a straight line from the start value to the cosine's value at 35 epochs.
  assert float(s(175)) == pytest.approx((0.001 + float(s(350))) / 2, rel=1e-5)
  # Parameter groups (fine-tuning's backbone and head) warm up from the same start value.
  c.head_lr = 0.3
  _, s_groups, peaks = optim.make(c, 128, 2000, 350, (lambda p: p, {"a": "base_lr",
                                                                   "b": "head_lr"}))
  assert peaks == pytest.approx({"a": peak, "b": 0.6})
  assert float(s_groups(0)) == pytest.approx(0.001) and float(s_groups(175)) == float(s(175))
