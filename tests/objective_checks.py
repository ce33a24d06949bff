"""Shared checks for the objective tests: numpy finite differences, 8-device sharding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def numeric_grad(f, x, eps=1e-5):
  """Central finite differences of scalar f (float64 numpy) at x."""
  x = np.array(x, np.float64)
  g = np.zeros_like(x)
  it = np.nditer(x, flags=["multi_index"])
  for _ in it:
    i = it.multi_index
    old = x[i]
    x[i] = old + eps
    up = f(x)
    x[i] = old - eps
    down = f(x)
    x[i] = old
    g[i] = (up - down) / (2 * eps)
  return g


def batch_sharding(num_devices=8):
  """A mesh over the first devices and a sharding that splits axis 0 over 'data'."""
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def sharded_equals_single(fn, *args, sharded_argnums=(0,), num_devices=8, rtol=1e-5,
                          atol=1e-6):
  """jit(fn) with args `sharded_argnums` split over devices (others replicated) equals
  jit(fn) on one device. Returns the single-device output."""
  split, replicated = batch_sharding(num_devices)
  shardings = tuple(split if i in sharded_argnums else replicated for i in range(len(args)))
  placed = [jax.device_put(a, s) for a, s in zip(args, shardings)]
  many = jax.jit(fn, in_shardings=shardings)(*placed)
  one_dev = jax.devices()[0]
  single = jax.jit(fn)(*[jax.device_put(a, one_dev) for a in args])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol,
                                                       atol=atol), many, single)
  # The inputs really were spread over the devices.
  assert len(placed[sharded_argnums[0]].sharding.device_set) == num_devices
  return single


def random_embeddings(seed, *shape):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def l2n(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def logsumexp(x):
  m = np.max(x)
  return m + np.log(np.sum(np.exp(x - m)))


def to_f64(x):
  return np.asarray(jnp.asarray(x), np.float64)


def load_config(name, arg=None):
  """configs/<name>.py's config, locked as the CLI loads it."""
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config.lock()
  return config


def build(config, seed=0):
  """(objective, model) for a config, the model initialised in one jit."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cvrl.models import create  # pylint: disable=import-outside-toplevel
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  from cvrl.objectives import base  # pylint: disable=import-outside-toplevel
  objective = base.method(**config_lib.method_args(config))
  return objective, create(lambda: objective.build(nnx.Rngs(seed)))


def random_video(seed, *shape):
  return np.random.RandomState(seed).rand(*shape).astype(np.float32)


def paths(state):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return {tuple(str(k) for k in p) for p, _ in nnx.to_flat_state(state)}
