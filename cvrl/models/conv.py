"""3D convolution for the R3D family, with a lowering chosen per backend.

Parameters are always one kernel of shape (kt, kh, kw, in, out): whichever lowering runs,
checkpoints and numbers are the same. Padding is explicit (lo, hi) per axis so that
TF-style 'SAME' (the reference CVRL code) and PyTorch-style symmetric padding
(torchvision's R3D-18) are both exact.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Padding = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
IMPLS = ("auto", "native")
_DIMS = ("NDHWC", "DHWIO", "NDHWC")


def same_padding(size: int | None, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
  """TF 'SAME' padding along one axis (needs the input size when stride > 1)."""
  eff = (kernel - 1) * dilation + 1
  if stride == 1 or size is None:
    total = eff - 1
  else:
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
  return total // 2, total - total // 2


def symmetric_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
  """PyTorch-style padding k // 2 on both sides (dilated)."""
  p = (kernel - 1) // 2 * dilation
  return p, p


def resolve_padding(mode: str, spatial: Sequence[int], kernel: Sequence[int],
                    strides: Sequence[int], dilation: Sequence[int]) -> Padding:
  if mode == "same":
    return tuple(same_padding(n, k, s, d) for n, k, s, d in zip(spatial, kernel, strides, dilation))
  if mode == "symmetric":
    return tuple(symmetric_padding(k, d) for k, d in zip(kernel, dilation))
  raise ValueError(f"padding must be 'same' or 'symmetric', got {mode!r}")


def conv3d_native(x, kernel, strides, padding: Padding, dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=tuple(strides), padding=tuple(padding),
      rhs_dilation=tuple(dilation), dimension_numbers=_DIMS)


def conv3d(x, kernel, strides=(1, 1, 1), padding: Padding = ((0, 0),) * 3,
           dilation=(1, 1, 1), impl: str = "auto"):
  """x: (N, T, H, W, C); kernel: (kt, kh, kw, C, O). Returns (N, T', H', W', O)."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
  return conv3d_native(x, kernel, strides, padding, dilation)


class Conv3D(nnx.Module):
  """Bias-free 3D convolution (BatchNorm always follows in R3D)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: Sequence[int],
               strides: Sequence[int] = (1, 1, 1), dilation: Sequence[int] = (1, 1, 1),
               padding: str = "same", impl: str = "auto", dtype=jnp.float32, *, rngs: nnx.Rngs):
    self.kernel_size = tuple(kernel_size)
    self.strides = tuple(strides)
    self.dilation = tuple(dilation)
    self.padding = padding
    self.impl = impl
    self.dtype = dtype
    # He-normal over fan-out, as torchvision and the reference TF models initialise convs.
    init = nnx.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
    self.kernel = nnx.Param(init(rngs.params(), (*self.kernel_size, in_features, out_features)))

  def __call__(self, x):
    pad = resolve_padding(self.padding, x.shape[1:4], self.kernel_size, self.strides, self.dilation)
    return conv3d(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.strides, pad,
                  self.dilation, self.impl)
