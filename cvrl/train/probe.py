"""Linear probe: a frozen backbone, pooled L2-normalised features, one linear layer (CVRL).

The backbone runs in inference mode (BN on its running statistics) and is never
updated; only the LinearClassifier is trained, with SGD momentum and a warm-up cosine
schedule (the paper's K600 recipe: 32 frames, lr 32.0 at batch 1024, 100 epochs, 5
warm-up epochs, no weight decay, crop + flip without colour augmentation).

Two paths give the same classifier:
- end-to-end (default): every step decodes and augments fresh clips and runs the
  frozen backbone on them, as the reference does;
- `probe.extract_features=True`: the backbone runs once per cached clip. With
  `probe.feature_epochs = K > 0` the first K epochs of the very stream the end-to-end path
  reads (same clips, same augmentation, same order) are encoded, trained on in that
  order, then reshuffled for the remaining epochs: K augmented views per video instead
  of one per epoch. When K covers the whole run both paths see identical inputs.
  `feature_epochs = 0` encodes each video once, without augmentation (centre clip,
  centre crop), and trains on reshuffled epochs of those features.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from ml_collections import config_dict

from cvrl import config_lib, parallel
from cvrl.models import default_model_config, extra_frames
from cvrl.train import features as F
from cvrl.train import optim
from cvrl.train import results as R

NEEDS_WORKDIR = True


# ------------------------------------------------------------------------------ configs

def probe_fields() -> ml_collections.ConfigDict:
  """`config.probe`: the probe's own options."""
  return ml_collections.ConfigDict(dict(
      extract_features=False,  # encode clips once, train on cached features
      feature_epochs=1,        # epochs of augmented clips cached (0: one un-augmented clip)
      normalize=True,          # L2-normalise the pooled features (CVRL)
      random_baseline=False,   # also probe a random-init encoder of the same architecture
      evaluate=True,           # multi-view test of the trained probe (config.evaluate)
      save_model=True,         # DIR/model + DIR/model.json for the evaluate job
  ))


def base_config() -> ml_collections.ConfigDict:
  """Every field the probe job reads, at the CVRL K600 linear-eval values (methods.md §1)."""
  # pylint: disable=import-outside-toplevel
  from cvrl.data.config import default_data_config, set_probe_augmentation
  from cvrl.train.evaluate import eval_fields
  c = ml_collections.ConfigDict()
  c.job = "probe"
  c.seed = 0
  c.pretrained = ""  # checkpoint to probe (the encoder is rebuilt from its stored config)
  c.pretrained_step = config_dict.placeholder(int)  # None: the latest
  c.random_init = False  # probe a random-init `config.model` instead (no checkpoint)
  c.batch_size = 1024
  c.total_epochs = 100
  c.total_steps = None
  c.warmup_epochs = 5
  c.warmup_steps = None
  c.model = default_model_config()  # only read with random_init
  c.data = default_data_config()
  set_probe_augmentation(c.data)
  c.data.num_frames = 32
  c.data.stride = 2
  c.data.num_classes = config_dict.placeholder(int)  # None: from the source
  c.data.num_train_examples = config_dict.placeholder(int)  # None: counted
  c.optim = optim_fields(name="sgd", base_lr=32.0, base_batch_size=1024, momentum=0.9,
                         nesterov=False, weight_decay=0.0)
  c.probe = probe_fields()
  c.evaluate = eval_fields()
  c.log = ml_collections.ConfigDict(dict(every_steps=100))
  return c


def validate(config) -> None:
  F.validate_downstream(config, "probe")
  if int(config.probe.feature_epochs) < 0:
    raise ValueError("config.probe.feature_epochs must be >= 0")


# -------------------------------------------------------------------------- optimisation

def optim_fields(**overrides) -> ml_collections.ConfigDict:
  """`config.optim`: cvrl.train.optim's fields (pretraining's defaults) with `overrides`."""
  c = ml_collections.ConfigDict(config_lib.pretrain_config().optim.to_dict())
  c.update(overrides)
  return c


