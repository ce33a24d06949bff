"""Train-step speed of the R3D encoders against the backend's matmul rate (one JSON line).

  python -m experiments.bench_step [--models r3d18,r3d50] [--impls native,fold] [--repeats 2]

Measures, in one process so the ratios share the machine's state (each figure both by
wall time and by the CPU time the process got, see `best_time`):
  matmul:  float32 GFLOP/s of a jitted (n x n) @ (n x n) dot, best of a few;
  per model and conv lowering: the train step (forward, backward, SGD update; BatchNorm in
  train mode; loss = mean square of the pooled features), best-of-`repeats` seconds,
  GFLOP/s and its ratio to the matmul rate.
Models: r3d18 = torchvision's R3D-18 (batch 8 x 8x112x112 by default, the anchor's
setting); r3d50 = CVRL's R3D-50 at a CPU-sized input (batch 2 x 8x112x112 by default).

FLOPs are XLA's cost analysis of the step compiled with the 'native' lowering (the same
work whichever lowering runs, so every lowering is credited the same numerator). XLA
counts only multiply-adds that touch real input, not padding.

Config mode: the full pretraining step of any config (objective, heads, optimizer,
synchronised BN, the on-device photometric stage; exactly what `cvrl.jobs.pretrain`
runs), on all devices of the current backend:

  python -m experiments.bench_step --config=configs/demo.py [--per_device_batch 8]
      [--set model.width=0.25 ...] [--steps 3]
    -> clips/s, step seconds, the loss; model FLOPs (the summary job's encoder forward
       FLOPs per clip, a train step = 3 x forward x clips) and MFU against the device's
       bf16 dense peak (PEAK_BF16_TFLOPS by device_kind; null, with `peak_unknown`, for
       other kinds such as CPU) and against a matmul measured in the same run (n = 8192
       bf16 on accelerators, 2048 float32 on CPU; --matmul_n); peak memory by the device
       allocator (memory_stats' peak_bytes_in_use, null on CPU) beside XLA's memory
       analysis; XLA's cost analysis of the step, kept and labelled (on GPU it misses
       the cuDNN convolutions). Needs no TensorFlow;
  python -m experiments.bench_step --config=configs/cvrl_k600_r3d50.py --memory_only
      [--memory_batches 8,16,32]
    -> XLA's memory analysis of the COMPILED (never run) step per device, for each
       per-device batch, without and with remat: works for paper-scale models on a laptop;
       plus the activation bytes the backward keeps (traced, backend-independent), which
       is what remat reduces. Memory figures are those of the current backend's compiler
       (XLA:CPU here; TPU's buffer assignment and fusion differ).
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cvrl.engine import step_inputs
from cvrl.models import r3d

# name -> (depth, preset)
MODELS = {"r3d18": (18, "r3d18"), "r3d50": (50, "cvrl"), "tclr": (18, "tclr")}


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
  """Best wall seconds and best CPU seconds / core count of `repeats` calls.

  The first (compiling) call is not timed. On a machine shared with other work, the CPU
  time this process got, spread over the cores, is the steadier measure of its own
  speed; on an idle machine the two agree.
  """
  jax.block_until_ready(fn())
  wall = cpu = float("inf")
  cores = os.cpu_count() or 1
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall = min(wall, time.perf_counter() - w)
    cpu = min(cpu, (time.process_time() - c) / cores)
  return wall, cpu


def matmul_gflops(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> tuple[float, float]:
  """GFLOP/s (by wall and by CPU time) of a jitted n^3 matmul in `dtype` (float32 default)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  f = jax.jit(lambda x: x @ x)
  return tuple(2 * n ** 3 / t / 1e9 for t in best_time(lambda: f(a), repeats))


def build_model(name: str, conv_impl: str, width: float = 1.0, seed: int = 0) -> r3d.R3D:
  depth, preset = MODELS[name]
  model = r3d.R3D(depth, width, preset, conv_impl=conv_impl, rngs=nnx.Rngs(seed))
  model.train()  # BatchNorm normalises with batch statistics and updates its averages
  return model


