"""Every conv lowering equals the native 3D convolution, in value and in gradient."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cvrl.models import conv

# (kernel, strides, dilation) of every convolution the R3D presets use.
R3D_CONVS = [
    ((1, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((1, 1, 1), (1, 2, 2), (1, 1, 1)),
    ((1, 1, 1), (2, 2, 2), (1, 1, 1)),
    ((3, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((1, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((1, 3, 3), (1, 2, 2), (1, 1, 1)),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((3, 3, 3), (1, 1, 1), (2, 1, 1)),
    ((3, 7, 7), (1, 2, 2), (1, 1, 1)),
    ((5, 7, 7), (2, 2, 2), (1, 1, 1)),
]
FAST_IMPLS = [i for i in conv.IMPLS if i not in ("auto", "native")]


def _case_id(case):
  (kernel, strides, dilation), padding, channels = case
  fmt = lambda v: "x".join(map(str, v))
  return f"k{fmt(kernel)}-s{fmt(strides)}-d{fmt(dilation)}-{padding}-c{channels}"


# 3 input channels take the width-folded kernel gradient, 16 (x kt) the per-tap one; 16
# input with 5 outputs shifts dy, 3 (x1) input shifts x.
# At stride 1 an odd kernel pads the same way in both styles, so one style is enough there.
CASES = [(conv_, mode, channels)
         for conv_, mode, channels in itertools.product(R3D_CONVS, ["same", "symmetric"], [3, 16])
         if mode == "same" or conv_[1] != (1, 1, 1)]


@pytest.fixture(params=["side_by_side", "batched"])
def arrangement(request, monkeypatch):
  """Runs a test with the frames side by side (long contractions split) or batched.

  Returns the list of side-by-side calls, so a test can check which way it ran.
  """
  calls = []
  original = conv._conv3d_fold_side_by_side

  def spy(*args, **kwargs):
    calls.append(args[0].shape)
    return original(*args, **kwargs)

  monkeypatch.setattr(conv, "_conv3d_fold_side_by_side", spy)
  if request.param == "side_by_side":
    monkeypatch.setattr(conv, "_SIDE_BY_SIDE_MAX_OUT", 10 ** 6)
    monkeypatch.setattr(conv, "_SPLIT_ROWS_MIN_RATIO", 0)  # tiny contractions split too
  else:
    monkeypatch.setattr(conv, "_SIDE_BY_SIDE_MAX_OUT", 0)
    monkeypatch.setattr(conv, "_SPLIT_ROWS_MIN_RATIO", 10 ** 6)
  return request.param, calls


def _inputs(kernel, channels, spatial=(6, 9, 10), out_channels=5, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, *spatial, channels)).astype(np.float32)
  k = rng.standard_normal((*kernel, channels, out_channels)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(k)


def _value_and_grads(impl, x, k, strides, padding, dilation, cotangent):
  def loss(x, k):
    return jnp.vdot(conv.conv3d(x, k, strides, padding, dilation, impl), cotangent)
  y = jax.jit(lambda x, k: conv.conv3d(x, k, strides, padding, dilation, impl))(x, k)
  gx, gk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)
  return np.asarray(y), np.asarray(gx), np.asarray(gk)


def _assert_close(actual, expected):
  scale = max(float(np.abs(expected).max()), 1.0)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_lowering_matches_native_value_and_gradient(impl, case, arrangement):
  (kernel, strides, dilation), mode, channels = case
  x, k = _inputs(kernel, channels)
  padding = conv.resolve_padding(mode, x.shape[1:4], kernel, strides, dilation)
  y_ref = conv.conv3d_native(x, k, strides, padding, dilation)
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(y_ref.shape), jnp.float32)
  ref = _value_and_grads("native", x, k, strides, padding, dilation, cotangent)
  got = _value_and_grads(impl, x, k, strides, padding, dilation, cotangent)
  assert got[0].shape == ref[0].shape
  for a, e in zip(got, ref):
    _assert_close(a, e)
  name, calls = arrangement
  side_by_side = kernel[1] * kernel[2] > 1 and any(padding[1])
  assert bool(calls) == (name == "side_by_side" and side_by_side)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_odd_sizes_and_same_padding_of_stride_two(impl):
  # Odd time/height/width make TF-SAME pad one more on the high side than the low side.
  kernel, strides, dilation = (3, 3, 3), (2, 2, 2), (1, 1, 1)
  x, k = _inputs(kernel, 4, spatial=(5, 7, 9))
  padding = conv.resolve_padding("same", x.shape[1:4], kernel, strides, dilation)
  assert padding == ((1, 1), (1, 1), (1, 1))
  y_ref = conv.conv3d_native(x, k, strides, padding, dilation)
  assert y_ref.shape == (2, 3, 4, 5, 5)
  cotangent = jnp.ones(y_ref.shape, jnp.float32)
  ref = _value_and_grads("native", x, k, strides, padding, dilation, cotangent)
  got = _value_and_grads(impl, x, k, strides, padding, dilation, cotangent)
  for a, e in zip(got, ref):
    _assert_close(a, e)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("frames,strides,dilation", [
    (1, (1, 1, 1), (1, 1, 1)),  # R3D-18's last stage at 8 frames: two taps see only padding
    (2, (2, 2, 2), (1, 1, 1)),
    (2, (1, 1, 1), (2, 1, 1)),  # TCLR's dilated last stage on a 2-step map
])
def test_taps_that_see_only_padding(impl, frames, strides, dilation):
  kernel = (3, 3, 3)
  x, k = _inputs(kernel, 12, spatial=(frames, 5, 5))
  padding = conv.resolve_padding("symmetric", x.shape[1:4], kernel, strides, dilation)
  y_ref = conv.conv3d_native(x, k, strides, padding, dilation)
  cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(y_ref.shape), jnp.float32)
  ref = _value_and_grads("native", x, k, strides, padding, dilation, cotangent)
  got = _value_and_grads(impl, x, k, strides, padding, dilation, cotangent)
  for a, e in zip(got, ref):
    _assert_close(a, e)
  if frames == 1:  # the outer temporal taps never touch the clip: zero gradient
    assert np.all(got[2][0] == 0) and np.all(got[2][2] == 0)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("kernel,strides,dilation", [
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((1, 3, 3), (1, 2, 2), (1, 1, 1)),
    ((3, 3, 3), (1, 1, 1), (2, 1, 1)),
])
def test_more_outputs_than_inputs(impl, kernel, strides, dilation, arrangement):
  # Wide outputs make the kernel gradient shift x rather than dy.
  x, k = _inputs(kernel, 32, spatial=(4, 6, 7), out_channels=100)
  padding = conv.resolve_padding("same", x.shape[1:4], kernel, strides, dilation)
  y_ref = conv.conv3d_native(x, k, strides, padding, dilation)
  cotangent = jnp.asarray(np.random.default_rng(4).standard_normal(y_ref.shape), jnp.float32)
  ref = _value_and_grads("native", x, k, strides, padding, dilation, cotangent)
  got = _value_and_grads(impl, x, k, strides, padding, dilation, cotangent)
  for a, e in zip(got, ref):
    _assert_close(a, e)


@pytest.mark.parametrize("rows,p,q,ratio", [
    (64, 6, 3, 0),  # split in two halves
    (64, 6, 3, 10 ** 6),  # one contraction
    (63, 6, 3, 0),  # odd: one contraction
    (40, 2, 9, 0),  # the wider operand first
])
def test_contract_rows_is_a_transposed_product(monkeypatch, rows, p, q, ratio):
  monkeypatch.setattr(conv, "_SPLIT_ROWS_MIN_RATIO", ratio)
  rng = np.random.default_rng(5)
  a, b = rng.standard_normal((rows, p)), rng.standard_normal((rows, q))
  got = np.asarray(conv._contract_rows(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
  assert got.shape == (p, q)
  np.testing.assert_allclose(got, a.T @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hpad,dilation,channels,out_channels", [
    ((1, 1), (1, 1), 6, 4),  # shifts dy
    ((2, 0), (2, 1), 3, 7),  # shifts x; asymmetric padding, dilated rows
    ((0, 2), (1, 2), 5, 5),
])
def test_kernel_grad_of_one_unpadded_wide_image(hpad, dilation, channels, out_channels):
  # The side-by-side row's kernel gradient takes its height padding by shifts.
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((1, 5, 13, channels)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, channels, out_channels)), jnp.float32)
  padding = (hpad, (0, 0))
  y, vjp = jax.vjp(lambda k_: conv._conv2d_native(x, k_, (1, 1), padding, dilation), k)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  got = conv._conv2d_kernel_grad(x, dy, (3, 3), (1, 1), padding, dilation)
  _assert_close(np.asarray(got), np.asarray(vjp(dy)[0]))


def test_native_matches_direct_numpy_convolution():
  # An independent check of the padding/stride/dilation semantics the lowerings match.
  kernel, strides, dilation = (3, 3, 3), (2, 1, 2), (1, 2, 1)
  x, k = _inputs(kernel, 2, spatial=(5, 6, 7), out_channels=3)
  padding = ((1, 0), (2, 2), (0, 1))
  y = np.asarray(conv.conv3d(x, k, strides, padding, dilation, "native"))
  xp = np.pad(np.asarray(x), ((0, 0), *padding, (0, 0)))
  kn = np.asarray(k)
  out = [(xp.shape[1 + a] - (kernel[a] - 1) * dilation[a] - 1) // strides[a] + 1 for a in range(3)]
  ref = np.zeros((2, *out, 3), np.float64)
  for t, h, w in itertools.product(*map(range, out)):
    for i, j, l in itertools.product(*map(range, kernel)):
      patch = xp[:, t * strides[0] + i * dilation[0], h * strides[1] + j * dilation[1],
                 w * strides[2] + l * dilation[2]]
      ref[:, t, h, w] += patch @ kn[i, j, l]
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


def test_auto_picks_fold_on_cpu_and_native_elsewhere(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert conv.resolve_impl("auto") == "fold"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert conv.resolve_impl("auto") == "native"
  assert conv.resolve_impl("native") == "native"
  with pytest.raises(ValueError):
    conv.resolve_impl("winograd")


def test_module_gives_same_output_whichever_impl():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 4, 8, 8, 3)), jnp.float32)
  outs = []
  for impl in conv.IMPLS:
    m = conv.Conv3D(3, 4, (3, 7, 7), strides=(1, 2, 2), padding="symmetric", impl=impl,
                    rngs=nnx.Rngs(0))
    assert m.kernel[...].shape == (3, 7, 7, 3, 4)
    outs.append(np.asarray(m(x)))
  assert outs[0].shape == (2, 4, 4, 4, 4)
  for o in outs[1:]:
    _assert_close(o, outs[0])
  with pytest.raises(ValueError):
    conv.Conv3D(3, 4, (1, 1, 1), impl="bogus", rngs=nnx.Rngs(0))