def make_optimizer(optim_config, global_batch: int, total_steps: int, warmup_steps: int):
  """(optax transform, schedule, peak lr): cvrl.train.optim's optimizer with a linear
  warm-up to the linearly scaled peak, then cosine to 0."""
  peak = optim.peak_learning_rate(optim_config, global_batch)
  schedule = optim.warmup_cosine(peak, warmup_steps, total_steps,
                                 optim_config.get("schedule", "cosine"))
  return optim.build(optim_config, schedule), schedule, peak


# ----------------------------------------------------------------------------- training

class HeadTrainer:
  """Trains a classifier head on a frozen encoder: from clips or from cached features.

  Both steps share one `update`; the clip step computes the features with the same
  `features` function the extraction uses, so the two paths differ only in XLA fusion.
  """

  def __init__(self, encoder: nnx.Module, head: nnx.Module, tx, mesh, data_config=None):
    self.mesh = mesh
    self.tx = tx
    enc_def, self.encoder_state = nnx.split(F.frozen(encoder))
    self.head_def, self.params, self.rest = nnx.split(head, nnx.Param, ...)
    init, self._features, self._feature_step, self._clip_step = _head_functions(
        enc_def, self.head_def, tx, mesh, F.frozen_config(data_config))
    self.opt_state = init(self.params)
    self.step = 0

  def features(self, batch: dict) -> jax.Array:
    """Pooled features [B, C] of a host batch's clips (mean over its views)."""
    return self._features(self.encoder_state, F.clip_inputs(self.mesh, batch))

  def step_on_clips(self, batch: dict) -> dict:
    self.params, self.opt_state, m = self._clip_step(
        self.params, self.rest, self.opt_state, self.encoder_state,
        F.clip_inputs(self.mesh, batch), F.to_global(self.mesh, batch["label"].astype(np.int32)))
    self.step += 1
    return m

  def step_on_features(self, feats: np.ndarray, labels: np.ndarray) -> dict:
    self.params, self.opt_state, m = self._feature_step(
        self.params, self.rest, self.opt_state, F.to_global(self.mesh, feats),
        F.to_global(self.mesh, labels.astype(np.int32)))
    self.step += 1
    return m

  def head(self) -> nnx.Module:
    return nnx.merge(self.head_def, self.params, self.rest)


@functools.lru_cache(maxsize=None)
def _head_functions(enc_def, head_def, tx, mesh, data_config):
  """jit'd (opt init, features, step on features, step on clips), shared by every trainer
  of the same architectures and optimizer (a checkpoint and its random baseline)."""
  rep, rows = F.replicated(mesh), F.batch_sharding(mesh)

  def features(encoder_state, inputs):  # [B, V, T, H, W, 3] -> [B, C], mean over views
    video = F.clips(inputs, data_config)
    enc = nnx.merge(enc_def, encoder_state)
    b, v = video.shape[:2]
    f = enc(video.reshape((b * v,) + video.shape[2:])).reshape(b, v, -1)
    return jax.lax.stop_gradient(jnp.mean(f.astype(jnp.float32), axis=1))

  def update(params, rest, opt_state, feats, labels):
    def loss_fn(p):
      logits = nnx.merge(head_def, p, rest)(feats)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, jnp.mean(jnp.argmax(logits, -1) == labels)
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, "accuracy": acc}

  step_kw = dict(donate_argnums=(0, 2), out_shardings=(rep, rep, rep))
  return (jax.jit(tx.init, out_shardings=rep),
          jax.jit(features, out_shardings=rows),
          jax.jit(update, **step_kw),
          jax.jit(lambda p, r, o, es, v, lab: update(p, r, o, features(es, v), lab), **step_kw))


