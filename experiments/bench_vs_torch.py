"""The same encoder train step in cvrl (JAX) and in PyTorch, side by side (one JSON line).

  python -m experiments.bench_vs_torch [--models r3d18,r3d50] [--batches 32,64]
      [--frames 16] [--size 112] [--steps 20] [--frameworks cvrl,torch_eager,torch_compile]
  python -m experiments.bench_vs_torch --tiny     (1/8 width, 4 frames of 32 x 32: a CPU)

The step, the same in every framework and on the same batch: forward with BatchNorm in
train mode, loss = mean square of the pooled features, backward, SGD update (lr 1e-3, no
momentum). Timed after `--warmup` steps (compilation included there), best of `--repeats`
windows of `--steps` steps; clips/s = batch / step seconds.
- cvrl: experiments.bench_step's jitted, donated step; the model computes in `--dtype`.
- torch_eager: autocast (AMP) to bf16 when --dtype is bfloat16; on GPU channels_last_3d
  model and input, cudnn.benchmark on.
- torch_compile: the same with torch.compile(model) (the optimizer step stays eager).
--dtype auto = bfloat16 on an accelerator, float32 on the CPU.

Models: r3d18 = torchvision's r3d_18 (cvrl's 'r3d18' preset): torchvision's own where it is
installed and the width is 1, else the copy written here, whose parameter count is checked
against torchvision's published 33,371,472 (with its 400-class fc); r3d50 = CVRL's R3D-50
(cvrl's depth-50 'cvrl' preset), written here in PyTorch. Each model's parameter count is
asserted equal to cvrl's before anything runs. Convolutions pad k // 2 on each side where
cvrl's R3D-50 pads as TF's 'SAME' (one more row after than before at stride 2): the output
shapes and the FLOPs are the same.

PyTorch is optional and never a dependency of cvrl: without it the script prints one line
saying so and exits 0.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

# JAX and PyTorch share the accelerator: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cvrl.core import cli  # noqa: E402
from cvrl.models import r3d  # noqa: E402
from experiments import bench_step  # noqa: E402

try:
  import torch
  from torch import nn
except ImportError:  # optional: main() says so and exits 0
  torch = nn = None

LEARNING_RATE = 1e-3
FRAMEWORKS = ("cvrl", "torch_eager", "torch_compile")
TORCHVISION_R3D18_PARAMS = 33_371_472  # torchvision.models.video.r3d_18(), 400-class fc
KINETICS400_FC = 512 * 400 + 400
# name -> cvrl (depth, preset), and the PyTorch copy's architecture, written out here:
# block, blocks per stage, stem conv kernel and strides, stem max-pool (kernel, strides),
# per-stage temporal kernel and temporal stride of the first block (spatial: 1, 2, 2, 2).
MODELS = {
    "r3d18": dict(cvrl=(18, "r3d18"), block="basic", blocks=(2, 2, 2, 2),
                  stem=((3, 7, 7), (1, 2, 2)), pool=None,
                  temporal_kernels=(3, 3, 3, 3), temporal_strides=(1, 2, 2, 2)),
    "r3d50": dict(cvrl=(50, "cvrl"), block="bottleneck", blocks=(3, 4, 6, 3),
                  stem=((5, 7, 7), (2, 2, 2)), pool=((1, 3, 3), (1, 2, 2)),
                  temporal_kernels=(1, 1, 3, 3), temporal_strides=(1, 1, 1, 1)),
}
DEFAULTS = {"r3d18": dict(size=112, batches=(32, 64)), "r3d50": dict(size=224, batches=(16,))}
TINY = dict(width=0.125, frames=4, size=32, batches="2", steps=2, warmup=2, repeats=1)

_Module = nn.Module if nn is not None else object


# ------------------------------------------------------------------ the PyTorch models

def _width(channels: int, width: float) -> int:
  return max(1, int(round(channels * width)))  # as cvrl.models.r3d.scaled


def _conv_bn(cin: int, cout: int, kernel, stride=(1, 1, 1)) -> list:
  pad = tuple(k // 2 for k in kernel)
  return [nn.Conv3d(cin, cout, kernel, stride, pad, bias=False), nn.BatchNorm3d(cout)]


class Block(_Module):
  """ReLU(body(x) + shortcut(x)); the shortcut a 1x1x1 conv + BN where the shape changes."""

  def __init__(self, body: list, cin: int, cout: int, stride):
    super().__init__()
    self.body = nn.Sequential(*body)
    self.shortcut = (nn.Identity() if cin == cout and tuple(stride) == (1, 1, 1)
                     else nn.Sequential(*_conv_bn(cin, cout, (1, 1, 1), stride)))
    self.relu = nn.ReLU(inplace=True)

  def forward(self, x):
    return self.relu(self.body(x) + self.shortcut(x))


def basic_block(cin: int, width: int, t: int, stride) -> Block:
  """[t,3,3] (stride) -> [t,3,3], as torchvision's BasicBlock with Conv3DSimple."""
  body = [*_conv_bn(cin, width, (t, 3, 3), stride), nn.ReLU(inplace=True),
          *_conv_bn(width, width, (t, 3, 3))]
  return Block(body, cin, width, stride)


