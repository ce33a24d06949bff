"""The R3D family: 3D ResNets of depth 18 to 200 at any width.

One implementation serves every preset; presets differ only in stem, temporal kernels,
strides, dilations and padding style. Input (N, T, H, W, 3) in [0, 1], or with
input_mode='dif' (3DRotNet's DIF models) (N, T + 1, H, W, 3) frames whose T differences
x[t + 1] - x[t] the network sees ('rgb_std', 'dif_std': the frames or their differences
standardised per clip and channel, the same whatever the clip's levels and contrast;
'rgb_pc', 'dif_pc': projected onto the clip's first principal colour axis, the same
whatever its colours; 'res*': the clip less its mean frame; 'med*': less its median
frame): the difference is part of the model, so every job that feeds it clips gets it
right without knowing how it was pretrained.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from cvrl.core.ops import temporal_median
from cvrl.models.conv import Conv3D, resolve_padding
from cvrl.models.inputs import extra_frames

# depth -> (block type, blocks per stage)
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
INPUTS = ("rgb", "dif", "dif_std", "rgb_std", "rgb_pc", "dif_pc", "res", "res_std", "res_pc",
          "med", "med_std", "med_pc")
DIF_EPS = 1e-3  # added to the clip's std of its differences ('dif_std')
EXPANSION = {"basic": 1, "bottleneck": 4}


@dataclasses.dataclass(frozen=True)
class R3DSpec:
  """Everything that distinguishes one R3D from another, besides depth and width."""
  stem_kernel: tuple[int, int, int]
  stem_strides: tuple[int, int, int]
  stem_pool: tuple[int, int, int] | None  # max-pool window; its strides below
  stem_pool_strides: tuple[int, int, int]
  temporal_kernels: tuple[int, int, int, int]  # per stage
  temporal_strides: tuple[int, int, int, int]  # per stage (first block)
  temporal_dilations: tuple[int, int, int, int]  # per stage
  spatial_strides: tuple[int, int, int, int] = (1, 2, 2, 2)
  padding: str = "same"  # 'same' (TF, reference CVRL) or 'symmetric' (PyTorch)
  # Where a block changes shape: 'projection' (1x1x1 conv + BN, He et al.'s option B) or
  # 'zeros' (option A, no parameters: the strided input, its new channels zero).
  shortcut: str = "projection"


SHORTCUTS = ("projection", "zeros")


PRESETS = {
    # CVRL's R3D (Qian et al., CVPR 2021): TF model-garden ResNet3D, TF 'SAME' padding.
    "cvrl": R3DSpec(stem_kernel=(5, 7, 7), stem_strides=(2, 2, 2), stem_pool=(1, 3, 3),
                    stem_pool_strides=(1, 2, 2), temporal_kernels=(1, 1, 3, 3),
                    temporal_strides=(1, 1, 1, 1), temporal_dilations=(1, 1, 1, 1),
                    padding="same"),
    # Slow-only R50 8x8 (SlowFast's SLOW_8x8_R50, the rho study's backbone): 1x7x7 stem
    # without temporal stride, 1x3x3 max-pool stride (1, 2, 2), temporal kernels 1 in res2
    # and res3 and 3 in res4 and res5, no temporal downsampling (8 frames -> 8x7x7x2048).
    "slow": R3DSpec(stem_kernel=(1, 7, 7), stem_strides=(1, 2, 2), stem_pool=(1, 3, 3),
                    stem_pool_strides=(1, 2, 2), temporal_kernels=(1, 1, 3, 3),
                    temporal_strides=(1, 1, 1, 1), temporal_dilations=(1, 1, 1, 1),
                    padding="symmetric"),
    # Hara et al.'s 3D-ResNet (CVPR 2018, 3D-ResNets-PyTorch), as 3DRotNet's code builds
    # it (resnet18, shortcut_type 'A'): 7x7x7 stem stride (1, 2, 2), 3x3x3 max-pool stride
    # 2 (time too), 3x3x3 convs, stride 2 in T, H, W from res3 on, zero-padded shortcuts.
    "hara": R3DSpec(stem_kernel=(7, 7, 7), stem_strides=(1, 2, 2), stem_pool=(3, 3, 3),
                    stem_pool_strides=(2, 2, 2), temporal_kernels=(3, 3, 3, 3),
                    temporal_strides=(1, 2, 2, 2), temporal_dilations=(1, 1, 1, 1),
                    padding="symmetric", shortcut="zeros"),
    # torchvision's r3d_18 (Tran et al., CVPR 2018): every conv 3x3x3, temporal stride 2
    # from res3 on, no max-pool, projection shortcuts.
    "r3d18": R3DSpec(stem_kernel=(3, 7, 7), stem_strides=(1, 2, 2), stem_pool=None,
                     stem_pool_strides=(1, 1, 1), temporal_kernels=(3, 3, 3, 3),
                     temporal_strides=(1, 2, 2, 2), temporal_dilations=(1, 1, 1, 1),
                     padding="symmetric"),
    # TCLR: r3d18 whose last stage trades temporal stride for dilation 2 (16 frames -> 4 steps).
    "tclr": R3DSpec(stem_kernel=(3, 7, 7), stem_strides=(1, 2, 2), stem_pool=None,
                    stem_pool_strides=(1, 1, 1), temporal_kernels=(3, 3, 3, 3),
                    temporal_strides=(1, 2, 2, 1), temporal_dilations=(1, 1, 1, 2),
                    padding="symmetric"),
}


def scaled(channels: int, width: float) -> int:
  return max(1, int(round(channels * width)))


class _ConvBN(nnx.Module):
  """Conv3D -> BatchNorm (-> ReLU by the caller)."""

  def __init__(self, cin, cout, kernel, strides, dilation, *, padding, conv_impl, dtype,
               bn_momentum, bn_eps, rngs):
    self.conv = Conv3D(cin, cout, kernel, strides, dilation, padding=padding, impl=conv_impl,
                       dtype=dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=bn_momentum, epsilon=bn_eps, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.conv(x))


class ZeroPadShortcut(nnx.Module):
  """Option A: every stride-th position of the input, channels zero-padded to cout."""

  def __init__(self, cin: int, cout: int, strides):
    if cout < cin:
      raise ValueError(f"a zero-padded shortcut cannot drop channels ({cin} -> {cout})")
    self.extra, self.strides = cout - cin, tuple(strides)

  def __call__(self, x):
    st, sh, sw = self.strides
    x = x[:, ::st, ::sh, ::sw, :]
    return jnp.pad(x, ((0, 0),) * 4 + ((0, self.extra),)) if self.extra else x


def _identity(x):
  return x


def _shortcut(cin, cout, strides, kind, common, rngs):
  """The block's shortcut: identity where the shape is kept, else `kind`'s."""
  if cin == cout and tuple(strides) == (1, 1, 1):
    return _identity
  if kind == "zeros":
    return ZeroPadShortcut(cin, cout, strides)
  return _ConvBN(cin, cout, (1, 1, 1), strides, (1, 1, 1), rngs=rngs, **common)


class BasicBlock(nnx.Module):
  """[t,3,3] -> [t,3,3] (3x3x3 twice for r3d18); shortcut of `kind` where the shape changes."""

  def __init__(self, cin, width, *, temporal_kernel, strides, dilation_t, common, rngs,
               kind="projection"):
    cout = width
    self.conv1 = _ConvBN(cin, width, (temporal_kernel, 3, 3), strides, (dilation_t, 1, 1),
                         rngs=rngs, **common)
    self.conv2 = _ConvBN(width, cout, (temporal_kernel, 3, 3), (1, 1, 1), (dilation_t, 1, 1),
                         rngs=rngs, **common)
    self.shortcut = _shortcut(cin, cout, strides, kind, common, rngs)

  def __call__(self, x):
    y = nnx.relu(self.conv1(x))
    y = self.conv2(y)
    return nnx.relu(y + self.shortcut(x))


class BottleneckBlock(nnx.Module):
  """[t,1,1] -> [1,3,3] (spatial stride) -> [1,1,1] x4, as the CVRL R3D-50."""

  def __init__(self, cin, width, *, temporal_kernel, strides, dilation_t, common, rngs,
               kind="projection"):
    cout = width * EXPANSION["bottleneck"]
    t_stride, s_h, s_w = strides
    self.conv1 = _ConvBN(cin, width, (temporal_kernel, 1, 1), (t_stride, 1, 1),
                         (dilation_t, 1, 1), rngs=rngs, **common)
    self.conv2 = _ConvBN(width, width, (1, 3, 3), (1, s_h, s_w), (1, 1, 1), rngs=rngs, **common)
    self.conv3 = _ConvBN(width, cout, (1, 1, 1), (1, 1, 1), (1, 1, 1), rngs=rngs, **common)
    self.shortcut = _shortcut(cin, cout, strides, kind, common, rngs)

  def __call__(self, x):
    y = nnx.relu(self.conv1(x))
    y = nnx.relu(self.conv2(y))
    y = self.conv3(y)
    return nnx.relu(y + self.shortcut(x))


def frame_difference(clips):
  """clips [..., T + 1, H, W, C] -> [..., T, H, W, C]: x[t + 1] - x[t]."""
  return clips[..., 1:, :, :, :] - clips[..., :-1, :, :, :]


def standardized(x):
  """Each channel of each clip of x [..., T, H, W, C] less its mean, over its std plus
  DIF_EPS (over T, H, W): no parameters, the same for a clip whatever the level and
  contrast of each of its channels."""
  axes = (-4, -3, -2)
  x = x - jnp.mean(x, axis=axes, keepdims=True)
  return x / (jnp.std(x, axis=axes, keepdims=True) + DIF_EPS)


def principal_colour(x):
  """Each clip of x [..., T, H, W, 3] projected onto its first principal colour axis.

  The axis is the top eigenvector of the 3 x 3 covariance of the clip's pixel colours
  (over T, H, W): the colour direction along which the clip varies most, e.g. from its
  background to its object whatever their colours. The projection is standardised (over
  its std plus DIF_EPS), its sign set so its third moment is >= 0 (the rarer extreme,
  usually the object, positive: a clip and its inverse give the same result), and it is
  repeated in the three channels, as grayscale repeats the luminance. A grey axis chosen
  per clip: an object over a plain background gives the same input whatever their two
  colours (up to the noise), where grayscale loses an object of the background's
  luminance; a rotation or uniform scaling of the clip's colours changes nothing."""
  axes = (-4, -3, -2)
  x = x - jnp.mean(x, axis=axes, keepdims=True)
  covariance = jnp.einsum("...thwc,...thwd->...cd", x, x) / (x.shape[-4] * x.shape[-3] *
                                                           x.shape[-2])
  _, vectors = jnp.linalg.eigh(covariance)  # ascending eigenvalues: the last is the top
  y = jnp.einsum("...thwc,...c->...thw", x, vectors[..., :, -1])
  y = y / (jnp.std(y, axis=(-3, -2, -1), keepdims=True) + DIF_EPS)
  skew = jnp.mean(y ** 3, axis=(-3, -2, -1), keepdims=True)
  y = jnp.where(skew < 0, -y, y)
  return jnp.broadcast_to(y[..., None], x.shape)


