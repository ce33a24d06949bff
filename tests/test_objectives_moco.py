import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl import config_lib
from cvrl.objectives.moco import enqueue, moco_loss, moco_loss_grouped
from objective_checks import (l2n, logsumexp, numeric_grad, random_embeddings,
                              sharded_equals_single)

T = 0.1


def numpy_moco(q, k, queue, num_valid, temperature, reduction):
  """Query clip i of video b against key clip j != i (positive) and the filled queue slots."""
  b, v, _ = q.shape
  q, k = l2n(q), l2n(k)
  negatives = queue[:num_valid]
  per_query = np.zeros(v)
  for i in range(v):
    terms = []
    for n in range(b):
      for j in range(v):
        if j == i:
          continue
        logits = np.concatenate([[q[n, i] @ k[n, j]], negatives @ q[n, i]]) / temperature
        terms.append(logsumexp(logits) - logits[0])
    per_query[i] = np.mean(terms)
  return per_query.mean() if reduction == "mean" else per_query.sum()


@pytest.mark.parametrize("rho,reduction", [(2, "mean"), (3, "mean"), (3, "sum")])
def test_loss_and_gradient_match_numpy_with_a_partly_filled_queue(rho, reduction):
  q = random_embeddings(0, 3, rho, 6)
  k = random_embeddings(1, 3, rho, 6)
  queue = l2n(random_embeddings(2, 8, 6))
  queue[5:] = 7.0  # unfilled slots: whatever they hold must not count
  f = lambda x: moco_loss(x, k, queue, 5, T, reduction=reduction)[0]
  np.testing.assert_allclose(jax.jit(f)(q), numpy_moco(q, k, queue, 5, T, reduction), rtol=1e-5)
  expected = numeric_grad(lambda x: numpy_moco(x, k, queue, 5, T, reduction), q)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(q), expected, rtol=2e-3, atol=2e-4)


@pytest.mark.slow
def test_empty_queue_gives_zero_loss_and_finite_gradient():
  q = random_embeddings(3, 2, 2, 4)
  k = random_embeddings(4, 2, 2, 4)
  f = lambda x: moco_loss(x, k, jnp.zeros((4, 4)), 0, T)[0]
  assert abs(float(f(q))) < 1e-6
  assert np.all(np.isfinite(jax.grad(f)(q)))


def test_enqueue_is_a_ring_buffer_that_counts_fill():
  queue = np.zeros((6, 2), np.float32)
  ptr, filled = 0, 0
  expected = np.zeros_like(queue)
  for step in range(4):
    keys = np.full((2, 2), step + 1, np.float32)
    queue, ptr, filled = enqueue(jnp.asarray(queue), ptr, filled, jnp.asarray(keys))
    start = (2 * step) % 6
    expected[start:start + 2] = step + 1
    np.testing.assert_array_equal(queue, expected)
    assert int(ptr) == (2 * step + 2) % 6
    assert int(filled) == min(2 * step + 2, 6)
  with pytest.raises(ValueError, match="multiple"):
    enqueue(jnp.zeros((6, 2)), 0, 0, jnp.zeros((4, 2)))


def test_eight_devices_equal_one_device_loss_gradient_and_queue():
  q = random_embeddings(5, 16, 2, 8)
  k = l2n(random_embeddings(6, 16, 2, 8))
  queue = l2n(random_embeddings(7, 64, 8))

  def step(q, k, queue, filled):
    loss, grad = jax.value_and_grad(lambda x: moco_loss(x, k, queue, filled, T)[0])(q)
    keys = jnp.swapaxes(k, 0, 1).reshape(-1, k.shape[-1])
    return loss, grad, enqueue(queue, jnp.int32(32), filled, keys)

  single = sharded_equals_single(step, q, k, queue, jnp.int32(40), sharded_argnums=(0, 1))
  new_queue = np.asarray(single[2][0])
  np.testing.assert_allclose(new_queue[32:64], np.swapaxes(k, 0, 1).reshape(32, 8), rtol=1e-6)
  np.testing.assert_allclose(new_queue[:32], queue[:32])


