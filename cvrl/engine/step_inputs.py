"""The train step's inputs, abstract: the state as the engine places it and one global batch
as the host pipeline ships it.

The pretraining loop builds its state here, and the summary job (XLA's memory analysis of
the compiled step) and `experiments.bench_step` compile the engine's step on these same
inputs, so all three see one step. No TensorFlow: the batch's shapes follow
`cvrl.data.pipeline.build_dataset`'s contract (train=True) without building a pipeline.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cvrl.core import parallel
from cvrl.data import photometric
from cvrl.data import sampling
from cvrl.engine import local_bn
from cvrl.engine import state as state_lib


def model_maker(task, batch_norm: str = "sync"):
  """`task.make_model`, with per-device BatchNorm (over the run's mesh) under
  `batch_norm` (config.parallel.batch_norm) 'local'."""
  groups = parallel.num_data_shards() if batch_norm == "local" else 1
  if groups == 1:
    return task.make_model
  return lambda: local_bn.use_local_batch_norm(task.make_model(), groups)


def abstract_state(task, devices, tx):
  """(graphdef, the state as ShapeDtypeStructs placed on the run's mesh by `devices`
  (config.parallel: its param_sharding, batch_norm))."""
  placement = parallel.placement_from_config(devices)
  return state_lib.abstract(model_maker(task, batch_norm(devices)), task.trainable, tx,
                            placement)


def batch_norm(devices) -> str:
  """config.parallel.batch_norm."""
  return devices.batch_norm


def batch_spec(data_config, sampler, global_batch: int) -> dict:
  """One global training batch as the pipeline ships it, sharded over 'data' of the run's
  mesh: `video`
  [B, V, T, S, S, 3] (uint8 under data.photometric='device', else float32), `label` [B]
  int32, `index` [B] (int64 under jax_enable_x64, else int32, as jax stores it) and, when
  some photometric op can fire, `photometric` [B, V, P] or [B, V, T, P] float32."""
  smp = sampling.make_sampler(sampler, num_frames=data_config.num_frames,
                              stride=data_config.stride, train=True)
  size, views = int(data_config.crop_size), smp.num_views
  device = data_config.photometric == "device"
  shapes = {"video": ((global_batch, views, smp.frames, size, size, 3),
                      jnp.uint8 if device else jnp.float32),
            "label": ((global_batch,), jnp.int32),
            "index": ((global_batch,), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)}
  aug = data_config.augmentation
  if device and photometric.can_fire(aug, views, photometric.blur_radius(size)):
    per_clip = (views,) if aug.consistent else (views, smp.frames)
    shapes["photometric"] = ((global_batch, *per_clip, photometric.SIZE), jnp.float32)
  sharding = parallel.batch_sharding()
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
          for k, (shape, dtype) in shapes.items()}


MEMORY_FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def memory_analysis(compiled) -> dict:
  """XLA's memory analysis of a compiled step, bytes per device: arguments, outputs,
  outputs aliased to (donated) arguments, temporaries, generated code, and the peak
  (arguments + outputs not aliased + temporaries)."""
  m = compiled.memory_analysis()
  out = {f"{f}_bytes": int(getattr(m, f"{f}_size_in_bytes", 0) or 0) for f in MEMORY_FIELDS}
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                       + out["temp_bytes"])
  out["peak_gib"] = round(out["peak_bytes"] / 2 ** 30, 3)
  return out
