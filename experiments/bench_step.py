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
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


def matmul_gflops(n: int = 2048, repeats: int = 5) -> tuple[float, float]:
  """float32 GFLOP/s (by wall and by CPU time) of a jitted n^3 matmul."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="r3d18,r3d50")
  parser.add_argument("--impls", default="native,fold")
  parser.add_argument("--repeats", type=int, default=2, help="timed steps per measurement")
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--r3d18_batch", type=int, default=8)
  parser.add_argument("--r3d18_frames", type=int, default=8)
  parser.add_argument("--r3d50_batch", type=int, default=2)
  parser.add_argument("--r3d50_frames", type=int, default=8)
  parser.add_argument("--matmul_n", type=int, default=2048)
  args = parser.parse_args(argv)

  impls = args.impls.split(",")
  out = {"backend": jax.default_backend(), "devices": jax.device_count(),
         "flops_source": "xla_cost_analysis_of_native_step", "models": {}}
  # The matmul rate is taken before and after the models; the higher counts (the
  # machine may be shared, and a lower figure would flatter the ratios).
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
  main()