def make_train_step(model: nnx.Module, learning_rate: float = 1e-3):
  """A jitted pure step (params, state, video) -> (params, state, loss), and its inputs."""
  graphdef, params, state = nnx.split(model, nnx.Param, ...)

  def step(params, state, video):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, state, copy=True)
      loss = jnp.mean(jnp.square(m(video)))
      return loss, nnx.state(m, nnx.Not(nnx.Param))

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    new_params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
    return new_params, new_state, loss

  return jax.jit(step, donate_argnums=(0, 1)), params, state


def clip_batch(batch: int, frames: int, size: int, seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.random((batch, frames, size, size, 3), np.float32))


def step_flops(step, params, state, video) -> float:
  """FLOPs of one compiled step by XLA's cost analysis."""
  cost = step.lower(params, state, video).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def bench_model(name: str, impls: list[str], batch: int, frames: int, size: int,
                repeats: int, width: float = 1.0) -> dict:
  """Step seconds and GFLOP/s of one model for each conv lowering."""
  video = clip_batch(batch, frames, size)
  step, params, state = make_train_step(build_model(name, "native", width))
  flops = step_flops(step, params, state, video)
  result = {"batch": batch, "frames": frames, "size": size, "width": width,
            "gflop_per_step": round(flops / 1e9, 2), "impls": {}}
  for impl in impls:
    step, params, state = make_train_step(build_model(name, impl, width))
    carry = {"params": params, "state": state}

    def run():
      carry["params"], carry["state"], loss = step(carry["params"], carry["state"], video)
      return loss

    wall, cpu = best_time(run, repeats)
    result["impls"][impl] = {"step_s": round(wall, 3), "gflops": round(flops / wall / 1e9, 1),
                             "step_cpu_s": round(cpu, 3),
                             "gflops_cpu": round(flops / cpu / 1e9, 1)}
  return result


# ----------------------------------------------------------------------- config mode

def load_config(spec: str, overrides: list[str] = ()):
  """`path/to/config.py[:arg]` and `key.sub=value` overrides, parsed as cvrl.main does."""
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.config_from_command_line(
      [f"--config={spec}", *(f"--config.{item}" for item in overrides)])


def _step_parts(config, per_device_batch: int | None) -> dict:
  """The engine's abstract step (cvrl.engine.loop.abstract_step: jitted step, graphdef,
  abstract sharded state and batch) with the mesh, task, model maker, placement, clips per
  step and clip shape; `per_device_batch` overrides config.batch_size."""
  # pylint: disable=import-outside-toplevel
  import ml_collections
  from cvrl import config_lib, objectives
  from cvrl.core import parallel
  from cvrl.engine import loop as engine
  from cvrl.engine import tasks
  mesh = parallel.make_mesh()
  config = ml_collections.ConfigDict(config.to_dict())
  if per_device_batch:
    config.batch_size = per_device_batch * parallel.num_data_shards(mesh)
  objective = objectives.method(**config_lib.method_args(config))
  task = tasks.PretrainTask(tasks.Training(**config_lib.training(config)), config.data, objective)
  with jax.set_mesh(mesh):
    parts = engine.abstract_step(task, engine.RunSpec(**config_lib.run_args(config)),
                                 objective.sampler(),
                                 *config_lib.durations(config))
    norm = step_inputs.batch_norm(config.get("parallel"))
    extra = dict(make=step_inputs.model_maker(task, norm),
                 placement=parallel.placement_from_config(config.get("parallel")))
  video = parts["batch"]["video"].shape
  return dict(parts, **extra, mesh=mesh, objective=objective, task=task, spec=parts["batch"],
              clips=video[0] * video[1], clip=video[2:])


def _concrete_batch(spec: dict, seed: int = 0) -> dict:
  """Random arrays for an abstract batch; photometric vectors that switch every op on."""
  # pylint: disable=import-outside-toplevel
  from cvrl.data import photometric as P
  rng = np.random.default_rng(seed)
  out = {}
  for k, s in spec.items():
    if k == "photometric":
      v = np.zeros(s.shape, np.float32)
      v[..., [P.JITTER, P.BRIGHTNESS, P.CONTRAST, P.SATURATION, P.GRAYSCALE, P.BLUR,
              P.SOLARIZE]] = 1.0
      v[..., P.HUE] = 0.05
      v[..., P.ORDER] = np.arange(4)
      v[..., P.SIGMA] = 1.0
    elif s.dtype == jnp.uint8:
      v = rng.integers(0, 256, s.shape, dtype=np.uint8)
    elif jnp.issubdtype(s.dtype, jnp.floating):
      v = rng.random(s.shape, np.float32)
    else:
      v = np.arange(np.prod(s.shape)).reshape(s.shape).astype(s.dtype)
    out[k] = jax.device_put(v, s.sharding)
  return out


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0)) if cost else 0.0