def still_removed(x):
  """x [..., T, H, W, C] less its mean over the clip's frames: what does not move (a still
  background) is zero, what moves is itself less the trail of its mean place."""
  return x - jnp.mean(x, axis=-4, keepdims=True)


def median_removed(x):
  """x [..., T, H, W, C] less its median over the clip's frames: a still background is
  zero, and where something moves over it for under half the frames, the median is the
  background, so what moves is itself less the background behind it, with no trail."""
  return x - temporal_median(x)


_TIME_MAPS = {"rgb": lambda x: x, "dif": frame_difference, "res": still_removed,
              "med": median_removed}
_CHANNEL_MAPS = {"": lambda x: x, "std": standardized, "pc": principal_colour}


def _max_pool(x, window, strides, padding_mode):
  pad = resolve_padding(padding_mode, x.shape[1:4], window, strides, (1, 1, 1))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1),
                               ((0, 0), *pad, (0, 0)))


class R3D(nnx.Module):
  """3D ResNet encoder. `__call__` returns pooled (N, C) features or the (N,T,H,W,C) map.

  Input: float in [0, 1] or uint8 in [0, 255] (scaled on device). `input_mode='dif'`
  takes T + 1 frames and runs on their T differences (no parameters: same checkpoint
  layout as 'rgb').
  """

  def __init__(self, depth: int = 50, width: float = 1.0, preset: str | R3DSpec = "cvrl", *,
               bn_momentum: float = 0.9, bn_eps: float = 1e-5, dtype=jnp.float32,
               remat: bool = False, conv_impl: str = "auto", input_mode: str = "rgb",
               rngs: nnx.Rngs):
    if depth not in DEPTHS:
      raise ValueError(f"R3D depth must be one of {sorted(DEPTHS)}, got {depth}")
    if not width > 0:
      raise ValueError(f"R3D width multiplier must be > 0, got {width}")
    if isinstance(preset, str) and preset not in PRESETS:
      raise ValueError(f"R3D preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if input_mode not in INPUTS:
      raise ValueError(f"R3D input_mode must be one of {list(INPUTS)}, got {input_mode!r}")
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    if spec.shortcut not in SHORTCUTS:
      raise ValueError(f"R3D shortcut must be one of {list(SHORTCUTS)}, got {spec.shortcut!r}")
    block_type, blocks = DEPTHS[depth]
    block_cls = BasicBlock if block_type == "basic" else BottleneckBlock
    self.depth, self.width, self.spec, self.remat = depth, width, spec, remat
    self.dtype, self.input_mode = dtype, input_mode
    common = dict(padding=spec.padding, conv_impl=conv_impl, dtype=dtype,
                  bn_momentum=bn_momentum, bn_eps=bn_eps)
    stem_width = scaled(64, width)
    self.stem = _ConvBN(3, stem_width, spec.stem_kernel, spec.stem_strides, (1, 1, 1),
                        rngs=rngs, **common)
    stages = []
    cin = stem_width
    for i, n in enumerate(blocks):
      w = scaled(STAGE_WIDTHS[i], width)
      stage = []
      for j in range(n):
        strides = ((spec.temporal_strides[i], spec.spatial_strides[i], spec.spatial_strides[i])
                   if j == 0 else (1, 1, 1))
        stage.append(block_cls(cin, w, temporal_kernel=spec.temporal_kernels[i],
                               strides=strides, dilation_t=spec.temporal_dilations[i],
                               common=common, rngs=rngs, kind=spec.shortcut))
        cin = w * EXPANSION[block_type]
      stages.append(nnx.List(stage))
    self.stages = nnx.List(stages)
    self.num_features = cin

  def __call__(self, x, *, return_map: bool = False):
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"R3D expects (N, T, H, W, 3) input, got shape {x.shape}")
    if x.dtype == jnp.uint8:  # the host pipeline ships uint8 frames: [0, 255] -> [0, 1]
      x = x.astype(jnp.float32) * (1.0 / 255.0)
    if self.input_mode != "rgb":  # after scaling: uint8 differences would wrap around
      if extra_frames(self.input_mode) and x.shape[1] < 2:
        raise ValueError(f"a {self.input_mode!r} R3D needs T + 1 >= 2 frames, got shape "
                         f"{x.shape}")
      time_map, _, channel_map = self.input_mode.partition("_")
      x = _CHANNEL_MAPS[channel_map](_TIME_MAPS[time_map](x.astype(jnp.float32)))
    x = nnx.relu(self.stem(x.astype(self.dtype)))
    if self.spec.stem_pool is not None:
      x = _max_pool(x, self.spec.stem_pool, self.spec.stem_pool_strides, self.spec.padding)
    for stage in self.stages:
      for block in stage:
        x = nnx.remat(lambda b, h: b(h))(block, x) if self.remat else block(x)
    x = x.astype(jnp.float32)
    if return_map:
      return x
    return jnp.mean(x, axis=(1, 2, 3))
