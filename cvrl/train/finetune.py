"""Fine-tuning: the whole network trained with a new linear head.

The encoder starts from a pretraining checkpoint (or random weights: training from
scratch, the baseline), its BN runs in train mode (statistics over the global batch,
i.e. synchronised), the head may use dropout, and backbone and head have their own
learning rates (optax.multi_transform), each with linear warm-up and cosine decay.
The trained model is tested with multi-view evaluation and saved for the evaluate job.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from ml_collections import config_dict

from cvrl import config_lib, parallel
from cvrl.models import default_model_config, extra_frames
from cvrl.train import features as F
from cvrl.train import probe
from cvrl.train import results as R

NEEDS_WORKDIR = True
GROUPS = ("backbone", "head")


def finetune_fields() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      dropout=0.5,       # before the classifier
      normalize=False,   # L2-normalise features before the classifier (probe-style)
      evaluate=True,     # multi-view test at the end (config.evaluate)
      save_model=True,
  ))


def base_config() -> ml_collections.ConfigDict:
  """Every field the finetune job reads (values: see configs/ucf101_finetune.py)."""
  # pylint: disable=import-outside-toplevel
  from cvrl.data.config import default_data_config, set_probe_augmentation
  from cvrl.train.evaluate import eval_fields
  c = ml_collections.ConfigDict()
  c.job = "finetune"
  c.seed = 0
  c.pretrained = ""
  c.pretrained_step = config_dict.placeholder(int)
  c.random_init = False  # train from scratch (the baseline fine-tuning has to beat)
  c.batch_size = 128
  c.total_epochs = 50
  c.total_steps = None
  c.warmup_epochs = 2
  c.warmup_steps = None
  c.model = default_model_config()
  c.data = default_data_config()
  set_probe_augmentation(c.data)
  c.data.num_classes = config_dict.placeholder(int)
  c.data.num_train_examples = config_dict.placeholder(int)
  c.optim = probe.optim_fields(name="sgd", base_lr=0.05, base_batch_size=128, momentum=0.9,
                               nesterov=False, weight_decay=1e-4)
  c.optim.head_lr = 0.5  # the new head's base_lr (same linear scaling)
  c.finetune = finetune_fields()
  c.evaluate = eval_fields()
  c.log = ml_collections.ConfigDict(dict(every_steps=50))
  return c


def validate(config) -> None:
  F.validate_downstream(config, "finetune")
  if not 0.0 <= float(config.finetune.dropout) < 1.0:
    raise ValueError(f"config.finetune.dropout must be in [0, 1), got {config.finetune.dropout}")


def param_groups(params):
  """'backbone' for the encoder's parameters, 'head' for everything else."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "backbone" if getattr(path[0], "key", None) == "encoder" else "head", params)


def make_optimizer(optim_config, global_batch: int, total_steps: int, warmup_steps: int):
  """cvrl.train.optim's optimizer per group: the backbone at base_lr, the head at head_lr
  (both linearly scaled by the batch, same warm-up and cosine)."""
  rates, txs = {}, {}
  for group, base in (("backbone", optim_config.base_lr), ("head", optim_config.head_lr)):
    group_config = ml_collections.ConfigDict(optim_config.to_dict())
    group_config.base_lr = float(base)
    txs[group], _, rates[group] = probe.make_optimizer(group_config, global_batch, total_steps,
                                                       warmup_steps)
  return optax.multi_transform(txs, param_groups), rates


