"""The `summary` job: parameters, feature shape and forward GFLOPs of a config's model.

Everything is abstract (`jax.eval_shape`, lowered-HLO cost analysis): nothing is allocated,
so R3D-152 3x answers in seconds on a laptop. Prints ONE JSON line.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cvrl import objectives, runtime
from cvrl.models import build_encoder
from cvrl.models.heads import LinearClassifier

NEEDS_WORKDIR = False


def _count(state) -> int:
  return int(sum(x.size for x in jax.tree.leaves(state)))


def _abstract_model(config):
  """The job's whole model, abstract: encoder + the heads the job trains."""
  if "objective" in config and config.job in ("pretrain", "summary"):
    objective = objectives.get(config)
    model = nnx.eval_shape(lambda: objective.build(nnx.Rngs(0)))
    return model, objective.trainable

  def build():
    rngs = nnx.Rngs(0)
    encoder = build_encoder(config.model, rngs)
    num_classes = config.data.get("num_classes")
    head = (LinearClassifier(encoder.num_features, num_classes, rngs=rngs)
            if num_classes else None)  # unknown until the data says: count the backbone only
    return _Classifier(encoder, head)
  return nnx.eval_shape(build), nnx.Param


class _Classifier(nnx.Module):
  def __init__(self, encoder, head):
    self.encoder = encoder
    self.head = head


def clip_shape(config) -> tuple[int, int, int, int]:
  return (int(config.data.num_frames), int(config.data.crop_size), int(config.data.crop_size), 3)


def summarize(config: ml_collections.ConfigDict) -> dict:
  # Count FLOPs with the native convolution: the standard count, whatever runs on CPU.
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.conv_impl = "native"
  model, trainable = _abstract_model(config)
  backbone = _count(nnx.state(model.encoder, nnx.Param))
  trainable_total = _count(nnx.state(model, trainable))
  encoder = model.encoder
  encoder.eval()
  graphdef, state = nnx.split(encoder)
  x = jax.ShapeDtypeStruct((1, *clip_shape(config)), jnp.float32)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, return_map=True)

  lowered = jax.jit(forward).lower(state, x)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return {
      "job": config.job,
      "model": f"r3d{config.model.depth}_{config.model.preset}_{config.model.width:g}x",
      "input_shape": list(clip_shape(config)),
      "backbone_params": backbone,
      "head_params": trainable_total - backbone,
      "feature_shape": list(lowered.out_info.shape[1:]),
      # XLA's count: a multiply-add is 2 FLOPs.
      "gflops_per_clip": float(f"{float(cost['flops']) / 1e9:.6g}"),
  }


@runtime.job  # cvrl.runtime: the job's JAX settings (rbg PRNG), a lost peer -> one line
def run(config, workdir):
  result = summarize(config)
  line = json.dumps(result)
  print(line, flush=True)
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      f.write(line + "\n")
  return result
