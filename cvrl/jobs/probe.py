"""Linear probe: a frozen backbone, pooled L2-normalised features, one linear layer (CVRL).

The backbone runs in inference mode (BN on its running statistics) and is never
updated; only the LinearClassifier is trained, with SGD momentum and a warm-up cosine
schedule (the paper's K600 recipe: 32 frames, lr 32.0 at batch 1024, 100 epochs, 5
warm-up epochs, no weight decay, crop + flip without colour augmentation; Qian et al.,
CVPR 2021). Both paths are tasks on the training engine (checkpoints, exact
resume, SIGTERM save):
- end-to-end (default): every step decodes and augments fresh clips and runs the
  frozen backbone on them, as the reference does (`tasks.ClassifierTask`);
- `probe.extract_features=True`: the backbone runs once per cached clip and the head
  trains on the cache (`tasks.FeatureHeadTask`). With `probe.feature_epochs = K > 0`
  the first K epochs of the very stream the end-to-end path reads (same clips, same
  augmentation, same order) are encoded, trained on in that order, then reshuffled for
  the remaining epochs: K augmented views per video instead of one per epoch. When K
  covers the whole run both paths see identical inputs. `feature_epochs = 0` encodes each
  video once, without augmentation (centre clip, centre crop), and trains on reshuffled
  epochs of those features. A resumed run encodes the cache again (deterministic).
With `probe.random_baseline` a random-init encoder of the same architecture is probed
the same way in DIR/random_init.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cvrl.models.heads import EncoderHead
from cvrl import config_lib
from cvrl.core import parallel
from cvrl.core import paths
from cvrl.core import runtime
from cvrl.models import create, extra_frames
from cvrl.eval import classifier_io
from cvrl.engine import clip_shape
from cvrl.data import pipeline
from cvrl.data import sources as data_sources  # `sources` below: the encoders' origins
from cvrl.engine import loop as engine
from cvrl.eval import common
from cvrl.eval import features as F
from cvrl.eval import multiview
from cvrl.eval import results as R
from cvrl.engine import tasks

NEEDS_WORKDIR = True


@dataclasses.dataclass(frozen=True)
class Probe(F.Downstream):
  """What the job takes of its config, parsed and checked once (`parse`): the encoder to
  probe, the heads' training, loop and schedule (`F.Downstream`), the multi-view test and
  config.probe's fields."""
  test: multiview.Test
  normalize: bool
  extract_features: bool
  feature_epochs: int
  random_baseline: bool
  evaluate: bool
  save_model: bool

  def __post_init__(self):
    if self.feature_epochs < 0:
      raise ValueError("config.probe.feature_epochs must be >= 0")


def parse(config) -> Probe:
  """The job's typed arguments, checked (before anything compiles)."""
  p = config.probe
  return Probe.of("probe", **config_lib.downstream(config),
                  test=multiview.Test.of(config.evaluate), normalize=bool(p.normalize),
                  extract_features=bool(p.extract_features),
                  feature_epochs=int(p.feature_epochs), random_baseline=bool(p.random_baseline),
                  evaluate=bool(p.evaluate), save_model=bool(p.save_model))


def _architecture(encoder: nnx.Module):
  """make_encoder for a concrete encoder: its structure, zeros (initialize fills them)."""
  graphdef, state = nnx.split(encoder)
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return lambda: nnx.merge(graphdef, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))


