"""Toy models and in-memory batches for the downstream tests (compile in a second)."""
import numpy as np
from flax import nnx


class TinyEncoder(nnx.Module):
  """Per-pixel Dense(3 -> C) -> BN -> ReLU -> mean over (T, H, W): an 'encoder' with BN."""

  def __init__(self, features: int = 8, *, rngs: nnx.Rngs):
    self.dense = nnx.Linear(3, features, rngs=rngs)
    self.bn = nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.num_features = features

  def __call__(self, x):
    return nnx.relu(self.bn(self.dense(x))).mean(axis=(1, 2, 3))


def tiny_encoder(seed=0, features=8, perturb_bn=True):
  enc = TinyEncoder(features, rngs=nnx.Rngs(seed))
  if perturb_bn:  # running statistics far from their init, so inference mode is visible
    rng = np.random.default_rng(seed + 100)
    enc.bn.mean[...] = np.asarray(rng.normal(size=features), np.float32)
    enc.bn.var[...] = np.asarray(rng.uniform(0.2, 3.0, size=features), np.float32)
  return enc


def encoder_numpy(enc: TinyEncoder, clips: np.ndarray) -> np.ndarray:
  """Inference-mode forward pass of TinyEncoder in numpy: [N, T, H, W, 3] -> [N, C]."""
  w, b = np.asarray(enc.dense.kernel[...]), np.asarray(enc.dense.bias[...])
  y = clips.astype(np.float64) @ w + b
  bn = enc.bn
  y = (y - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + 1e-5)
  y = y * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
  return np.maximum(y, 0).mean(axis=(1, 2, 3))


def video_batches(num_videos, batch, views=1, classes=4, shape=(2, 4, 4), seed=0, pad=False):
  """Host batches of random videos; with pad=True the last one is padded with mask 0 rows
  of garbage (label -1, index -1), as the eval pipeline does."""
  rng = np.random.default_rng(seed)
  video = rng.random((num_videos, views, *shape, 3), dtype=np.float32)
  label = rng.integers(0, classes, num_videos).astype(np.int32)
  out = []
  for s in range(0, num_videos, batch):
    v, y = video[s:s + batch], label[s:s + batch]
    n = len(y)
    b = {"video": v, "label": y, "index": np.arange(s, s + n, dtype=np.int64)}
    if pad:
      extra = batch - n
      b = {"video": np.concatenate([v, 5 * rng.random((extra, *v.shape[1:]), dtype=np.float32)]),
           "label": np.concatenate([y, -np.ones(extra, np.int32)]),
           "index": np.concatenate([b["index"], -np.ones(extra, np.int64)]),
           "mask": np.concatenate([np.ones(n, np.float32), np.zeros(extra, np.float32)])}
    elif n < batch:
      break
    out.append(b)
  return out, video, label


def tiny_data(config, directory, num_train=24, num_eval=13):
  """Point a job config at tiny synthetic shards (4 classes, 16x32x32 videos, 4-frame clips)."""
  d = config.data
  d.source = "synthetic"
  d.synthetic.dir = str(directory)
  d.synthetic.num_train_videos = num_train
  d.synthetic.num_eval_videos = num_eval
  d.synthetic.num_classes = 4
  d.synthetic.num_frames = 16
  d.synthetic.size = 32
  d.synthetic.num_shards = 2
  d.num_frames = 4
  d.stride = 2
  d.crop_size = 16
  d.eval_resize = 16
  d.eval_crop_size = 16
  d.jit_photometric = False
  config.model.depth = 18
  config.model.width = 0.125
  config.model.preset = "cvrl"
  return config


def max_fusion(*probs):
  """A fusion function as a user would name it in evaluate.fusion ('module:function')."""
  return np.max(np.stack(probs), axis=0)


def numpy_filled(make, seed=0):
  """The module `make()` builds, with seeded numpy values and no compilation (an R3D's jit'd
  init takes seconds to compile on CPU): He-scaled kernels, small biases, BN statistics
  near (0, 1) but not equal to their init."""
  import jax  # pylint: disable=import-outside-toplevel
  abstract = nnx.eval_shape(make)
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = [k.key for k in path if hasattr(k, "key")][-1]
    shape = x.shape
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # dropout's RNG stream
      return jax.random.key(seed)
    if np.issubdtype(x.dtype, np.integer):  # RNG counts
      return np.zeros(shape, x.dtype)
    if name == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      v = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
    elif name in ("scale", "var"):
      v = rng.uniform(0.8, 1.2, size=shape)
    else:  # bias, mean
      v = rng.normal(size=shape) * 0.05
    return np.asarray(v, x.dtype)
  state = jax.tree_util.tree_map_with_path(fill, state)
  return nnx.merge(graphdef, state)


def save_numpy_checkpoint(pretrain_config, workdir, seed=3, step=5):
  """A pretraining checkpoint as the trainer writes it (cvrl.engine.checkpoint), of the
  objective's model filled by `numpy_filled` (values no initialiser gives). Returns the
  saved full state."""
  import optax  # pylint: disable=import-outside-toplevel
  from cvrl import config_lib, objectives  # pylint: disable=import-outside-toplevel
  from cvrl.engine import checkpoint  # pylint: disable=import-outside-toplevel
  from cvrl.engine import state as state_lib  # pylint: disable=import-outside-toplevel
  objective = objectives.method(**config_lib.method_args(pretrain_config))
  model = numpy_filled(lambda: objective.build(nnx.Rngs(seed)), seed=seed)
  _, params, rest = state_lib.split(model, objective.trainable)
  tx = optax.sgd(0.1)
  state = state_lib.TrainState(step=np.int32(step), params=params, rest=rest,
                               opt_state=tx.init(params))
  ckpt = checkpoint.Checkpointer(str(workdir))
  ckpt.save(state, config_lib.as_dict(pretrain_config))
  ckpt.close()
  return state_lib.full_state(state)


def clip_stream(num_videos, batch, seed=0, shape=(2, 4, 4), drift_per="epoch"):
  """make(start_step) -> a fresh iterator of the same endless stream of toy batches, as the
  pipeline's (engine.skip'ed to `start_step`): each pass over the videos shifted by 0.01
  per epoch, or per step (`drift_per='step'`), so no two epochs (or steps) repeat."""
  from cvrl.engine import loop as engine  # pylint: disable=import-outside-toplevel
  batches, _, _ = video_batches(num_videos, batch, seed=seed, shape=shape)

  def make(start_step=0):
    def gen():
      step = epoch = 0
      while True:
        for b in batches:
          yield {"video": b["video"] + 0.01 * (step if drift_per == "step" else epoch),
                 "label": b["label"]}
          step += 1
        epoch += 1
    return engine.skip(gen(), start_step)
  return make

