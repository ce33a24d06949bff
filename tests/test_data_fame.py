"""FAME (Ding et al., CVPR 2022): the foreground prior against an independent numpy
computation, the mask, the merge, its draw and its place on device."""
import colorsys

import jax
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from cvrl.core.errors import ConfigError
from cvrl.data import augmentation as A
from cvrl.data import config as config_lib
from cvrl.data import device
from cvrl.data import fame
from cvrl.data import photometric as P


def _blur(m):
  taps = int(0.1 * m.shape[-1]) // 2 * 2 + 1
  r = taps // 2
  w = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * (taps / 3) ** 2))
  for axis in (0, 1):  # reflected borders without repeating the edge: scipy's 'mirror'
    m = ndimage.correlate1d(m, w / w.sum(), axis=axis, mode='mirror')
  return m


def _norm(m):
  return (m - m.min()) / (m.max() - m.min() + 1e-8)


def _prior(clip):
  """The paper's colour prior of one clip [T, H, W, 3], in float64 with colorsys."""
  _, height, width, _ = clip.shape
  motion = _norm(_blur(np.abs(np.diff(clip, axis=0)).sum(-1).mean(0))).ravel()
  h, s, v = np.array([colorsys.rgb_to_hsv(*p) for p in clip.mean(0).reshape(-1, 3)]).T
  q = lambda a: np.round(a * 9).astype(int)
  bins = q((s * np.cos(2 * np.pi * h) + 1) / 2) + 10 * q((s * np.sin(2 * np.pi * h) + 1) / 2) \
      + 100 * q(v)
  order = np.argsort(-motion)
  fg = np.bincount(bins[order[:int(0.5 * height * width)]], minlength=1000).astype(float)
  bg = np.bincount(bins[order[::-1][:int(0.1 * height * width)]], minlength=1000) + 1.0
  fg, bg = fg[bins] / fg.sum(), bg[bins] / bg.sum()
  return _norm(_blur((fg / (fg + bg)).reshape(height, width)))