def train_probe(encoder: nnx.Module, job: Probe, *, num_classes: int, train_batches,
                eval_batches=None, total_steps: int, warmup_steps: int, steps_per_epoch: int,
                workdir: str, make_encoder=None, name: str = "linear probe",
                process: runtime.Process | None = None):
  """Trains a probe head on the frozen `encoder` on the engine: (head, stats, engine out).

  train_batches(start_step): host batches of the augmented stream from that step.
  eval_batches(): host batches of the train split without augmentation, each video once
    (masked padding): the features of `probe.feature_epochs = 0`.
  make_encoder: the encoder's architecture under jit (None: taken from `encoder`).
  process: the job's record (cvrl.core.runtime.job) the engine reports to.
  """
  global_batch = job.training.batch_size
  stats = {"total_steps": total_steps, "warmup_steps": warmup_steps, "global_batch": global_batch,
           "extract_features": job.extract_features}
  if not job.extract_features:
    task = tasks.ClassifierTask(
        job.training, make_encoder=make_encoder or _architecture(encoder),
        num_classes=num_classes, normalize=job.normalize, dropout=0.0, train_encoder=False,
        batches=train_batches, encoder_init=encoder, name=name)
    stats["encoder_passes"] = total_steps * global_batch
  else:
    start = time.time()
    feats, labels, replay = _cache(encoder, job, train_batches, eval_batches,
                                   min(total_steps, job.feature_epochs * steps_per_epoch))
    stats.update(extract_seconds=time.time() - start, cached_features=int(len(labels)),
                 encoder_passes=int(len(labels)) * jax.process_count())
    local = parallel.local_batch_size(global_batch)
    task = tasks.FeatureHeadTask(
        job.training, num_features=feats.shape[1], num_classes=num_classes,
        normalize=job.normalize, batches=lambda s: engine.skip(
            tasks.cached_batches(feats, labels, local, replay, job.spec.seed), s),
        name=name + " (cached features)")
  start = time.time()
  out = engine.run(task, job.spec, workdir, total_steps=total_steps,
                   warmup_steps=warmup_steps, process=process)
  stats["seconds"] = time.time() - start
  _, _, stats["learning_rate"] = task.optimizer(total_steps, warmup_steps)
  last = out["last_step_metrics"]
  stats["train_loss"] = float(last.get("loss", float("nan")))
  stats["train_accuracy"] = float(last.get("accuracy", float("nan")))
  stats["preempted"] = out["preempted"]
  head = None
  if out["model"] is not None:
    head = out["model"] if job.extract_features else out["model"].head
    head.eval()
  return head, stats, out


def _cache(encoder, job: Probe, train_batches, eval_batches, cache_steps: int):
  """(features, labels, rows to replay in order) of this host's cached clips."""
  # Pooled features [B, C] of the clips, mean over views, the encoder in inference mode.
  extractor = F.ViewRunner(encoder, reduce="mean", data_config=job.spec.data)
  if job.feature_epochs > 0:  # the first K epochs of the augmented stream
    it = train_batches(0)
    outs, labels = [], []
    for _ in range(cache_steps):
      batch = next(it)
      outs.append(extractor(batch))
      labels.append(np.asarray(batch["label"]))
    labels = np.concatenate(labels)
    return np.concatenate([F.to_host_local(o) for o in outs]), labels, len(labels)
  split = F.run_split(extractor, eval_batches(), all_hosts=False)
  return split.values, split.labels, 0


# ------------------------------------------------------------------------------ the job

def _datasets(job: Probe, extra: int):
  """Factories of host batch iterators: augmented train stream (from a start step),
  un-augmented train split; clips of T + `extra` frames (1 for a DIF encoder)."""
  data, seed, batch = job.spec.data, job.spec.seed, job.training.batch_size
  train_batches = F.train_stream(data, batch_size=batch, seed=seed, extra_frames=extra)
  sampler = {"name": "single", "extra_frames": extra}

  def plain_batches():
    ds = pipeline.build_dataset(data, sampler=sampler, train=False,
                                batch_size=parallel.local_batch_size(batch), seed=seed,
                                split="train")
    return pipeline.iterate(ds)
  return train_batches, plain_batches


def run(job: Probe, workdir: str) -> dict:
  """Probe `config.pretrained` (or a random-init encoder) and, with probe.random_baseline,
  a random-init encoder of the same architecture on the same clips, as `parse` gave the
  config (cvrl.main checks it before any work). DIR/results.json; the baseline's
  checkpoints and test files go to DIR/random_init/."""
  with runtime.job() as process, jax.set_mesh(engine.setup(job.spec.parallel)):
    data_sources.prepare(job.spec.data, ["train", "eval"] if job.evaluate else ["train"])
    shape = clip_shape.resolved(job.spec.data, job.encoder)  # the checkpoint's frames / ...
    job = job.shaped(shape)
    paths.makedirs(workdir)
    arch = _encoders(job)  # its encoders, their schedule and batches
    dirs = {name: workdir if name == "probe" else paths.join(workdir, name)
            for name in arch.encoders}
    trained = {}
    for name in arch.encoders:
      trained[name] = _probe_one(job, arch, name, dirs[name], process)
      if trained[name][1]["preempted"]:
        return {"job": "probe", "preempted": True, "step": trained[name][2]["step"]}
    classifiers = {name: EncoderHead(arch.encoders[name], head)
                   for name, (head, _, _) in trained.items()}
    tests = _test(arch, classifiers, dirs, job.test) if job.evaluate else {}
    if job.save_model:
      _save(workdir, arch, classifiers["probe"], job.normalize)
    results = _results(job.spec.record, shape, arch,
                       {k: v[1] for k, v in trained.items()}, tests)
    R.write_results(workdir, results)
    R.headline("probe", results["metrics"], ["top1", "top5", "random_init_top1", "train_accuracy"])
    return results