# Model FLOPs and utilisation. A train step counts as 3 forwards (the backward pass is
# 2x the forward: gradients for the inputs and for the weights), the usual MFU convention;
# remat's recomputed forward is not credited.
TRAIN_STEP_FORWARDS = 3

# (regex on the lower-cased jax device_kind, chip, bf16 dense peak TFLOP/s per device);
# the first match wins. TPU kinds as jax names them: v5e is 'TPU v5 lite', v5p 'TPU v5'.
PEAK_BF16_TFLOPS = (
    (r"\bh100\b.*\bpcie\b", "H100 PCIe", 756.0),
    (r"\bh100\b.*\bnvl\b", "H100 NVL", 835.0),
    (r"\bh100\b", "H100 SXM", 989.0),
    (r"\bh200\b", "H200", 989.0),
    (r"\ba100\b", "A100", 312.0),
    (r"^tpu v4$", "TPU v4", 275.0),
    (r"^tpu v5( lite|e)$", "TPU v5e", 197.0),
    (r"^tpu v5p?$", "TPU v5p", 459.0),
    (r"^tpu v6( lite|e)$", "TPU v6e", 918.0),
)


def bf16_peak(device_kind: str) -> tuple[str, float] | None:
  """(chip, bf16 dense peak FLOP/s per device) for a jax device_kind; None if unknown."""
  kind = device_kind.strip().lower()
  for pattern, chip, tflops in PEAK_BF16_TFLOPS:
    if re.search(pattern, kind):
      return chip, tflops * 1e12
  return None


def train_step_flops(forward_flops_per_clip: float, clips: int) -> float:
  """Model FLOPs of one train step: 3 forwards of every clip."""
  return TRAIN_STEP_FORWARDS * forward_flops_per_clip * clips


def utilisation(flops_per_step: float, step_s: float, peak_flops_per_device: float | None,
                devices: int = 1) -> float | None:
  """Achieved FLOP/s over the peak FLOP/s of all devices; None where the peak is unknown."""
  if not peak_flops_per_device:
    return None
  return flops_per_step / step_s / (peak_flops_per_device * devices)


def allocator_peak_bytes(devices) -> int | None:
  """The largest `peak_bytes_in_use` of the devices' allocators (since the process
  started); None where the backend keeps no such statistic (CPU)."""
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except (NotImplementedError, RuntimeError):
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def _sig(x: float, digits: int = 4) -> float:
  return float(f"{x:.{digits}g}")


def _run_steps(parts: dict, steps: int) -> tuple[object, float, float, float]:
  """Compile and run the config's step: the compiled step, best wall and CPU seconds,
  and the last loss."""
  from cvrl.engine import state as state_lib  # pylint: disable=import-outside-toplevel
  mesh, spec = parts["mesh"], parts["spec"]
  with jax.set_mesh(mesh):
    compiled = parts["step"].lower(parts["state"], spec).compile()
    _, state = state_lib.create(parts["make"], parts["objective"].trainable, parts["tx"],
                                parts["placement"])
    batch = _concrete_batch(spec)
    carry = {"state": state}

    def run():
      carry["state"], metrics = compiled(carry["state"], batch)
      carry["loss"] = metrics["loss"]
      return metrics["loss"]

    wall, cpu = best_time(run, steps)
  return compiled, wall, cpu, float(carry["loss"])


