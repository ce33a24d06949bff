"""3D convolution for the R3D family, with a lowering chosen per backend.

Parameters are always one kernel of shape (kt, kh, kw, in, out): whichever lowering runs,
checkpoints and numbers are the same. Padding is explicit (lo, hi) per axis so that
TF-style 'SAME' (the reference CVRL code) and PyTorch-style symmetric padding
(torchvision's R3D-18) are both exact.

Lowerings (`impl`):
  'native'  lax.conv_general_dilated in 3D: what TPU and GPU run, untouched.
  'fold'    the CPU form. XLA:CPU's 3D convolution is slow (the input gradient of a
            strided 3D convolution even falls back to a naive loop), while its 2D
            convolution and its matmul run near the machine's matmul rate. So the
            temporal taps are folded into channels (kt shifted copies of the clip,
            concatenated on the channel axis; taps that would read only padding are
            dropped) and the rest is a 2D convolution over (batch x time), or one
            matmul for a 1x1 spatial kernel. With fewer than 128 output channels the
            frames are laid side by side in one wide image first, which XLA:CPU spreads
            over all cores (`_conv3d_fold_side_by_side`). The kernel gradient, which
            XLA:CPU computes slowly as a convolution, is computed by matmuls over shifted
            rows instead (`_kernel_grad_by_shifts`); the input
            gradient stays a 2D convolution.
  'auto'    'fold' when the default backend is the CPU, else 'native'.

Measured on a quiet 2-core CPU with experiments/bench_step.py (each run one process;
float32 matmul 178 / 189 GFLOP/s in two runs): the R3D-18 train step (batch 8,
8x112x112) 24.7-24.8 s native -> 8.05-8.31 s fold, 17% -> 51-53% of the matmul rate;
the CVRL R3D-50 step (batch 2) 1.61-1.68 -> 0.77-0.84 s, 21% -> 41-43%. What is left is
mostly memory traffic at a few GB/s: the shifted copies of the kernel gradient, the
transposes into and out of the side-by-side row, the BatchNorm and elementwise passes.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Padding = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
IMPLS = ("auto", "native", "fold")
_DIMS = ("NDHWC", "DHWIO", "NDHWC")
_DIMS_2D = ("NHWC", "HWIO", "NHWC")
# Below this many (temporally folded) input channels, e.g. the stem's 3 colours x kt taps,
# the kernel gradient also folds the width taps into channels: per-tap matmuls that thin
# would run slowly.
_FOLD_WIDTH_MAX_CHANNELS = 32
# Below this many output channels, the 2D convolution runs on the frames laid side by side
# (see `_conv3d_fold_side_by_side`).
_SIDE_BY_SIDE_MAX_OUT = 128
# `_contract_rows` splits a contraction over M rows in two when M >= this * (P + Q).
_SPLIT_ROWS_MIN_RATIO = 8


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


def resolve_impl(impl: str) -> str:
  """Maps 'auto' to the lowering for the default backend."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    return "fold" if jax.default_backend() == "cpu" else "native"
  return impl


def _out_size(size: int, kernel: int, stride: int, pad: tuple[int, int], dilation: int) -> int:
  return (size + pad[0] + pad[1] - (kernel - 1) * dilation - 1) // stride + 1


def _pad_axes(x, pads: dict[int, tuple[int, int]]):
  """Zero padding on some axes; negative amounts crop (lax.pad semantics)."""
  if not any(lo or hi for lo, hi in pads.values()):
    return x
  cfg = [(*pads.get(a, (0, 0)), 0) for a in range(x.ndim)]
  return jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _taps(x, axis: int, kernel: int, stride: int, dilation: int, out: int):
  """The kernel's shifted (and strided) views of x along one axis, tap by tap."""
  return [jax.lax.slice_in_dim(x, i * dilation, i * dilation + (out - 1) * stride + 1, stride, axis)
          for i in range(kernel)]


