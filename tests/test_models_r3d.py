import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cvrl.models import create, r3d
from cvrl.models.r3d import R3D


def n_params(module):
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def abstract(depth, width, preset):
  return nnx.eval_shape(lambda: R3D(depth, width, preset, rngs=nnx.Rngs(0)))


def out_shape(model, shape, **kw):
  graphdef, state = nnx.split(model)
  f = lambda s, x: nnx.merge(graphdef, s)(x, **kw)
  return jax.eval_shape(f, state, jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def conv_bn(kernel, cin, cout):
  """Parameters of a bias-free conv and its BN (scale, bias)."""
  return int(np.prod(kernel)) * cin * cout + 2 * cout


def bottleneck_r3d_params(blocks, temporal, stem=(5, 7, 7), width=1.0):
  """Independent count: conv kernels + BN (scale, bias) of a bottleneck R3D."""
  w = lambda c: int(round(c * width))
  total = conv_bn(stem, 3, w(64))
  cin = w(64)
  for stage, (n, t) in enumerate(zip(blocks, temporal)):
    mid = w(64 * 2 ** stage)
    for j in range(n):
      total += conv_bn((t, 1, 1), cin, mid) + conv_bn((1, 3, 3), mid, mid)
      total += conv_bn((1, 1, 1), mid, 4 * mid)
      if j == 0:
        total += conv_bn((1, 1, 1), cin, 4 * mid)
      cin = 4 * mid
  return total


def test_cvrl_r3d50_matches_paper_parameter_count_and_layout():
  model = abstract(50, 1.0, "cvrl")
  params = n_params(model)
  assert abs(params - 31.7e6) / 31.7e6 < 1e-3
  assert params == bottleneck_r3d_params((3, 4, 6, 3), (1, 1, 3, 3))
  assert out_shape(model, (1, 16, 224, 224, 3), return_map=True) == (1, 8, 7, 7, 2048)


@pytest.mark.parametrize("preset", ["r3d18", "tclr"])
def test_r3d18_matches_torchvision_parameter_count(preset):
  # torchvision r3d_18: 33,371,472 parameters, of which its fc (512 x 400 + 400) is 205,200.
  assert n_params(abstract(18, 1.0, preset)) == 33_371_472 - 205_200


@pytest.mark.parametrize("depth", [pytest.param(d, marks=pytest.mark.slow) if d > 50 else d
                                   for d in sorted(r3d.DEPTHS)])
def test_output_shapes_for_every_depth(depth):
  model = abstract(depth, 0.125, "cvrl")
  block_type, blocks = r3d.DEPTHS[depth]
  if block_type == "bottleneck":
    assert n_params(model) == bottleneck_r3d_params(blocks, (1, 1, 3, 3), width=0.125)
  channels = int(round(512 * 0.125)) * (4 if depth >= 50 else 1)
  assert model.num_features == channels
  if depth <= 101:  # 152 and 200 differ from 101 only in block counts; tracing them is slow
    assert out_shape(model, (2, 16, 64, 64, 3), return_map=True) == (2, 8, 2, 2, channels)


def test_r3d18_and_tclr_temporal_resolution():
  assert out_shape(abstract(18, 0.125, "r3d18"), (1, 16, 112, 112, 3),
                   return_map=True) == (1, 2, 7, 7, 64)
  # TCLR: dilation instead of stride in the last stage keeps 16 / 4 timesteps.
  assert out_shape(abstract(18, 0.125, "tclr"), (1, 16, 112, 112, 3),
                   return_map=True) == (1, 4, 7, 7, 64)


def test_width_multiplier_scales_channels():
  assert abstract(50, 2.0, "cvrl").num_features == 4096
  assert abstract(34, 0.5, "r3d18").num_features == 256


def test_bad_depth_and_preset_are_rejected():
  with pytest.raises(ValueError, match="18, 34, 50"):
    R3D(17, 1.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="preset"):
    R3D(18, 1.0, "nope", rngs=nnx.Rngs(0))


def apply(model, x, **kw):
  return nnx.jit(lambda m, x: m(x, **kw))(model, x)


def _video(seed, shape=(2, 8, 32, 32, 3)):
  return jax.random.uniform(jax.random.key(seed), shape)


@pytest.mark.slow
def test_forward_tiny_width():
  model = create(lambda: R3D(18, 0.125, "r3d18", rngs=nnx.Rngs(0)))
  y = apply(model, _video(0))
  assert y.shape == (2, 64)
  np.testing.assert_allclose(y, apply(model, _video(0), return_map=True).mean(axis=(1, 2, 3)),
                             rtol=1e-6)
  assert bool(jnp.all(jnp.isfinite(y)))
  # Global average pooling of a ReLU map: non-negative, and not all zero.
  assert bool(jnp.all(y >= 0)) and float(jnp.max(y)) > 0


@pytest.mark.slow
def test_bfloat16_compute_matches_float32():
  x = _video(1)
  f32 = create(lambda: R3D(18, 0.125, "cvrl", rngs=nnx.Rngs(0)))
  bf16 = create(lambda: R3D(18, 0.125, "cvrl", dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  # Parameters stay float32 in both.
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  a, b = apply(f32, x), apply(bf16, x)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(b, a, rtol=0.1, atol=0.05 * float(jnp.abs(a).max()))
  assert not np.array_equal(np.asarray(a), np.asarray(b))  # it really ran in bf16


@pytest.mark.slow
def test_remat_gives_same_outputs_and_gradients():
  x = _video(2)
  plain = create(lambda: R3D(18, 0.125, "r3d18", rngs=nnx.Rngs(0)))
  remat = create(lambda: R3D(18, 0.125, "r3d18", remat=True, rngs=nnx.Rngs(0)))

  def loss(model):
    return jnp.sum(model(x) ** 2)

  grad_fn = nnx.jit(nnx.value_and_grad(loss))
  la, ga = grad_fn(plain)
  lb, gb = grad_fn(remat)
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_batchnorm_train_vs_eval():
  model = create(lambda: R3D(18, 0.125, "r3d18", rngs=nnx.Rngs(0)))
  x = _video(3, (4, 8, 32, 32, 3))
  stats0 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

  # Train mode: normalised with batch statistics, so one example's output depends on the
  # rest of the batch, and the running statistics move.
  model.train()
  full = apply(model, x)
  half = apply(model, x[:2])
  assert not np.allclose(full[:2], half, atol=1e-5)
  stem_bn = model.stem.bn
  conv_out = model.stem.conv(x[:2])
  mean_before = np.asarray(stem_bn.mean[...])
  stem_bn(conv_out)
  batch_mean = np.asarray(jnp.mean(conv_out, axis=(0, 1, 2, 3)))
  np.testing.assert_allclose(stem_bn.mean[...], 0.9 * mean_before + 0.1 * batch_mean,
                             rtol=1e-4, atol=1e-6)

  # Eval mode: running statistics, each example independent of the batch, nothing moves.
  model.eval()
  stats1 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  full = apply(model, x)
  np.testing.assert_allclose(full[:2], apply(model, x[:2]), rtol=1e-5, atol=1e-6)
  stats2 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  for a, b in zip(jax.tree.leaves(stats1), jax.tree.leaves(stats2)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(stats0), jax.tree.leaves(stats1)))


def test_tf_same_padding_equals_lax_same():
  from cvrl.models.conv import conv3d_native, resolve_padding
  x = _video(4, (1, 9, 17, 16, 3))
  k = jax.random.normal(jax.random.key(5), (5, 7, 7, 3, 4))
  for strides in [(1, 1, 1), (2, 2, 2), (1, 2, 2)]:
    pad = resolve_padding("same", x.shape[1:4], (5, 7, 7), strides, (1, 1, 1))
    ref = jax.lax.conv_general_dilated(x, k, strides, "SAME",
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    np.testing.assert_allclose(conv3d_native(x, k, strides, pad, (1, 1, 1)), ref,
                               rtol=1e-5, atol=1e-5)


def test_dif_input_is_the_rgb_network_on_numpy_frame_differences():
  """input_mode='dif' on T + 1 frames == the same parameters in 'rgb' mode on the T
  differences x[t + 1] - x[t] (computed here in numpy); uint8 frames are scaled first."""
  from _downstream_toys import numpy_filled
  from cvrl import config_lib
  from cvrl.config_lib import default_model_config
  from cvrl.models import build_encoder, extra_frames
  cfg = default_model_config()
  cfg.update(depth=18, width=0.125, preset="r3d18", input="dif")
  dif = numpy_filled(lambda: build_encoder(cfg, nnx.Rngs(0)))
  assert dif.input_mode == "dif" and extra_frames(cfg) == 1
  rgb = nnx.eval_shape(lambda: R3D(18, 0.125, "r3d18", rngs=nnx.Rngs(1)))
  nnx.update(rgb, nnx.state(dif))  # no parameter of its own: the same state fits both
  dif.eval()
  rgb.eval()
  frames = np.random.default_rng(0).integers(0, 256, (2, 5, 16, 16, 3)).astype(np.uint8)
  x = frames.astype(np.float32) / 255.0
  differences = x[:, 1:] - x[:, :-1]
  # One compilation for every forward pass (the machine is slow at compiling R3Ds).
  got_float, got_uint8, want, rgb_frames = nnx.jit(
      lambda d, r: (d(x), d(frames), r(differences), r(x[:, 1:])))(dif, rgb)
  assert want.shape == (2, 64)
  np.testing.assert_allclose(got_float, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got_uint8, want, rtol=1e-4, atol=1e-6)  # no uint8 wrap-around
  assert not np.allclose(rgb_frames, want, atol=1e-4)  # frames themselves give other features
  with pytest.raises(ValueError, match="T \\+ 1 >= 2"):
    dif(x[:, :1])
  cfg.input = "flow"
  with pytest.raises(ValueError,
                     match=r"config.model.input must be one of \['rgb', 'dif', 'dif_std', "
                           r"'rgb_std', 'rgb_pc', 'dif_pc', 'res', 'res_std', 'res_pc', 'med', "
                           r"'med_std', 'med_pc'\], got 'flow'"):
    build_encoder(cfg, nnx.Rngs(0))
  stored = config_lib.pretrain_config()
  del stored.model["input"]  # a checkpoint's config from before the field: RGB, filled once
  old = config_lib.filled(stored.to_dict()).model
  assert extra_frames(old) == 0 and nnx.eval_shape(
      lambda: build_encoder(old, nnx.Rngs(0))).input_mode == "rgb"


@pytest.mark.slow
def test_slow_r50_matches_slowfast_model_zoo():
  # SlowFast's SLOW_8x8_R50 (Slow-only R50, 8x8): 32.45M parameters with its 400-class fc
  # (2048 x 400 + 400); 8 frames of 224 keep all 8 timesteps: 8x7x7x2048.
  model = abstract(50, 1.0, "slow")
  params = n_params(model)
  assert params == bottleneck_r3d_params((3, 4, 6, 3), (1, 1, 3, 3), stem=(1, 7, 7))
  assert round((params + 2048 * 400 + 400) / 1e6, 2) == 32.45
  assert out_shape(model, (1, 8, 224, 224, 3), return_map=True) == (1, 8, 7, 7, 2048)
  # No temporal stride anywhere (the 'cvrl' R3D-50 halves 16 frames to 8).
  assert out_shape(abstract(50, 0.125, "slow"), (1, 4, 64, 64, 3), return_map=True)[1] == 4


def basic_r3d_params_zero_shortcuts(blocks=(2, 2, 2, 2), stem=(7, 7, 7), width=1.0):
  """Independent count of a basic-block R3D whose shortcuts have no parameters (option A)."""
  w = lambda c: int(round(c * width))
  total, cin = conv_bn(stem, 3, w(64)), w(64)
  for stage, n in enumerate(blocks):
    c = w(64 * 2 ** stage)
    for _ in range(n):
      total += conv_bn((3, 3, 3), cin, c) + conv_bn((3, 3, 3), c, c)
      cin = c
  return total


def test_hara_resnet18_is_3drotnets_backbone():
  # 3DRotNet's code (LongLong-Jing/3DRotNet resnet.py, from Hara et al.'s 3D-ResNets):
  # resnet18(shortcut_type='A', sample_size=112, sample_duration=16), i.e. 7x7x7 stem,
  # 3x3x3 max-pool stride 2, no shortcut parameters; its last pool is (1, 4, 4).
  model = abstract(18, 1.0, "hara")
  assert n_params(model) == basic_r3d_params_zero_shortcuts() == 33_030_080
  assert out_shape(model, (1, 16, 112, 112, 3), return_map=True) == (1, 1, 4, 4, 512)
  # Time: stem stride 1, max-pool 2, stages 1/2/2/2, so 16x in all; at 16 frames any
  # stem stride collapses time to 1, so the stride shows at 32 and 64 frames.
  for frames in (32, 64):
    assert out_shape(model, (1, frames, 112, 112, 3), return_map=True)[1] == frames // 16
  # Hara's option B (projection shortcuts, 1x1x1 conv + BN) would add these parameters.
  assert basic_r3d_params_zero_shortcuts() < n_params(abstract(18, 1.0, "r3d18"))


def test_zero_padded_shortcut_is_the_strided_input_with_zero_channels():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 6, 3)).astype(np.float32)
  out = np.asarray(r3d.ZeroPadShortcut(3, 8, (2, 2, 2))(jnp.asarray(x)))
  # PyTorch's avg_pool3d(kernel_size=1, stride=2): positions 0, 2, 4 (ceil(n / 2) of them).
  np.testing.assert_array_equal(out[..., :3], x[:, 0::2, 0::2, 0::2])
  assert out.shape == (2, 3, 4, 3, 8) and not out[..., 3:].any()
  with pytest.raises(ValueError, match="cannot drop channels"):
    r3d.ZeroPadShortcut(8, 3, (1, 1, 1))


def test_extra_frames_are_the_frames_each_inputs_time_map_uses_up():
  """models.extra_frames (the clips' T + 1 downstream) and R3D's own check come from one
  rule: the frames the input's time map takes beyond those it gives the stem."""
  from cvrl.config_lib import default_model_config
  from cvrl.models import extra_frames, inputs
  from cvrl.models.r3d import INPUTS, _TIME_MAPS  # pylint: disable=protected-access
  clip = np.zeros((1, 3, 2, 2, 3), np.float32)
  cfg = default_model_config()
  for mode in INPUTS:
    used_up = clip.shape[1] - _TIME_MAPS[mode.partition("_")[0]](clip).shape[1]
    cfg.input = mode
    assert inputs.extra_frames(mode) == extra_frames(cfg) == used_up, mode
  assert sum(inputs.extra_frames(mode) for mode in INPUTS) == 3  # dif, dif_std, dif_pc