def _utilisation_fields(flops: float, wall: float, devices: int, matmul_n: int | None) -> dict:
  """MFU against the device's bf16 peak (table) and against a matmul measured now."""
  kind = jax.devices()[0].device_kind
  peak = bf16_peak(kind)
  out = {"device_kind": kind, "peak_chip": peak and peak[0],
         "peak_tflops_per_device": peak and peak[1] / 1e12,
         "mfu_peak": None if peak is None else _sig(utilisation(flops, wall, peak[1], devices))}
  if peak is None:
    out["peak_unknown"] = f"no bf16 dense peak known for device kind {kind!r}"
  # bf16 on accelerators (what the peaks are quoted for); float32 on the CPU, as the
  # model mode measures it there.
  accelerator = jax.default_backend() != "cpu"
  dtype = jnp.bfloat16 if accelerator else jnp.float32
  n = matmul_n or (8192 if accelerator else 2048)
  rate = matmul_gflops(n, dtype=dtype)[0] * 1e9
  out.update(matmul_dtype=jnp.dtype(dtype).name, matmul_n=n,
             matmul_gflops_per_device=_sig(rate / 1e9),
             mfu_matmul=_sig(utilisation(flops, wall, rate, devices)))
  return out


def config_throughput(config, per_device_batch: int | None = None, steps: int = 3,
                      matmul_n: int | None = None) -> dict:
  """Clips/s, model FLOP/s and MFU of the config's full pretraining step (run for real),
  XLA's cost analysis of it, and its peak memory by the allocator and by XLA."""
  from cvrl.jobs import summary  # pylint: disable=import-outside-toplevel
  parts = _step_parts(config, per_device_batch)
  clips, devices = parts["clips"], parts["mesh"].devices.size
  compiled, wall, cpu, loss = _run_steps(parts, steps)
  allocator = allocator_peak_bytes(parts["mesh"].devices.flat)  # before the matmul runs
  forward = summary.forward_flops(summary.parse(config), parts["clip"])
  flops = train_step_flops(forward, clips)
  xla = _flops(compiled)
  out = {"global_batch": parts["spec"]["label"].shape[0], "clips_per_step": clips,
         "devices": devices, "step_s": round(wall, 4), "clips_per_sec": round(clips / wall, 2),
         "step_cpu_s": round(cpu, 4), "clips_per_sec_cpu": round(clips / cpu, 2),
         "loss": loss,
         "flops_source": "summary job's encoder forward FLOPs per clip (heads excluded); "
                         f"train step = {TRAIN_STEP_FORWARDS} x forward x clips",
         "forward_gflop_per_clip": _sig(forward / 1e9, 6),
         "model_gflop_per_step": _sig(flops / 1e9), "model_gflops": _sig(flops / wall / 1e9)}
  out.update(_utilisation_fields(flops, wall, devices, matmul_n))
  out["xla_cost_analysis"] = {
      "gflop_per_step": round(xla / 1e9, 3), "gflops": round(xla / wall / 1e9, 2),
      "note": "XLA's cost analysis of the compiled step; on GPU it does not count the "
              "cuDNN convolutions"}
  out["memory"] = {"allocator_peak_bytes": allocator,
                   "allocator_peak_gib": allocator and round(allocator / 2 ** 30, 3),
                   "xla_memory_analysis": step_inputs.memory_analysis(compiled)}
  return out


def saved_residual_bytes(config, parts: dict) -> int:
  """Bytes the backward pass keeps from the forward (all devices), by tracing only.

  What remat trades FLOPs for, independent of how a backend schedules buffers: the
  residuals `jax.vjp` closes over (the arrays `jax.ad_checkpoint.print_saved_residuals`
  lists), their shapes from `jax.eval_shape`.
  """
  # pylint: disable=import-outside-toplevel
  from cvrl.data import device as device_aug
  from cvrl.engine import state as state_lib
  objective, graphdef, state = parts["objective"], parts["graphdef"], parts["state"]

  def loss(params, rest, batch):
    batch = device_aug.finish_batch(batch, config.data)
    model = state_lib.merge(graphdef, params, rest)
    return objective.loss(model, batch, step=0, rng=jax.random.key(0))[0]

  def residuals(*args):
    return jax.tree.leaves(jax.vjp(loss, *args)[1])

  with jax.set_mesh(parts["mesh"]):
    shapes = jax.eval_shape(residuals, state.params, state.rest, parts["spec"])
  return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in shapes))