@pytest.mark.slow
def test_model_key_encoder_gets_no_gradient_queue_fills_then_updates_start():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from objective_checks import build, load_config, paths, random_video  # noqa: E402

  config = load_config("moco_tiny")
  config.unlock()
  config.batch_size = 2
  config.objective.queue_size = 4  # 2 videos x 2 clips: full after one step
  config.objective.queue = "global"
  config.lock()
  objective, model = build(config)
  online = paths(nnx.state(model, objective.trainable))
  target = paths(nnx.state(model, nnx.Param)) - online
  assert online and all(p[0] != "target" for p in online)
  assert target and all(p[0] == "target" for p in target)

  @nnx.jit
  def step(model, video, t):
    def f(m):
      return objective.loss(m, {"video": video}, step=t, rng=None)
    (loss, metrics), grads = nnx.value_and_grad(f, has_aux=True)(model)  # every nnx.Param
    return loss, metrics, grads

  video = random_video(0, 2, 2, 4, 16, 16, 3)
  loss, metrics, grads = step(model, video, 0)
  # An empty queue: no negatives (the loss is 0) and no update until it is full.
  assert float(loss) == 0.0 and float(metrics["queue_fill"]) == 0.0
  assert all(np.all(np.asarray(v) == 0) for _, v in nnx.to_flat_state(grads))
  assert int(model.queue_filled[...]) == 4 and int(model.queue_ptr[...]) == 0
  np.testing.assert_allclose(np.linalg.norm(model.queue[...], axis=-1), 1.0, rtol=1e-5)
  # The reference's no-update period is queue_size / batch_size = 2 steps, full or not.
  assert not bool(objective.apply_update(model, step=jnp.int32(1)))
  assert bool(objective.apply_update(model, step=jnp.int32(2)))

  loss, metrics, grads = step(model, random_video(1, 2, 2, 4, 16, 16, 3), 2)
  assert float(loss) == float(metrics["infonce"]) > 0.0  # full: the loss trains
  flat = {tuple(str(k) for k in p): np.asarray(v) for p, v in nnx.to_flat_state(grads)}
  assert all(np.all(flat[p] == 0) for p in target)
  assert any(np.any(flat[p] != 0) for p in online if p[0] == "encoder")

  # The EMA: perturb the online network, then target <- m t + (1 - m) o, m at step + 1.
  nnx.update(model, jax.tree.map(lambda x: x + 0.5, nnx.state(model, objective.trainable)))
  t_before = {"encoder": jax.tree.map(np.array, nnx.state(model.target.encoder, nnx.Param)),
              "head": jax.tree.map(np.array, nnx.state(model.target.head, nnx.Param))}
  o_before = {"encoder": jax.tree.map(np.array, nnx.state(model.encoder, nnx.Param)),
              "head": jax.tree.map(np.array, nnx.state(model.head, nnx.Param))}
  nnx.jit(lambda m: objective.after_update(m, step=jnp.int32(3)))(model)
  m = 1 - (1 - 0.994) * (np.cos(np.pi * 4 / config.total_steps) + 1) / 2
  for part in ("encoder", "head"):
    jax.tree.map(lambda a, t, o: np.testing.assert_allclose(a, m * t + (1 - m) * o, rtol=1e-5,
                                                            atol=1e-6),
                 nnx.state(getattr(model.target, part), nnx.Param), t_before[part],
                 o_before[part])


def test_validate_rejects_a_queue_the_batch_does_not_divide():
  from objective_checks import load_config  # noqa: E402
  from cvrl.objectives import base  # pylint: disable=import-outside-toplevel
  config = load_config("moco_k400_slowr50", "queue=1000")
  with pytest.raises(ValueError, match="multiple"):
    base.method(**config_lib.method_args(config))  # the objective checks its config when it is made
  base.method(**config_lib.method_args(load_config("moco_k400_slowr50", "rho=4")))


def test_per_device_queues_score_each_group_against_its_own_queue():
  q = random_embeddings(8, 8, 2, 6)  # 8 videos on 4 devices: 2 each
  k = random_embeddings(9, 8, 2, 6)
  queues = l2n(random_embeddings(10, 4, 5, 6))
  got = float(moco_loss_grouped(q, k, queues, 5, T, reduction="sum")[0])
  want = np.mean([numpy_moco(q[2 * d:2 * d + 2], k[2 * d:2 * d + 2], queues[d], 5, T, "sum")
                  for d in range(4)])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Not the global queue's loss (every query against all 20 keys).
  assert abs(got - numpy_moco(q, k, queues.reshape(20, 6), 20, T, "sum")) > 1e-3


def moco_model(queue, queue_size, batch, devices=None):
  from objective_checks import build, load_config  # noqa: E402
  config = load_config("moco_tiny")
  config.unlock()
  config.batch_size = batch
  config.objective.update(queue=queue, queue_size=queue_size, queue_devices=devices)
  config.lock()
  return build(config)