def _concat_channels(arrays):
  """Concatenation on the channel (last) axis, as a stack and a reshape.

  XLA:CPU writes each operand of a concatenate out before copying it in; a stack fuses
  the operands' producers (the taps' slices, padding, transposes) into one pass: 133 ->
  96 ms for R3D-18's first-stage row of frames.
  """
  if len(arrays) == 1:
    return arrays[0]
  return jnp.stack(arrays, axis=-2).reshape(*arrays[0].shape[:-1], -1)


def conv3d_native(x, kernel, strides, padding: Padding, dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=tuple(strides), padding=tuple(padding),
      rhs_dilation=tuple(dilation), dimension_numbers=_DIMS)


# ---------------------------------------------------------------------------------------
# 'fold': temporal taps folded into channels, then a 2D convolution or a matmul.


def _contract_rows(a, b):
  """a^T b for a (M, P), b (M, Q) -> (P, Q): a contraction over the long axis M.

  Neither operand is transposed (a transposing copy of the wide operand cost as much as
  the product). The narrower operand goes on the left and M is split in two halves
  contracted as a batch and summed: XLA:CPU then runs near its matmul rate on this
  shape (R3D-18 stage 1, 215296 x 192 by 64: 57 -> 38 ms on 2 cores). Short contractions
  are not split: there the halves' products cost more than the sum saves.
  """
  m = a.shape[0]
  narrow, wide = (b, a) if b.shape[1] <= a.shape[1] else (a, b)
  if m % 2 == 0 and m >= _SPLIT_ROWS_MIN_RATIO * (a.shape[1] + b.shape[1]):
    out = jax.lax.dot_general(narrow.reshape(2, m // 2, -1), wide.reshape(2, m // 2, -1),
                              (((1,), (1,)), ((0,), (0,)))).sum(0)
  else:
    out = jax.lax.dot_general(narrow, wide, (((0,), (0,)), ((), ())))
  return out.T if narrow is b else out


@jax.custom_vjp
def _matmul(x, w):
  """(M, C) @ (C, O) with a kernel gradient computed as one well-shaped matmul."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(res, dy):
  x, w = res
  return dy @ w.T, _contract_rows(x, dy)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _conv2d_native(x, kernel, strides, padding, dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=padding, rhs_dilation=dilation,
      dimension_numbers=_DIMS_2D)


def _shifted_rows(a, shift: int, rows: int):
  """b[p] = a[p + shift] for p < rows, zeros where that is outside a."""
  return _pad_axes(a, {0: (-shift, rows - a.shape[0] + shift)})


def _kernel_grad_by_shifts(xp, dy, kh, kw, strides, dilation, top: int = 0):
  """dL/dkernel (kh, kw, C, O) of a 2D convolution of already padded xp, by matmuls.

  dk[j, l] = sum_{b,h,w} xp[b, h*sh + j*dh - top, w*sw + l*dw, :]^T dy[b, h, w, :].
  A strided convolution is split into stride phases (xp[:, a::sh, c::sw]), inside which
  every tap is a plain shift. Each phase and dy are laid out on a common (hq, wq) grid
  (dy zero-extended) and flattened over (b, h, w); a shift by (oh, ow) is then a shift by
  oh*wq + ow rows of the flat matrices, so each tap is one long contraction
  (`_contract_rows`). Rows where a shift runs past a row or an image meet zeros in dy and
  add nothing. The narrower of the two operands is the one shifted (copied) per tap.
  One image (b = 1) needs no common row count, as a shift past its last row meets the
  zero fill; its `top` padding rows (stride-1 rows only) may then be left out of xp and
  taken by the shifts, so that a large image (the side-by-side row of frames) is used
  as it is, never padded or copied.
  """
  (sh, sw), (dh, dw) = strides, dilation
  b, ho, wo, o = dy.shape
  c = xp.shape[-1]
  if top and (b != 1 or sh != 1):
    raise ValueError("top padding by shifts needs one image and stride-1 rows")
  hq = ho + (kh - 1) * dh // sh
  wq = wo + (kw - 1) * dw // sw

  def grid(a):
    rows = hq - a.shape[1] if b > 1 else 0
    return _pad_axes(a, {1: (0, rows), 2: (0, wq - a.shape[2])}).reshape(-1, a.shape[-1])

  dy_flat = grid(dy)
  phases = {}
  grads = []
  for j in range(kh):
    for l in range(kw):
      ph, oh = (j * dh) % sh, (j * dh) // sh
      pw, ow = (l * dw) % sw, (l * dw) // sw
      if (ph, pw) not in phases:
        phases[(ph, pw)] = grid(xp[:, ph::sh, pw::sw])
      x_flat = phases[(ph, pw)]
      shift = (oh - top) * wq + ow
      if o <= c:  # dk = x^T @ dy[p - shift]
        grads.append(_contract_rows(x_flat, _shifted_rows(dy_flat, -shift, x_flat.shape[0])))
      else:  # dk = x[p + shift]^T @ dy
        grads.append(_contract_rows(_shifted_rows(x_flat, shift, dy_flat.shape[0]), dy_flat))
  return jnp.stack(grads).reshape(kh, kw, c, o)


def _conv2d_kernel_grad(x, dy, ksize, strides, padding, dilation):
  """dL/dkernel of a 2D convolution (NHWC, HWIO), by matmuls (XLA:CPU's own is slow).

  With few input channels (the stem's colours) the width taps are first gathered into
  channels, so that each matmul contracts into a useful number of rows.
  """
  kh, kw = ksize
  c = x.shape[-1]
  top, hpad = 0, padding[0]
  if x.shape[0] == 1 and strides[0] == 1:  # one image: its height padding by shifts
    top, hpad = padding[0][0], (0, 0)
  xp = _pad_axes(x, {1: hpad, 2: padding[1]})
  if c < _FOLD_WIDTH_MAX_CHANNELS and kw > 1:
    xw = _concat_channels(_taps(xp, 2, kw, strides[1], dilation[1], dy.shape[2]))
    dk = _kernel_grad_by_shifts(xw, dy, kh, 1, (strides[0], 1), (dilation[0], 1), top)
    return dk.reshape(kh, kw, c, dy.shape[-1])
  return _kernel_grad_by_shifts(xp, dy, kh, kw, strides, dilation, top)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, kernel, strides, padding, dilation):
  return _conv2d_native(x, kernel, strides, padding, dilation)


def _conv2d_fwd(x, kernel, strides, padding, dilation):
  return _conv2d_native(x, kernel, strides, padding, dilation), (x, kernel)


def _conv2d_bwd(strides, padding, dilation, res, dy):
  x, kernel = res
  # The input gradient stays a 2D convolution, which XLA:CPU runs fast (strided too).
  _, input_vjp = jax.vjp(lambda x_: _conv2d_native(x_, kernel, strides, padding, dilation), x)
  (dx,) = input_vjp(dy)
  dk = _conv2d_kernel_grad(x, dy, kernel.shape[:2], strides, padding, dilation)
  return dx, dk


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _fold_time(xt, axis: int, kernel: int, stride: int, dilation: int, out: int, live):
  """The live temporal taps of xt (time on `axis`, padded), gathered into channels."""
  taps = _taps(xt, axis, kernel, stride, dilation, out)
  return _concat_channels([taps[i] for i in live])


def _conv3d_fold_side_by_side(x, kf, fold, t_out, strides, padding: Padding, dilation):
  """conv3d_fold's 2D convolution run on one wide image: the frames side by side.

  XLA:CPU's convolution library runs a batch of small images with few output channels
  on one core, but splits a wide image over all cores (R3D-18's first stage: 650 ->
  290 ms on 2 cores). The clip is transposed to (H, N, T, W, C) once, at its own
  channel count; padding in time and width and the temporal taps (`fold`, time on axis 2)
  then write the row of frames (1, H, N*T'*Wp, taps*C) directly. Each frame is padded in width to a multiple
  Wp of the stride, so one convolution without width padding computes every frame's
  outputs at stride-aligned positions; columns whose window straddles two frames are cut.
  """
  n, t_in, h, w, _ = x.shape
  kh, kw, ci, o = kf.shape
  (sh, sw), (dh, dw) = strides[1:], dilation[1:]
  (pl, pr) = padding[2]
  wo = _out_size(w, kw, sw, (pl, pr), dw)
  wp = w + pl + pr
  wp += (-wp) % sw
  xt = _pad_axes(jnp.transpose(x, (2, 0, 1, 3, 4)), {2: padding[0], 3: (pl, wp - w - pl)})
  row = fold(xt, 2).reshape(1, h, n * t_out * wp, ci)
  # Height padding stays with the convolution: XLA:CPU runs a convolution with no padding
  # at all 4x slower (and the row's kernel gradient takes it by shifts, see
  # `_kernel_grad_by_shifts`).
  y = _conv2d(row, kf, (sh, sw), (padding[1], (0, 0)), (dh, dw))
  ho, wt = y.shape[1], y.shape[2]
  y = _pad_axes(y, {2: (0, n * t_out * wp // sw - wt)})
  y = y.reshape(ho, n, t_out, wp // sw, o)[:, :, :, :wo]
  return jnp.transpose(y, (1, 2, 0, 3, 4))


def conv3d_fold(x, kernel, strides, padding: Padding, dilation):
  """The 3D convolution as a 2D convolution (or matmul) with temporal taps in channels."""
  kt, kh, kw, c, o = kernel.shape
  (st, sh, sw), (dt, dh, dw) = strides, dilation
  n = x.shape[0]
  t_in = x.shape[1]
  t_out = _out_size(t_in, kt, st, padding[0], dt)
  # Temporal taps that meet only padding (e.g. a 3-tap kernel on a 1-frame map) add
  # nothing and are skipped; their kernel slices then get a zero gradient, as in 3D.
  live = [i for i in range(kt)
          if any(0 <= t * st + i * dt - padding[0][0] < t_in for t in range(t_out))]
  fold = functools.partial(_fold_time, kernel=kt, stride=st, dilation=dt, out=t_out, live=live)
  ci = len(live) * c
  kernel = kernel if len(live) == kt else jnp.stack([kernel[i] for i in live])
  kf = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, ci, o)
  if (kh * kw > 1 and o < _SIDE_BY_SIDE_MAX_OUT and n * t_out > 1
      and any(padding[1])):  # see the height padding note in the side-by-side form
    return _conv3d_fold_side_by_side(x, kf, fold, t_out, strides, padding, dilation)
  xf = fold(_pad_axes(x, {1: padding[0]}), 1)  # (N, T', H, W, live*C)
  xf = xf.reshape(n * t_out, *xf.shape[2:])
  if kh == kw == 1:
    xs = _pad_axes(xf, {1: padding[1], 2: padding[2]})[:, ::sh, ::sw]
    y = _matmul(xs.reshape(-1, ci), kf.reshape(ci, o)).reshape(*xs.shape[:3], o)
  else:
    y = _conv2d(xf, kf, (sh, sw), tuple(padding[1:]), (dh, dw))
  return y.reshape(n, t_out, *y.shape[1:])


def conv3d(x, kernel, strides=(1, 1, 1), padding: Padding = ((0, 0),) * 3,
           dilation=(1, 1, 1), impl: str = "auto"):
  """x: (N, T, H, W, C); kernel: (kt, kh, kw, C, O). Returns (N, T', H', W', O)."""
  impl = resolve_impl(impl)
  strides, dilation = tuple(strides), tuple(dilation)
  padding = tuple(tuple(p) for p in padding)
  if impl == "fold":
    return conv3d_fold(x, kernel, strides, padding, dilation)
  return conv3d_native(x, kernel, strides, padding, dilation)


class Conv3D(nnx.Module):
  """Bias-free 3D convolution (BatchNorm always follows in R3D)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: Sequence[int],
               strides: Sequence[int] = (1, 1, 1), dilation: Sequence[int] = (1, 1, 1),
               padding: str = "same", impl: str = "auto", dtype=jnp.float32, *, rngs: nnx.Rngs):
    if impl not in IMPLS:
      raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
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