@dataclasses.dataclass
class _Encoders:
  """The encoders a probe job trains heads on ({'probe', and 'random_init' with
  probe.random_baseline}), their provenance, architecture and model config; the heads'
  schedule (F.schedule: classes, training videos, total and warm-up steps), batch
  factories (`_datasets`) and test splits."""
  make_encoder: object
  model_config: object
  encoders: dict
  sources: dict
  schedule: tuple = ()
  batches: tuple = ()
  splits: common.Splits | None = None


def _encoders(job: Probe) -> _Encoders:
  make_encoder, encoder, model_config, source = F.encoder_source(**job.encoder)
  if encoder is None:
    encoder = create(make_encoder, out_shardings=parallel.replicated())
  extra = extra_frames(model_config)
  arch = _Encoders(make_encoder, model_config, {"probe": encoder}, {"probe": source},
                   F.schedule(job.spec.data, job.durations), _datasets(job, extra),
                   common.Splits(job.spec.data, job.spec.seed, extra))
  if job.random_baseline and source["init"] != "random":
    arch.encoders["random_init"] = create(make_encoder, out_shardings=parallel.replicated())
    arch.sources["random_init"] = {"init": "random", "checkpoint": None,
                                   "seed": job.spec.seed}
  return arch


def _probe_one(job: Probe, arch: _Encoders, name: str, workdir: str, process: runtime.Process):
  """`train_probe` of encoder `name`: (head, stats, engine out)."""
  classes, n_train, total, warmup = arch.schedule
  train_batches, plain_batches = arch.batches
  return train_probe(
      arch.encoders[name], job, num_classes=classes, train_batches=train_batches,
      eval_batches=plain_batches, total_steps=total, warmup_steps=warmup,
      steps_per_epoch=max(1, n_train // job.training.batch_size), workdir=workdir,
      make_encoder=arch.make_encoder, name=f"linear probe [{name}]", process=process)


def _test(arch: _Encoders, classifiers: dict, dirs: dict, test: multiview.Test) -> dict:
  """The multi-view test of each probed classifier on the clips its encoder takes."""
  return multiview.evaluate_classifiers(classifiers, arch.splits, dirs, test)


def _save(workdir: str, arch: _Encoders, classifier, normalize: bool) -> None:
  """The probed classifier, for the evaluate job (cvrl.eval.classifier_io)."""
  classifier_io.save_classifier(workdir, classifier, arch.model_config,
                                num_classes=arch.schedule[0], normalize=normalize,
                                dropout=0.0, source=arch.sources["probe"])


def _results(config_dict: dict, shape, arch: _Encoders, stats: dict, tests: dict) -> dict:
  """results.json (`config_dict`: the config as it records it): per encoder its
  provenance, training stats and test; the headline metrics (the random baseline's
  prefixed `random_init_`)."""
  classes, n_train, _, _ = arch.schedule
  results = {"job": "probe", "checkpoint": arch.sources["probe"].get("checkpoint"),
             "step": arch.sources["probe"].get("step"), "clip_shape": shape.as_dict(),
             "config": config_dict, "metrics": {}}
  for name in arch.encoders:
    part = {"source": arch.sources[name], "train": stats[name], "num_classes": classes,
            "num_train_examples": n_train, "model": arch.model_config.to_dict()}
    if name in tests:
      part["test"] = tests[name]
    results[name] = part
    prefix = "" if name == "probe" else f"{name}_"
    results["metrics"].update({prefix + k: v for k, v in _headline_metrics(part).items()})
  return results


def _headline_metrics(out: dict) -> dict:
  m = {"train_accuracy": out["train"]["train_accuracy"], "train_loss": out["train"]["train_loss"]}
  if "test" in out:
    m.update({k: out["test"][k] for k in ("top1", "top5", "mean_class_accuracy") if k in out["test"]})
  return m


def run_after_pretrain(pretrain_config, workdir: str, checkpoint_dir: str) -> dict:
  """The probe job on a pretraining run's checkpoint (`config_lib.probe_config_for`);
  results in workdir/probe/results.json."""
  config = config_lib.probe_config_for(pretrain_config, checkpoint_dir)
  config.lock()
  return run(parse(config), paths.join(workdir, "probe"))