def config_memory(config, per_device_batch: int, remat: bool) -> dict:
  """XLA's memory analysis (bytes per device) of the compiled, never-run step, and the
  activation bytes the backward pass keeps (per device)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.remat = bool(remat)
  parts = _step_parts(config, per_device_batch)
  mesh, clips = parts["mesh"], parts["clips"]
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = parts["step"].lower(parts["state"], parts["spec"]).compile()
  devices = mesh.devices.size
  out = {"per_device_batch": per_device_batch, "remat": bool(remat),
         "clips_per_device": clips // devices,
         "gflop_per_step": round(_flops(compiled) / 1e9, 1),
         "compile_s": round(time.perf_counter() - start, 1)}
  out.update(step_inputs.memory_analysis(compiled))
  residual = saved_residual_bytes(config, parts)
  out["saved_residual_bytes"] = residual // devices
  out["saved_residual_gib"] = round(residual / devices / 2 ** 30, 3)
  return out


def config_main(args) -> dict:
  config = load_config(args.config, args.set)
  out = {"backend": jax.default_backend(), "devices": jax.device_count(),
         "config": args.config, "overrides": list(args.set),
         "model": f"r3d{config.model.depth}_{config.model.preset}_{config.model.width:g}x",
         "dtype": config.model.dtype,
         "clip": [int(config.data.num_frames), int(config.data.crop_size)]}
  if not args.memory_only:
    out["train_step"] = config_throughput(config, args.per_device_batch, args.steps,
                                          args.matmul_n)
  if args.memory_only or args.memory_batches:
    batches = [int(b) for b in (args.memory_batches or "8,16,32").split(",")]
    out["memory"] = [config_memory(config, b, remat) for b in batches for remat in (False, True)]
  return out


def main(argv=None):
  from cvrl.core import cli  # pylint: disable=import-outside-toplevel
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=None,
                      help="config mode: path/to/config.py[:arg], the full pretraining step")
  parser.add_argument("--set", action="append", default=[],
                      help="config override key.sub=value (repeatable)")
  parser.add_argument("--per_device_batch", type=int, default=None,
                      help="videos per device (default: the config's batch_size over devices)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps (config mode)")
  parser.add_argument("--memory_only", action="store_true",
                      help="config mode: only compile (never run) and report memory analysis")
  parser.add_argument("--memory_batches", default=None,
                      help="per-device batches for the memory analysis, e.g. 8,16,32")
  parser.add_argument("--models", default="r3d18,r3d50")
  parser.add_argument("--impls", default="native,fold")
  parser.add_argument("--repeats", type=int, default=2, help="timed steps per measurement")
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--r3d18_batch", type=int, default=8)
  parser.add_argument("--r3d18_frames", type=int, default=8)
  parser.add_argument("--r3d50_batch", type=int, default=2)
  parser.add_argument("--r3d50_frames", type=int, default=8)
  parser.add_argument("--matmul_n", type=int, default=None,
                      help="matmul side (default 2048; config mode: 8192 on accelerators)")
  args = parser.parse_args(argv)
  if args.config:
    print(json.dumps(config_main(args)))
    return

  impls = args.impls.split(",")
  out = {"backend": jax.default_backend(), "devices": jax.device_count(),
         "flops_source": "xla_cost_analysis_of_native_step", "models": {}}
  # The matmul rate is taken before and after the models; the higher counts (the
  # machine may be shared, and a lower figure would flatter the ratios).
  args.matmul_n = args.matmul_n or 2048
  mm_before = matmul_gflops(args.matmul_n)
  for name in args.models.split(","):
    family = "r3d18" if name in ("r3d18", "tclr") else "r3d50"
    out["models"][name] = bench_model(
        name, impls, getattr(args, f"{family}_batch"), getattr(args, f"{family}_frames"),
        args.size, args.repeats, args.width)
  mm_after = matmul_gflops(args.matmul_n)
  mm, mm_cpu = max(mm_before[0], mm_after[0]), max(mm_before[1], mm_after[1])
  out["matmul_gflops"], out["matmul_gflops_cpu"] = round(mm, 1), round(mm_cpu, 1)
  for res in out["models"].values():
    for r in res["impls"].values():
      r["ratio_to_matmul"] = round(r["gflops"] / mm, 3)
      r["ratio_to_matmul_cpu"] = round(r["gflops_cpu"] / mm_cpu, 3)
  print(json.dumps(out))


if __name__ == "__main__":
  from cvrl.core import cli  # one-line user errors, quiet log
  cli.run_plain(main)
