"""CVRL InfoNCE: an independent numpy computation, and sharded == single-device (value and
gradients) for 1, 2, 4 and 8 devices, for both implementations."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from cvrl import config_lib, objectives
from cvrl.core import parallel
from cvrl.engine import input as input_lib
from cvrl.objectives import contrastive

TEMPERATURE = 0.1


def numpy_info_nce(z_a, z_b, t):
  """Per anchor: candidates = every other clip of the batch (self left out, not masked)."""
  z_a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True)
  z_b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True)
  n = len(z_a)
  clips = np.concatenate([z_a, z_b]).astype(np.float64)
  losses, hits, entropies = [], [], []
  for view in range(2):
    for i in range(n):
      anchor = view * n + i
      positive = (1 - view) * n + i
      others = [j for j in range(2 * n) if j != anchor]
      logits = np.array([clips[anchor] @ clips[j] for j in others]) / t
      logp = logits - logits.max() - np.log(np.sum(np.exp(logits - logits.max())))
      pos = others.index(positive)
      losses.append(-logp[pos])
      hits.append(float(np.argmax(logits) == pos))
      entropies.append(-np.sum(np.exp(logp) * logp))
  losses = np.array(losses)
  return (losses[:n].mean() + losses[n:].mean(), np.mean(hits), np.mean(entropies))


def embeddings(n=8, d=16, seed=0):
  rng = np.random.default_rng(seed)
  z_a = rng.normal(size=(n, d)).astype(np.float32)
  # Views correlated with their video, so accuracy is neither 0 nor 1.
  z_b = (z_a + 1.2 * rng.normal(size=(n, d))).astype(np.float32)
  return z_a, z_b


def test_global_loss_matches_numpy():
  z_a, z_b = embeddings(6, 5)
  loss, metrics = jax.jit(lambda a, b: contrastive.info_nce_pair(a, b, TEMPERATURE))(z_a, z_b)
  want_loss, want_acc, want_ent = numpy_info_nce(z_a, z_b, TEMPERATURE)
  assert float(loss) == pytest.approx(want_loss, rel=1e-5)
  assert 0 < want_acc < 1
  assert float(metrics["contrastive_accuracy"]) == pytest.approx(want_acc)
  assert float(metrics["contrastive_entropy"]) == pytest.approx(want_ent, rel=1e-4)


def reference(z_a, z_b):
  """Single device, concatenated global batch, global math."""
  cpu0 = jax.devices()[0]
  f = jax.jit(jax.value_and_grad(lambda a, b: contrastive.info_nce_pair(a, b, TEMPERATURE),
                                 argnums=(0, 1), has_aux=True))
  return f(jax.device_put(z_a, cpu0), jax.device_put(z_b, cpu0))


@pytest.mark.slow
@pytest.mark.parametrize("impl", sorted(contrastive.IMPLS))
def test_sharded_loss_and_grads_equal_single_device(impl):
  z_a, z_b = embeddings(8, 16)
  (want, want_metrics), (want_ga, want_gb) = reference(z_a, z_b)
  assert float(want) == pytest.approx(numpy_info_nce(z_a, z_b, TEMPERATURE)[0], rel=1e-5)
  fn = contrastive.IMPLS[impl]
  for count in (1, 2, 4, 8):
    mesh = parallel.make_mesh(jax.devices()[:count])
    sharding = NamedSharding(mesh, P("data"))
    a, b = jax.device_put(z_a, sharding), jax.device_put(z_b, sharding)
    with jax.set_mesh(mesh):
      (loss, metrics), (ga, gb) = jax.jit(jax.value_and_grad(
          lambda a, b: fn(a, b, TEMPERATURE), argnums=(0, 1), has_aux=True))(a, b)
    assert float(loss) == pytest.approx(float(want), rel=1e-5), count
    for k in want_metrics:
      assert float(metrics[k]) == pytest.approx(float(want_metrics[k]), rel=1e-5), (count, k)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(want_ga), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gb), np.asarray(want_gb), rtol=1e-4, atol=1e-6)
    assert ga.sharding.is_equivalent_to(sharding, 2)


def test_shard_map_loss_keeps_logits_local_times_global():
  """The per-device program never builds an N x N block: its largest logits are b x 2N."""
  z_a, z_b = embeddings(8, 4)
  mesh = parallel.make_mesh(jax.devices()[:8])
  with jax.set_mesh(mesh):
    jaxpr = jax.make_jaxpr(lambda a, b: contrastive.info_nce_pair_sharded(a, b, 0.1))(z_a, z_b)
  shapes = set()

  def walk(jx):
    for eqn in jx.eqns:
      for v in eqn.outvars:
        shapes.add(tuple(getattr(v.aval, "shape", ())))
      for p in eqn.params.values():
        if hasattr(p, "jaxpr"):
          walk(p.jaxpr if hasattr(p.jaxpr, "eqns") else p.jaxpr.jaxpr)
        elif hasattr(p, "eqns"):
          walk(p)
  walk(jaxpr.jaxpr)
  assert (1, 16) in shapes  # local anchors (1) x both views of the global batch (2 x 8)
  assert not any(len(s) == 2 and s[0] >= 8 and s[1] >= 8 for s in shapes)


def test_shard_map_needs_a_mesh_and_bad_impl_is_rejected():
  z_a, z_b = embeddings(4, 4)
  with pytest.raises(ValueError, match="mesh"):
    contrastive.info_nce_pair_sharded(z_a, z_b, 0.1)
  c = config_lib.pretrain_config("cvrl")
  c.objective.loss_impl = "ring"
  with pytest.raises(ValueError, match="shard_map"):
    objectives.method(**config_lib.method_args(c))


def tiny_config(impl):
  c = config_lib.pretrain_config("cvrl")
  c.model.update(depth=18, width=0.125, preset="r3d18")
  c.objective.update(head_hidden=16, head_out=8, head_layers=1, loss_impl=impl)
  return c


@pytest.mark.slow
def test_model_loss_on_8_devices_equals_one_device():
  """Encoder + head + loss: synchronised BN and the sharded loss give the 1-device numbers."""
  rng = np.random.default_rng(0)
  video = rng.uniform(size=(8, 2, 2, 8, 8, 3)).astype(np.float32)
  results = []
  for impl, count in (("global", 1), ("shard_map", 8)):
    objective = objectives.method(**config_lib.method_args(tiny_config(impl)))
    model = nnx.eval_shape(lambda: objective.build(nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mesh = parallel.make_mesh(jax.devices()[:count])
    params, rest = jax.jit(lambda: nnx.split(objective.build(nnx.Rngs(0)), nnx.Param, ...)[1:],
                           out_shardings=parallel.replicated(mesh))()
    batch = input_lib.global_batch({"video": video}, mesh)

    def loss_fn(params, rest, batch):
      m = nnx.merge(graphdef, params, rest, copy=True)
      loss, metrics = objective.loss(m, batch, step=0, rng=None)
      return loss, (metrics, nnx.state(m, nnx.BatchStat))

    with jax.set_mesh(mesh):
      (loss, (metrics, stats)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
          params, rest, batch)
    results.append((loss, metrics, stats, grads))
  (l1, m1, s1, g1), (l8, m8, s8, g8) = results
  assert float(l8) == pytest.approx(float(l1), rel=1e-5)
  assert float(m8["contrastive_accuracy"]) == float(m1["contrastive_accuracy"])
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * np.abs(a).max())