def bottleneck_block(cin: int, width: int, t: int, stride) -> Block:
  """[t,1,1] (temporal stride) -> [1,3,3] (spatial stride) -> [1,1,1] x4 channels."""
  ts, s, _ = stride
  body = [*_conv_bn(cin, width, (t, 1, 1), (ts, 1, 1)), nn.ReLU(inplace=True),
          *_conv_bn(width, width, (1, 3, 3), (1, s, s)), nn.ReLU(inplace=True),
          *_conv_bn(width, 4 * width, (1, 1, 1))]
  return Block(body, cin, 4 * width, stride)


class TorchR3D(_Module):
  """R3D-18 (torchvision's r3d_18) or CVRL's R3D-50 in PyTorch: (N, 3, T, H, W) -> (N, C)."""

  def __init__(self, name: str, width: float = 1.0):
    super().__init__()
    spec = MODELS[name]
    cin = _width(64, width)
    kernel, stride = spec["stem"]
    layers = [*_conv_bn(3, cin, kernel, stride), nn.ReLU(inplace=True)]
    if spec["pool"]:
      window, pool_stride = spec["pool"]
      layers.append(nn.MaxPool3d(window, pool_stride, tuple(k // 2 for k in window)))
    make = basic_block if spec["block"] == "basic" else bottleneck_block
    for i, n in enumerate(spec["blocks"]):
      w = _width((64, 128, 256, 512)[i], width)
      for j in range(n):
        s = (spec["temporal_strides"][i], 1 if i == 0 else 2, 1 if i == 0 else 2)
        layers.append(make(cin, w, spec["temporal_kernels"][i], s if j == 0 else (1, 1, 1)))
        cin = layers[-1].body[-1].num_features
    self.features = nn.Sequential(*layers)
    self.num_features = cin

  def forward(self, x):
    return self.features(x).mean(dim=(2, 3, 4))


def torch_model(name: str, width: float):
  """torchvision's r3d_18 (fc dropped) where it is installed and width is 1, else ours."""
  if name == "r3d18" and width == 1.0:
    try:
      from torchvision.models.video import r3d_18  # pylint: disable=import-outside-toplevel
    except ImportError:
      pass
    else:
      model = r3d_18()
      model.fc = nn.Identity()
      return model, "torchvision.models.video.r3d_18"
  return TorchR3D(name, width), "written here"


def torch_params(model) -> int:
  return sum(p.numel() for p in model.parameters())


def cvrl_params(name: str, width: float) -> int:
  depth, preset = MODELS[name]["cvrl"]
  model = nnx.eval_shape(lambda: r3d.R3D(depth, width, preset, rngs=nnx.Rngs(0)))
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def check_params(name: str, width: float, model) -> int:
  """The PyTorch model's parameter count: cvrl's, and torchvision's for the R3D-18."""
  ours, theirs = torch_params(model), cvrl_params(name, width)
  assert ours == theirs, f"{name} x{width:g}: PyTorch has {ours} parameters, cvrl {theirs}"
  if name == "r3d18" and width == 1.0:
    assert ours + KINETICS400_FC == TORCHVISION_R3D18_PARAMS, ours
  return ours


# ------------------------------------------------------------------------- the steps

def best_seconds(step, sync, warmup: int, steps: int, repeats: int) -> float:
  """Best seconds per step over `repeats` windows of `steps`, after `warmup` steps."""
  for _ in range(warmup):
    step()
  sync()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    sync()
    best = min(best, (time.perf_counter() - start) / steps)
  return best


def cvrl_run(name: str, video: np.ndarray, width: float, dtype: str, conv_impl: str,
             timing: dict) -> tuple[float, float]:
  """(seconds per step, last loss) of cvrl's step (experiments.bench_step's)."""
  depth, preset = MODELS[name]["cvrl"]
  model = r3d.R3D(depth, width, preset, dtype=jnp.dtype(dtype), conv_impl=conv_impl,
                  rngs=nnx.Rngs(0))
  model.train()
  step, params, state = bench_step.make_train_step(model, LEARNING_RATE)
  x = jnp.asarray(video)
  carry = {"params": params, "state": state}

  def run():
    carry["params"], carry["state"], carry["loss"] = step(carry["params"], carry["state"], x)

  seconds = best_seconds(run, lambda: jax.block_until_ready(carry["loss"]), **timing)
  return seconds, float(carry["loss"])


def torch_run(model, video: np.ndarray, dtype: str, timing: dict) -> tuple[float, float]:
  """(seconds per step, last loss) of the same step in PyTorch, `model` eager or compiled."""
  device = next(model.parameters()).device
  gpu = device.type == "cuda"
  x = torch.from_numpy(video).permute(0, 4, 1, 2, 3).to(device)  # NTHWC -> NCTHW
  x = x.contiguous(memory_format=torch.channels_last_3d if gpu else torch.contiguous_format)
  opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
  out = {}

  def run():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      features = model(x)
    loss = features.float().square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    out["loss"] = loss

  sync = torch.cuda.synchronize if gpu else (lambda: None)
  seconds = best_seconds(run, sync, **timing)
  return seconds, float(out["loss"].detach())


def _fresh_torch_model(name: str, width: float, device):
  model, _ = torch_model(name, width)
  if device.type == "cuda":
    return model.to(device, memory_format=torch.channels_last_3d).train()
  return model.to(device).train()


def bench_point(name: str, batch: int, frames: int, size: int, args, device) -> dict:
  """clips/s of every framework on one (model, batch, clip) point."""
  video = np.random.default_rng(0).random((batch, frames, size, size, 3), np.float32)
  timing = dict(warmup=args.warmup, steps=args.steps, repeats=args.repeats)
  row = {"model": name, "batch": batch, "frames": frames, "size": size, "width": args.width,
         "clips_per_sec": {}, "last_loss": {}}
  for fw in args.frameworks:
    try:
      if fw == "cvrl":
        seconds, loss = cvrl_run(name, video, args.width, args.dtype, args.conv_impl, timing)
      else:
        model = _fresh_torch_model(name, args.width, device)
        if fw == "torch_compile":
          torch._dynamo.reset()  # pylint: disable=protected-access
          model = torch.compile(model)
        seconds, loss = torch_run(model, video, args.dtype, timing)
        del model
        if device.type == "cuda":
          torch.cuda.empty_cache()
    except Exception as e:  # pylint: disable=broad-except  # e.g. no compiler for inductor
      row.setdefault("errors", {})[fw] = f"{type(e).__name__}: {str(e)[:300]}"
      continue
    row["clips_per_sec"][fw] = round(batch / seconds, 2)
    row["last_loss"][fw] = loss if math.isfinite(loss) else str(loss)
  return row


# -------------------------------------------------------------------------- the command

def parse_args(argv=None):
  p = cli.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="r3d18,r3d50")
  p.add_argument("--batches", default=None,
                 help="comma-separated batches (default r3d18: 32,64; r3d50: 16)")
  p.add_argument("--frames", type=int, default=16)
  p.add_argument("--size", type=int, default=None, help="crop (default r3d18 112, r3d50 224)")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--steps", type=int, default=20, help="timed steps per window")
  p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compiles)")
  p.add_argument("--repeats", type=int, default=3, help="timed windows; the best counts")
  p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
  p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
  p.add_argument("--conv_impl", default="auto", help="cvrl's conv lowering")
  p.add_argument("--tiny", action="store_true",
                 help=f"CPU-sized: {TINY} unless given")
  args = p.parse_args(argv)
  given = {a.split("=")[0].lstrip("-") for a in (sys.argv[1:] if argv is None else argv)
           if a.startswith("--")}
  if args.tiny:
    for k, v in TINY.items():
      if k not in given:
        setattr(args, k, v)
  args.frameworks = args.frameworks.split(",")
  unknown = set(args.frameworks) - set(FRAMEWORKS)
  if unknown:
    p.error(f"unknown frameworks {sorted(unknown)}; choose from {FRAMEWORKS}")
  if args.dtype == "auto":
    args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return args


def main(argv=None) -> int:
  args = parse_args(argv)  # --help and bad flags first, with or without PyTorch
  if torch is None:
    print(json.dumps({"torch": None, "skipped": "PyTorch is not installed: nothing to compare "
                      "cvrl with (pip install torch; cvrl does not depend on it)"}))
    return 0
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True
  out = {"device_kind": jax.devices()[0].device_kind, "jax_backend": jax.default_backend(),
         "torch_device": (torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
         "jax": jax.__version__, "torch": torch.__version__, "dtype": args.dtype,
         "step": f"SGD lr {LEARNING_RATE:g} on the mean square of the pooled features, "
                 "BatchNorm in train mode", "params": {}, "results": []}
  for name in args.models.split(","):
    model, source = torch_model(name, args.width)
    out["params"][name] = {"count": check_params(name, args.width, model), "torch": source}
    size = args.size or DEFAULTS[name]["size"]
    batches = ([int(b) for b in str(args.batches).split(",")] if args.batches
               else DEFAULTS[name]["batches"])
    for batch in batches:
      out["results"].append(bench_point(name, batch, args.frames, size, args, device))
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  raise SystemExit(cli.run_plain(main))