def _scene(rng, n=3, frames=6, size=20):
  """Clips of a bright square moving right over a still random scene of coarse colours."""
  coarse = rng.uniform(0, 0.6, (n, 1, 4, 4, 3))
  x = np.repeat(np.repeat(coarse, size // 4, axis=2), size // 4, axis=3)
  x = np.repeat(x, frames, axis=1) + rng.normal(0, 0.01, (n, frames, size, size, 3))
  for t in range(frames):
    x[:, t, 6:12, 2 + 2 * t:8 + 2 * t] = [0.95, 0.9, 0.2]
  return np.clip(x, 0, 1).astype(np.float32)


def test_colour_prior_matches_the_papers_definition():
  x = _scene(np.random.default_rng(0))
  got = np.asarray(jax.jit(fame.colour_prior)(x))
  for i in range(len(x)):
    np.testing.assert_allclose(got[i], _prior(x[i].astype(np.float64)), atol=1e-4)


def test_foreground_is_the_top_share_and_covers_the_moving_object():
  x = _scene(np.random.default_rng(1))
  prior = np.asarray(fame.colour_prior(x)).reshape(len(x), -1)
  for beta in (0.3, 0.5):
    mask = np.asarray(fame.foreground(x, beta)).reshape(len(x), -1)
    assert set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask.sum(1), round(beta * 400))
    for p, m in zip(prior, mask):
      assert p[m == 1].min() >= p[m == 0].max()
  swept = np.zeros((20, 20), bool)
  swept[6:12, 2:18] = True
  mask = np.asarray(fame.foreground(x)).astype(bool)  # the authors' share, 0.5
  assert mask[:, swept].mean() >= 0.85  # most of the object's path is foreground
  motion = np.asarray(fame.motion_map(x))
  assert all(motion[i][mask[i]].mean() > 2.5 * motion[i][~mask[i]].mean() for i in range(len(x)))


def test_merge_pastes_flagged_foregrounds_over_the_previous_video():
  x = _scene(np.random.default_rng(2))[:, None].repeat(2, axis=1)  # [B=3, V=2, T, H, W, 3]
  x[:, 1] = x[:, 1, :, ::-1]  # the second view moves the other way
  flags = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
  out = np.asarray(fame.merge(x, flags))
  masks = np.asarray(fame.foreground(x.reshape(6, *x.shape[2:]))).reshape(3, 2, 1, 20, 20, 1)
  for b in range(3):
    for v in range(2):
      if not flags[b, v]:
        np.testing.assert_array_equal(out[b, v], x[b, v])
        continue
      m = masks[b, v]
      assert 0 < m.mean() < 1
      np.testing.assert_allclose(out[b, v], m * x[b, v] + (1 - m) * x[b - 1, v], atol=1e-7)
  first = np.asarray(fame.merge(x, flags, views=(0,)))  # view 1 cannot fire: not computed
  np.testing.assert_allclose(first[:, 0], out[:, 0], atol=1e-7)
  np.testing.assert_array_equal(first[:, 1], x[:, 1])
  cfg = config_lib.default_data_config()
  for probs, views in (((1.0, 0.0), (0,)), ((0.0, 0.5), (1, 2)), ((0.3,), (0, 1, 2))):
    cfg.augmentation.fame_probs = probs
    assert device.merged_views(cfg, 3) == views
  with pytest.raises(ValueError, match='at least 2 frames'):
    fame.merge(x[:, :, :1], flags)


def test_draw_per_view_and_the_other_draws_alone():
  n = 2000
  spec = A.AugmentSpec(fame_probs=(1.0, 0.0))
  draw = lambda s, view: tf.function(lambda seeds: tf.map_fn(
      lambda k: A.draw_photometric(tf.random.stateless_uniform([A.NUM_DRAWS], k), s, view, 11),
      seeds, fn_output_signature=tf.float32))(tf.stack([tf.range(n), tf.fill([n], 8)], 1)).numpy()
  query, key, default = draw(spec, 0), draw(spec, 1), draw(A.AugmentSpec(), 0)
  assert query[:, P.FAME].min() == 1.0 and key[:, P.FAME].max() == 0.0
  np.testing.assert_array_equal(query[:, :P.FAME], default[:, :P.FAME])
  half = draw(A.AugmentSpec(fame_probs=(0.5,)), 3)[:, P.FAME]
  assert abs(half.mean() - 0.5) <= 4.5 * np.sqrt(0.25 / n)
  assert A.AugmentSpec(color_jitter_prob=0.0, grayscale_prob=0.0, solarize_probs=(0.0,),
                       blur_probs=(0.0,), fame_probs=(0.0, 0.1)).has_photometric(2, 0)
  with pytest.raises(ConfigError, match='fame_beta must be in'):
    A.AugmentSpec(fame_beta=1.0)
  with pytest.raises(ConfigError, match="needs data.photometric='device'"):
    A.ClipAugmenter(spec, 32, photometric='host')


def test_finish_batch_merges_before_the_colour_ops_only_where_configured():
  x = _scene(np.random.default_rng(3))[:, None]
  params = np.zeros((3, 1, P.SIZE), np.float32)
  params[:, :, P.JITTER] = 1.0
  params[:, :, P.BRIGHTNESS] = 0.5  # brightness first: x -> 0.5 x
  params[:, :, P.ORDER] = [P.OP_BRIGHTNESS, P.OP_CONTRAST, P.OP_SATURATION, P.OP_HUE]
  params[:, :, P.CONTRAST] = params[:, :, P.SATURATION] = 1.0
  params[:, :, P.SIGMA] = 1.0
  params[[0, 2], :, P.FAME] = 1.0
  batch = {'video': np.round(x * 255).astype(np.uint8), 'photometric': params}
  unit = batch['video'].astype(np.float32) / 255
  cfg = config_lib.default_data_config()
  cfg.augmentation.fame_probs = (1.0,)
  merged = np.asarray(fame.merge(unit, params[..., P.FAME]))
  out = np.asarray(device.finish_batch(batch, cfg)['video'])
  np.testing.assert_allclose(out, np.asarray(device.apply_photometric(merged, params)), atol=1e-6)
  assert np.abs(out[0] - 0.5 * unit[0]).max() > 0.1  # merged, then darkened
  np.testing.assert_allclose(out[1], 0.5 * unit[1], atol=1e-6)  # not flagged: darkened only
  cfg.augmentation.fame_probs = (0.0,)  # off in the config: the flag is never read
  np.testing.assert_allclose(np.asarray(device.finish_batch(batch, cfg)['video']), 0.5 * unit,
                             atol=1e-6)
  assert not device.merging(config_lib.set_probe_augmentation(config_lib.default_data_config()))


def _still_scene_and_a_fast_square(rng, n=3, frames=7, size=24):
  """Clips of a square 4 px wide moving 3 px a frame (each pixel under it for at most 2 of
  the 7 frames) over a still scene of coarse colours, and the clean scenes."""
  coarse = rng.uniform(0, 0.6, (n, 1, 4, 4, 3))
  scene = np.repeat(np.repeat(coarse, size // 4, axis=2), size // 4, axis=3)
  x = np.repeat(scene, frames, axis=1) + rng.normal(0, 0.01, (n, frames, size, size, 3))
  for t in range(frames):
    x[:, t, 8:12, 1 + 3 * t:5 + 3 * t] = [0.95, 0.9, 0.2]
  return np.clip(x, 0, 1).astype(np.float32), scene[:, 0]


def test_median_foreground_pastes_what_moves_over_the_other_videos_still_scene():
  x, scenes = _still_scene_and_a_fast_square(np.random.default_rng(4))
  flags = np.array([[1.0], [0.0], [1.0]], np.float32)
  out = np.asarray(fame.merge(x[:, None], flags, foreground_kind='median', threshold=0.1))[:, 0]
  still = np.median(x.astype(np.float64), axis=1)  # independent: numpy's median, in float64
  for b in (0, 2):
    moving = np.abs(x[b] - still[b]).max(-1, keepdims=True) > 0.1
    np.testing.assert_allclose(out[b], np.where(moving, x[b], still[b - 1]), atol=1e-6)
    square = np.zeros(x.shape[1:4], bool)
    for t in range(x.shape[1]):
      square[t, 8:12, 1 + 3 * t:5 + 3 * t] = True
    np.testing.assert_array_equal(out[b][square], x[b][square])  # the square kept, every frame
    # the rest is the partner's scene, without the partner's own square
    assert np.abs(out[b][~square] - np.broadcast_to(scenes[b - 1], x.shape[1:])[~square]).max() < 0.05
  np.testing.assert_array_equal(out[1], x[1])  # not flagged
  # a moving camera (a fine texture shifted a pixel a frame): nearly every pixel moves, kept
  texture = np.random.default_rng(5).uniform(0, 1, (1, 24, 48, 3))
  pan = np.stack([texture[:, :, t:t + 24] for t in range(7)], 1).astype(np.float32)
  panned = np.asarray(fame.merge(np.concatenate([pan, x[:1]])[:, None], np.ones((2, 1), np.float32),
                                 foreground_kind='median'))[0, 0]
  assert np.mean(panned == pan[0]) > 0.9
  with pytest.raises(ValueError, match='choose from'):
    fame.merge(x[:, None], flags, foreground_kind='optical_flow')
  with pytest.raises(ConfigError, match='fame_foreground must be one of'):
    A.AugmentSpec(fame_foreground='flow')
  with pytest.raises(ConfigError, match='fame_threshold must be in'):
    A.AugmentSpec(fame_threshold=0.0)


def test_finish_batch_takes_the_configured_foreground():
  x, _ = _still_scene_and_a_fast_square(np.random.default_rng(6))
  params = np.zeros((3, 1, P.SIZE), np.float32)
  params[:, :, P.FAME] = 1.0
  batch = {'video': np.round(x[:, None] * 255).astype(np.uint8), 'photometric': params}
  unit = batch['video'].astype(np.float32) / 255
  cfg = config_lib.default_data_config()
  cfg.augmentation.fame_probs = (1.0,)
  cfg.augmentation.update(fame_foreground='median', fame_threshold=0.2)
  want = np.asarray(fame.merge(unit, params[..., P.FAME], foreground_kind='median', threshold=0.2))
  np.testing.assert_allclose(np.asarray(device.finish_batch(batch, cfg)['video']),
                             np.asarray(device.apply_photometric(want, params)), atol=1e-6)
  assert np.abs(want - np.asarray(fame.merge(unit, params[..., P.FAME]))).max() > 0.1
