"""The `summary` job: parameters, feature shape and forward GFLOPs of a config's model, the
training state's bytes per device (parameters, optimizer state, the rest) under
`parallel.param_sharding` on `parallel.summary_devices` devices and, with
`parallel.summary_compile`, XLA's memory analysis of the compiled pretraining step.

Without compiling everything is abstract (`jax.eval_shape`, lowered-HLO cost analysis):
nothing is allocated, so R3D-152 3x answers in seconds on a laptop. Compiling lowers the
engine's own step (cvrl.engine.loop.abstract_step: the configured sharding, one global
batch as the pipeline ships it) on the first `summary_devices` devices of this process
(fake CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=N) and never runs it,
on the native convolution, as accelerators run it (the CPU's 'fold' lowering is not split
over the batch by XLA's partitioner: each device would hold the whole batch's
activations); where it cannot, `step_memory` says why and a `warning:` line on stderr says
so. Prints ONE JSON line.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cvrl import config_lib, objectives
from cvrl.core import parallel
from cvrl.core import paths
from cvrl.core import runtime
from cvrl.engine import loop as engine
from cvrl.engine import optim
from cvrl.engine import step_inputs
from cvrl.engine import tasks
from cvrl.models import build_encoder
from cvrl.models.heads import EncoderHead, LinearClassifier

NEEDS_WORKDIR = False
READS_INPUTS = False  # no data, no checkpoint: cvrl.main checks neither


@dataclasses.dataclass(frozen=True)
class Step:
  """What compiling a pretraining config's step takes: its method, the task's training
  fields, the loop's keyword arguments (`RunSpec`'s, checked when the step compiles) and
  the schedule (`durations()`: total and warm-up steps; a ValueError says why not)."""
  objective: objectives.Objective
  training: tasks.Training
  run_args: dict
  durations: Callable[[], tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Summary:
  """What the job takes of a config (any training job's), parsed once (`parse`) on the
  native convolution (the standard count, whatever lowering runs): the job it describes,
  config.model, config.data, config.optim, config.parallel (pretraining's where the config
  has none) and, with an
  objective, the pretraining `Step`."""
  job: str
  model: Any
  data: Any
  optim: Any
  parallel: Any
  step: Step | None


def parse(config: ml_collections.ConfigDict) -> Summary:
  """The summary of `config`, checked before anything compiles: its method exists and fits
  its model, its parameter sharding is one there is."""
  config = ml_collections.ConfigDict(config.to_dict())  # a copy on the native convolution
  config.model.conv_impl = "native"
  step = None
  if "objective" in config:
    step = Step(objectives.method(**config_lib.method_args(config)), tasks.Training(**config_lib.training(config)),
                config_lib.run_args(config), functools.partial(config_lib.durations, config))
  # An evaluate config trains nothing: its state sized as pretraining's sections place it.
  p = config.parallel if "parallel" in config else config_lib.pretrain_config().parallel
  parallel.check_param_sharding(p.param_sharding)
  return Summary(config.job, config.model, config.data, config.get("optim"), p, step)


def _count(state) -> int:
  return int(sum(x.size for x in jax.tree.leaves(state)))


def _abstract_model(s: Summary):
  """The job's whole model, abstract: encoder + the heads the job trains."""
  if s.step is not None and s.job in ("pretrain", "summary"):
    objective = s.step.objective
    model = nnx.eval_shape(lambda: objective.build(nnx.Rngs(0)))
    return model, objective.trainable

  def build():
    rngs = nnx.Rngs(0)
    encoder = build_encoder(s.model, rngs)
    num_classes = s.data.num_classes
    head = (LinearClassifier(encoder.num_features, num_classes, rngs=rngs)
            if num_classes else None)  # unknown until the data says: count the backbone only
    return EncoderHead(encoder, head)
  return nnx.eval_shape(build), nnx.Param


def clip_shape(data) -> tuple[int, int, int, int]:
  """(T, H, W, 3) of a clip of `data` (config.data)."""
  return (int(data.num_frames), int(data.crop_size), int(data.crop_size), 3)


def _lower_forward(encoder, clip: tuple[int, ...]):
  """The encoder's eval-mode forward of one clip, lowered (never compiled)."""
  encoder.eval()
  graphdef, state = nnx.split(encoder)
  x = jax.ShapeDtypeStruct((1, *clip), jnp.float32)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, return_map=True)

  return jax.jit(forward).lower(state, x)


def _flops(lowered) -> float:
  """XLA's count of the lowered (pre-fusion) HLO: a multiply-add is 2 FLOPs."""
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def forward_flops(s: Summary, clip: tuple[int, ...] | None = None) -> float:
  """Forward FLOPs of the encoder of `s` (`parse`) on one clip (T, H, W, 3), default the
  config's clip: the count `summarize` reports as gflops_per_clip (heads not included)."""
  model, _ = _abstract_model(s)
  return _flops(_lower_forward(model.encoder, tuple(clip or clip_shape(s.data))))