def cached_batches(feats: np.ndarray, labels: np.ndarray, batch: int, replay_rows: int,
                   seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Host batches from cached features: the first `replay_rows` rows in stored order, then
  passes over all rows in fresh seeded permutations (one per pass, wrapping across passes)."""
  for start in range(0, replay_rows - batch + 1, batch):
    yield feats[start:start + batch], labels[start:start + batch]
  rng = np.random.default_rng([seed, 0x9B0BE])
  order = np.empty([0], np.int64)
  while True:
    while len(order) < batch:
      order = np.concatenate([order, rng.permutation(len(labels))])
    take, order = order[:batch], order[batch:]
    yield feats[take], labels[take]


def _log(name, step, total, m, lr, t0, clips):
  if jax.process_index() == 0:
    rate = clips / max(time.time() - t0, 1e-9)
    print(f"probe[{name}] step {step}/{total} loss={float(m['loss']):.4f} "
          f"accuracy={float(m['accuracy']):.3f} lr={lr:.4g} clips/s={rate:.1f}", flush=True)


def train_probes(encoders: dict[str, nnx.Module], config: ml_collections.ConfigDict, mesh, *,
                 num_classes: int, train_batches, eval_batches=None, total_steps: int,
                 warmup_steps: int, steps_per_epoch: int) -> dict[str, tuple[nnx.Module, dict]]:
  """Trains one probe head per encoder on the same clips; {name: (head, training stats)}.

  Every encoder sees every batch, so a pretrained encoder and its random-init baseline
  cost one pass of the input pipeline. Heads start from the same initialisation.
  train_batches(): a fresh iterator of host train batches (the augmented stream).
  eval_batches(): host batches of the train split without augmentation, each video once
    (masked padding): the features of `probe.feature_epochs = 0`.
  """
  global_batch = int(config.batch_size)
  local = F.local_batch_size(global_batch, mesh)
  tx, schedule, lr = make_optimizer(config.optim, global_batch, total_steps, warmup_steps)
  trainers = {}
  for name, encoder in encoders.items():
    head = F.make_head(encoder.num_features, num_classes, normalize=bool(config.probe.normalize),
                       dropout=0.0, seed=int(config.seed) + 1, mesh=mesh)
    trainers[name] = HeadTrainer(encoder, head, tx, mesh, config.data)
  every = max(1, int(config.log.every_steps))
  stats = {name: {"total_steps": total_steps, "warmup_steps": warmup_steps, "learning_rate": lr,
                  "global_batch": global_batch,
                  "extract_features": bool(config.probe.extract_features)}
           for name in encoders}
  last = {}
  t0 = time.time()

  if not config.probe.extract_features:
    it = train_batches()
    for step in range(total_steps):
      batch = next(it)
      for name, trainer in trainers.items():
        last[name] = trainer.step_on_clips(batch)
        if (step + 1) % every == 0 or step + 1 == total_steps:
          _log(name, step + 1, total_steps, last[name], float(schedule(step)), t0,
               (step + 1) * global_batch)
    for name in encoders:
      stats[name]["encoder_passes"] = total_steps * global_batch
  else:
    k = int(config.probe.feature_epochs)
    t_extract = time.time()
    cache = {}
    if k > 0:  # the first K epochs of the augmented stream, in stream order
      cache_steps = min(total_steps, k * steps_per_epoch)
      it = train_batches()
      outs, labels = {name: [] for name in trainers}, []
      for _ in range(cache_steps):
        batch = next(it)
        for name, trainer in trainers.items():
          outs[name].append(trainer.features(batch))
        labels.append(np.asarray(batch["label"]))
      labels = np.concatenate(labels)
      for name in trainers:
        cache[name] = (np.concatenate([F.to_host_local(mesh, o) for o in outs[name]]), labels,
                       len(labels))
    else:  # one un-augmented clip per video, this host's videos only
      runners = {name: t.features for name, t in trainers.items()}
      splits = F.run_splits(runners, mesh, eval_batches(), all_hosts=False)
      cache = {name: (sp.values, sp.labels, 0) for name, sp in splits.items()}
    for name, (feats, labels, replay) in cache.items():
      stats[name]["extract_seconds"] = time.time() - t_extract
      stats[name]["cached_features"] = int(len(labels))
      stats[name]["encoder_passes"] = int(len(labels)) * jax.process_count()
      it = cached_batches(feats, labels, local, replay, int(config.seed))
      t0 = time.time()
      for step in range(total_steps):
        f, lab = next(it)
        last[name] = trainers[name].step_on_features(f, lab)
        if (step + 1) % every == 0 or step + 1 == total_steps:
          _log(name, step + 1, total_steps, last[name], float(schedule(step)), t0, 0)
      stats[name]["seconds"] = time.time() - t0
  out = {}
  for name, trainer in trainers.items():
    stats[name]["train_loss"] = float(last[name]["loss"])
    stats[name]["train_accuracy"] = float(last[name]["accuracy"])
    stats[name].setdefault("seconds", time.time() - t0)
    out[name] = (trainer.head(), stats[name])
  return out


def train_probe(encoder: nnx.Module, config, mesh, **kwargs) -> tuple[nnx.Module, dict]:
  """train_probes for one encoder: (head, training stats)."""
  return train_probes({"probe": encoder}, config, mesh, **kwargs)["probe"]


# ------------------------------------------------------------------------------ the job

def _datasets(config, seed: int, mesh, model_config):
  """Factories of host batch iterators: augmented train stream, un-augmented train split,
  clips of the frames the encoder of `model_config` takes (T + 1 for a DIF encoder)."""
  from cvrl.data import pipeline  # pylint: disable=import-outside-toplevel
  local = F.local_batch_size(int(config.batch_size), mesh)
  sampler = {"name": "single", "extra_frames": extra_frames(model_config)}

  def train_batches():
    ds = pipeline.build_dataset(config.data, sampler=sampler, train=True,
                                batch_size=local, seed=seed)
    return pipeline.iterate(ds)

  def plain_batches():
    ds = pipeline.build_dataset(config.data, sampler=sampler, train=False,
                                batch_size=local, seed=seed, split="train")
    return pipeline.iterate(ds)
  return train_batches, plain_batches


def _encoders(config, mesh) -> tuple[dict, dict, dict]:
  """{name: encoder}, {name: model config}, {name: provenance}: the encoder to probe and,
  with `probe.random_baseline`, a random-init one of the same architecture."""
  encoder, model_config, source = F.load_encoder(config, mesh)
  encoders, models, sources = {"probe": encoder}, {"probe": model_config}, {"probe": source}
  if config.probe.random_baseline and source["init"] != "random":
    base = ml_collections.ConfigDict(config.to_dict())
    base.model = ml_collections.ConfigDict(model_config.to_dict())
    encoders["random_init"], models["random_init"], sources["random_init"] = F.load_encoder(
        base, mesh, random_init=True)
  return encoders, models, sources


def run(config, workdir: str) -> dict:
  """Probe `config.pretrained` (or a random-init encoder) and, with probe.random_baseline,
  a random-init encoder of the same architecture on the same clips. DIR/results.json;
  the baseline's test files go to DIR/random_init/."""
  from cvrl.train import evaluate  # pylint: disable=import-outside-toplevel
  parallel.maybe_initialize_distributed()
  validate(config)
  mesh = F.make_mesh()
  os.makedirs(workdir, exist_ok=True)
  encoders, models, sources = _encoders(config, mesh)
  classes = F.num_classes(config.data)
  n_train = F.num_examples(config.data, "train")
  global_batch = int(config.batch_size)
  total = config_lib.steps("total", config, num_examples=n_train, batch_size=global_batch)
  warmup = config_lib.steps("warmup", config, num_examples=n_train, batch_size=global_batch,
                            default=0)
  # The baseline shares the pretrained encoder's model config, hence its input and frames.
  train_batches, plain_batches = _datasets(config, int(config.seed), mesh, models["probe"])
  trained = train_probes(encoders, config, mesh, num_classes=classes,
                         train_batches=train_batches, eval_batches=plain_batches,
                         total_steps=total, warmup_steps=warmup,
                         steps_per_epoch=max(1, n_train // global_batch))
  classifiers = {name: F.VideoClassifier(encoders[name], head)
                 for name, (head, _) in trained.items()}
  dirs = {name: workdir if name == "probe" else os.path.join(workdir, name) for name in encoders}
  tests = (evaluate.evaluate_classifiers(classifiers, config, mesh, dirs, models["probe"])
           if config.probe.evaluate else {})
  if config.probe.save_model:
    from cvrl.train import classifier_io  # pylint: disable=import-outside-toplevel
    classifier_io.save_classifier(workdir, classifiers["probe"], models["probe"],
                                  num_classes=classes, normalize=bool(config.probe.normalize),
                                  dropout=0.0, source=sources["probe"])
  results = {"job": "probe", "checkpoint": sources["probe"].get("checkpoint"),
             "config": R.config_dict(config), "metrics": {}}
  for name in encoders:
    part = {"source": sources[name], "train": trained[name][1], "num_classes": classes,
            "num_train_examples": n_train, "model": models[name].to_dict()}
    if name in tests:
      part["test"] = tests[name]
    results[name] = part
    prefix = "" if name == "probe" else f"{name}_"
    results["metrics"].update({prefix + k: v for k, v in _headline_metrics(part).items()})
  R.write_results(workdir, results)
  R.headline("probe", results["metrics"], ["top1", "top5", "random_init_top1", "train_accuracy"])
  return results


def _headline_metrics(out: dict) -> dict:
  m = {"train_accuracy": out["train"]["train_accuracy"], "train_loss": out["train"]["train_loss"]}
  if "test" in out:
    m.update({k: out["test"][k] for k in ("top1", "top5", "mean_class_accuracy") if k in out["test"]})
  return m


# ----------------------------------------------------------------- the demo chain's probe

def demo_fields() -> ml_collections.ConfigDict:
  """`pretrain_config.probe` for the demo: a short probe on cached features of the
  synthetic data, pretrained vs random-init. configs/demo.py sets `c.probe = demo_fields()`."""
  return ml_collections.ConfigDict(dict(
      batch_size=32, total_epochs=30, warmup_epochs=2, base_lr=1.0, momentum=0.9,
      weight_decay=0.0, extract_features=True, feature_epochs=2, normalize=True,
      random_baseline=True, num_clips=2, num_crops=1, eval_batch_size=16, log_every_steps=50,
      eval_resize=None, eval_crop_size=None,  # None: the pretraining's crop_size
      # The synthetic classes are motion directions: a horizontal flip would swap
      # left and right and keep the label. None: the probe augmentation's 0.5.
      flip_prob=0.0))


def config_after_pretrain(pretrain_config, checkpoint_dir: str) -> ml_collections.ConfigDict:
  """The probe config `run_after_pretrain` runs: the pretraining's data and model, the
  probe augmentation (crop + flip), and the fields of `pretrain_config.probe`."""
  from cvrl.data.config import set_probe_augmentation  # pylint: disable=import-outside-toplevel
  p = pretrain_config.probe
  c = base_config()
  c.seed = int(pretrain_config.get("seed", 0))
  c.pretrained = checkpoint_dir
  c.model = ml_collections.ConfigDict(pretrain_config.model.to_dict())
  data = ml_collections.ConfigDict(pretrain_config.data.to_dict())
  for key in ("num_classes", "num_train_examples"):
    if key not in data:
      data[key] = c.data[key]
  c.data = set_probe_augmentation(data)
  if p.get("flip_prob") is not None:
    c.data.augmentation.flip_prob = float(p.flip_prob)
  # Test at the pretraining's resolution unless told otherwise (the data defaults, 256,
  # are the paper's for 224 training crops).
  c.data.eval_resize = int(p.get("eval_resize") or data.crop_size)
  c.data.eval_crop_size = int(p.get("eval_crop_size") or data.crop_size)
  c.batch_size = int(p.batch_size)
  c.total_epochs = p.get("total_epochs")
  c.total_steps = p.get("total_steps")
  c.warmup_epochs = p.get("warmup_epochs")
  c.warmup_steps = p.get("warmup_steps")
  c.optim.update(base_lr=float(p.base_lr), base_batch_size=int(p.batch_size),
                 momentum=float(p.get("momentum", 0.9)),
                 weight_decay=float(p.get("weight_decay", 0.0)))
  for key in ("extract_features", "feature_epochs", "normalize", "random_baseline"):
    if key in p:
      c.probe[key] = p[key]
  c.evaluate.num_clips = int(p.get("num_clips", c.evaluate.num_clips))
  c.evaluate.num_crops = int(p.get("num_crops", c.evaluate.num_crops))
  c.evaluate.batch_size = int(p.get("eval_batch_size", c.evaluate.batch_size))
  c.log.every_steps = int(p.get("log_every_steps", c.log.every_steps))
  return c


def run_after_pretrain(pretrain_config, workdir: str, checkpoint_dir: str) -> dict:
  """Probe the checkpoint a pretraining just wrote; results in workdir/probe/results.json.

  With `probe.random_baseline` (the demo's default) the same probe on a random-init
  encoder of the same architecture runs too, so the results show what pretraining bought.
  """
  config = config_after_pretrain(pretrain_config, checkpoint_dir)
  config.lock()
  return run(config, os.path.join(workdir, "probe"))