def view_outputs(fn):
  """numpy_outputs(model, video): fn(model, clips) run clip by clip on a copy of the model
  (BN in train mode over the B clips of one view, as apply_views does), normalised:
  [B, V, D]. One jit of fn for every call: compiled once per input shape."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  jitted = nnx.jit(fn)

  def numpy_outputs(model, video):
    copy = nnx.clone(model)
    out = [np.asarray(jitted(copy, jnp.asarray(video[:, j]))) for j in range(video.shape[1])]
    return l2n(np.stack(out, axis=1))
  return numpy_outputs


KEYS = view_outputs(lambda m, x: m.target.project(x))  # the key encoder's outputs
QUERIES = view_outputs(lambda m, x: m.head(m.encoder(x)))


@pytest.mark.slow
def test_per_device_queue_holds_each_devices_key_encoder_outputs_on_8_devices():
  """8 devices, 1 video of 2 clips each, queues of 6 (3 steps of 2 keys: not 1 step, so a
  stuck or skipping pointer shows): each device's queue receives that device's keys from
  the key encoder (not its queries), clip-major, at a pointer advancing 2 per step."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from objective_checks import batch_sharding, random_video  # noqa: E402
  objective, model = moco_model("per_device", 6, 8, devices=8)
  assert model.queue[...].shape == (8, 6, 16)
  # Online and key networks start equal: move the online one so queries differ from keys.
  nnx.update(model, jax.tree.map(lambda x: x + 0.3, nnx.state(model, objective.trainable)))
  split, _ = batch_sharding(8)

  @nnx.jit
  def loss_step(model, video):
    return objective.loss(model, {"video": video}, step=jnp.int32(0), rng=None)[0]

  expected = np.zeros((8, 6, 16), np.float32)
  for t in range(4):
    video = random_video(20 + t, 8, 2, 4, 16, 16, 3)
    keys, queries = KEYS(model, video), QUERIES(model, video)
    loss_step(model, jax.device_put(video, split))
    start = (2 * t) % 6
    expected[:, start:start + 2] = keys  # device d: clip 0 then clip 1 of its video
    np.testing.assert_allclose(np.asarray(model.queue[...]), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(keys, queries, atol=1e-2)
    assert int(model.queue_ptr[...]) == (2 * t + 2) % 6
    assert int(model.queue_filled[...]) == min(2 * t + 2, 6)


@pytest.mark.slow
def test_global_queue_takes_the_global_batch_keys_clip_major():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from objective_checks import random_video  # noqa: E402
  objective, model = moco_model("global", 16, 4)
  assert model.queue[...].shape == (1, 16, 16)
  # Online and key networks start equal: move the key one so its keys differ from queries.
  nnx.update(model.target, jax.tree.map(lambda x: x + 0.3, nnx.state(model.target, nnx.Param)))
  video = random_video(30, 4, 2, 4, 16, 16, 3)
  keys, queries = KEYS(model, video), QUERIES(model, video)
  assert not np.allclose(keys, queries, atol=1e-2)
  nnx.jit(lambda m, v: objective.loss(m, {"video": v}, step=jnp.int32(0), rng=None)[0])(
      model, video)
  np.testing.assert_allclose(np.asarray(model.queue[...])[0, :8],
                             np.swapaxes(keys, 0, 1).reshape(8, 16), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(model.queue[...])[0, 8:], 0.0)
  assert int(model.queue_ptr[...]) == 8


@pytest.mark.slow
def test_skipped_steps_leave_parameters_and_optimizer_state_untouched():
  """While the queue fills the reference never calls optimizer.step(): with weight decay
  and momentum on, the train step must leave every parameter as it was."""
  from cvrl.engine import optim  # pylint: disable=import-outside-toplevel
  from cvrl.engine import loop as engine  # pylint: disable=import-outside-toplevel
  from cvrl.engine import state as state_lib  # pylint: disable=import-outside-toplevel
  from objective_checks import load_config, random_video  # noqa: E402
  objective, model = moco_model("global", 8, 2)
  assert objective.no_update_steps() == 4
  tx = optim.build(load_config("moco_tiny").optim, lambda t: 0.1)
  graphdef, params, rest = state_lib.split(model, objective.trainable)
  state = state_lib.TrainState(step=jnp.int32(0), params=params, rest=rest,
                               opt_state=tx.init(params))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  step = engine.make_train_step(objective, graphdef, tx, lambda t: 0.1,
                                jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")), 0)
  before = jax.tree.map(np.array, state.params)
  for t in range(4):
    state, _ = step(state, {"video": random_video(40 + t, 2, 2, 4, 16, 16, 3)})
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)
  state, _ = step(state, {"video": random_video(50, 2, 2, 4, 16, 16, 3)})
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)),
                                         state.params, before))
  assert any(changed)