def summarize(s: Summary) -> dict:
  """The summary of `s` (`parse`): the job's printed line."""
  memory = step_memory(s)
  model, trainable = _abstract_model(s)
  backbone = _count(nnx.state(model.encoder, nnx.Param))
  trainable_total = _count(nnx.state(model, trainable))
  lowered = _lower_forward(model.encoder, clip_shape(s.data))
  return {
      "job": s.job,
      "objective": s.step.objective.name if s.step is not None else None,
      "model": f"r3d{s.model.depth}_{s.model.preset}_{s.model.width:g}x",
      "input_shape": list(clip_shape(s.data)),
      "backbone_params": backbone,
      "head_params": trainable_total - backbone,
      "feature_shape": list(lowered.out_info.shape[1:]),
      # XLA's count: a multiply-add is 2 FLOPs.
      "gflops_per_clip": float(f"{_flops(lowered) / 1e9:.6g}"),
      "state_bytes_per_device": state_bytes(s.parallel, s.optim, model, trainable),
      "step_memory": memory,
  }


def state_bytes(p, optim_config, model, trainable) -> dict:
  """Bytes one device holds of the training state under `p` (config.parallel): parameters,
  optimizer state (`optim_config`'s optimizer) and the other variables (BatchNorm
  statistics, targets, queues)."""
  mode = p.param_sharding
  devices = summary_devices(p)
  min_kib = float(p.fsdp_min_kib)
  params, rest = nnx.state(model, trainable, ...)
  opt_state = jax.eval_shape(optim.build(optim_config, lambda count: 0.0).init, params)
  parts = {"params": params, "optimizer": opt_state, "rest": rest}
  out = {k: parallel.bytes_per_device(v, mode, devices, min_kib) for k, v in parts.items()}
  out["total"] = sum(out.values())
  return {"param_sharding": mode, "devices": devices, **out,
          "total_gib": round(out["total"] / 2 ** 30, 4)}


def summary_devices(p) -> int:
  """The chips the summary states bytes for: `p` (config.parallel)'s summary_devices, or
  this process's device count."""
  return int(p.summary_devices or jax.device_count())


def _cannot_compile(s: Summary, devices: int) -> str:
  """Why the summary does not compile the step ('' when it does)."""
  if not s.parallel.summary_compile:
    return "not compiled (parallel.summary_compile=False)"
  if s.step is None:
    return "not compiled: only a pretraining config's step is (this config has no objective)"
  if devices > jax.device_count():
    return (f"not compiled: parallel.summary_devices={devices} but this process has "
            f"{jax.device_count()} {jax.default_backend()} devices (fake CPU devices: "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices})")
  if s.step.training.batch_size % devices:
    return (f"not compiled: batch_size {s.step.training.batch_size} does not split over "
            f"{devices} devices")
  try:
    s.step.durations()  # the schedule's
  except ValueError as e:
    return f"not compiled: {e}"
  return ""


def step_memory(s: Summary) -> dict:
  """XLA's memory analysis of the pretraining step compiled (never run) on `summary_devices`
  of this process's devices, bytes per device (cvrl.engine.step_inputs.memory_analysis);
  {'compiled': False, 'why': ...} where it is not compiled."""
  devices = summary_devices(s.parallel)
  why = _cannot_compile(s, devices)
  if why:
    if s.parallel.summary_compile:
      print(f"warning: summary: step memory {why}; the state bytes alone", file=sys.stderr)
    return {"compiled": False, "why": why}
  start = time.perf_counter()
  step = s.step
  with jax.set_mesh(parallel.make_mesh(jax.devices()[:devices])):
    task = tasks.PretrainTask(step.training, s.data, step.objective)
    parts = engine.abstract_step(task, engine.RunSpec(**step.run_args),
                                 step.objective.sampler(), *step.durations())
    compiled = parts["step"].lower(parts["state"], parts["batch"]).compile()
  return {"compiled": True, "devices": devices,
          "per_device_batch": step.training.batch_size // devices,
          "compile_s": round(time.perf_counter() - start, 1),
          **step_inputs.memory_analysis(compiled)}


def run(s: Summary, workdir):
  """Prints (and with a workdir writes) the summary of a parsed config (`parse`)."""
  with runtime.job():  # cvrl.core.runtime: the job's JAX settings (rbg PRNG); nothing trains
    result = summarize(s)
    line = json.dumps(result)
    print(line, flush=True)
    if workdir:
      paths.write_text(paths.join(workdir, "summary.json"), line + "\n")
    return result