class FinetuneTrainer:
  """One jit'd step over the whole VideoClassifier: BN statistics and dropout RNG carried."""

  def __init__(self, model: F.VideoClassifier, tx, mesh, data_config=None):
    self.mesh = mesh
    model.train()
    self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
    rep = F.replicated(mesh)
    self.opt_state = jax.jit(tx.init, out_shardings=rep)(self.params)
    graphdef = self.graphdef

    def step(params, rest, opt_state, inputs, labels):
      video = F.clips(inputs, data_config)  # photometric ops, if any, on device

      def loss_fn(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        b, v = video.shape[:2]
        logits = m(video.reshape((b * v,) + video.shape[2:]))
        logits = logits.reshape(b, v, -1).mean(axis=1)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        new_rest = nnx.split(m, nnx.Param, ...)[2]
        return loss, (jnp.mean(jnp.argmax(logits, -1) == labels), new_rest)
      (loss, (acc, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), new_rest, opt_state,
              {"loss": loss, "accuracy": acc})

    self._step = jax.jit(step, donate_argnums=(0, 1, 2), out_shardings=(rep, rep, rep, rep))

  def step(self, batch: dict) -> dict:
    self.params, self.rest, self.opt_state, m = self._step(
        self.params, self.rest, self.opt_state, F.clip_inputs(self.mesh, batch),
        F.to_global(self.mesh, batch["label"].astype("int32")))
    return m

  def model(self) -> F.VideoClassifier:
    return nnx.merge(self.graphdef, self.params, self.rest)


def run(config, workdir: str) -> dict:
  parallel.maybe_initialize_distributed()
  validate(config)
  from cvrl.data import pipeline  # pylint: disable=import-outside-toplevel
  from cvrl.train import evaluate  # pylint: disable=import-outside-toplevel
  mesh = F.make_mesh()
  os.makedirs(workdir, exist_ok=True)
  encoder, model_config, source = F.load_encoder(config, mesh)
  classes = F.num_classes(config.data)
  n_train = F.num_examples(config.data, "train")
  global_batch = int(config.batch_size)
  total = config_lib.steps("total", config, num_examples=n_train, batch_size=global_batch)
  warmup = config_lib.steps("warmup", config, num_examples=n_train, batch_size=global_batch,
                            default=0)
  tx, rates = make_optimizer(config.optim, global_batch, total, warmup)
  head = F.make_head(encoder.num_features, classes, normalize=bool(config.finetune.normalize),
                     dropout=float(config.finetune.dropout), seed=int(config.seed) + 1, mesh=mesh)
  trainer = FinetuneTrainer(F.VideoClassifier(encoder, head), tx, mesh, config.data)
  sampler = {"name": "single", "extra_frames": extra_frames(model_config)}  # T + 1 for DIF
  ds = pipeline.build_dataset(config.data, sampler=sampler, train=True,
                              batch_size=F.local_batch_size(global_batch, mesh),
                              seed=int(config.seed))
  it = pipeline.iterate(ds)
  every = max(1, int(config.log.every_steps))
  t0, m = time.time(), None
  for step in range(total):
    batch = next(it)
    m = trainer.step(batch)
    if ((step + 1) % every == 0 or step + 1 == total) and jax.process_index() == 0:
      rate = (step + 1) * global_batch / max(time.time() - t0, 1e-9)
      print(f"finetune step {step + 1}/{total} loss={float(m['loss']):.4f} "
            f"accuracy={float(m['accuracy']):.3f} clips/s={rate:.1f}", flush=True)
  model = trainer.model()
  out = {"source": source, "num_classes": classes, "num_train_examples": n_train,
         "train": {"total_steps": total, "warmup_steps": warmup, "learning_rates": rates,
                   "train_loss": float(m["loss"]), "train_accuracy": float(m["accuracy"]),
                   "seconds": time.time() - t0}}
  metrics = {"train_accuracy": out["train"]["train_accuracy"], "train_loss": out["train"]["train_loss"]}
  if config.finetune.evaluate:
    out["test"] = evaluate.evaluate_classifier(model, config, mesh, workdir, model_config)
    metrics.update({k: out["test"][k] for k in ("top1", "top5", "mean_class_accuracy")
                    if k in out["test"]})
  if config.finetune.save_model:
    from cvrl.train import classifier_io  # pylint: disable=import-outside-toplevel
    classifier_io.save_classifier(workdir, model, model_config, num_classes=classes,
                                  normalize=bool(config.finetune.normalize),
                                  dropout=float(config.finetune.dropout), source=source)
  results = {"job": "finetune", "metrics": metrics, "finetune": out,
             "checkpoint": source.get("checkpoint"), "config": R.config_dict(config)}
  R.write_results(workdir, results)
  R.headline("finetune", metrics, ["top1", "top5", "train_accuracy"])
  return results
