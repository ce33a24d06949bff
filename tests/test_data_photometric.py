"""The photometric parameter vector: layout, ranges and frequencies of the host draw."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl.core.errors import ConfigError
from cvrl.data import augmentation as A
from cvrl.data import photometric as P


def _draws(spec, view, n=400, radius=11):
  draw = tf.function(lambda i: A.draw_photometric(
      tf.random.stateless_uniform([A.NUM_DRAWS], tf.stack([i, tf.constant(5, tf.int64)])),
      spec, view, radius))
  return np.stack([draw(tf.constant(i, tf.int64)).numpy() for i in range(n)])


def test_draw_layout_ranges_and_frequencies():
  spec = A.AugmentSpec()  # CVRL defaults
  view0, view1 = _draws(spec, 0), _draws(spec, 1)
  assert view0.shape == (400, P.SIZE) and view0.dtype == np.float32
  for d in (view0, view1):
    for i in (P.JITTER, P.GRAYSCALE, P.BLUR, P.SOLARIZE):
      assert set(np.unique(d[:, i])) <= {0.0, 1.0}
    assert 0.2 <= d[:, P.BRIGHTNESS].min() and d[:, P.BRIGHTNESS].max() <= 1.8
    assert 0.2 <= d[:, P.CONTRAST].min() and d[:, P.CONTRAST].max() <= 1.8
    assert 0.2 <= d[:, P.SATURATION].min() and d[:, P.SATURATION].max() <= 1.8
    assert -0.2 <= d[:, P.HUE].min() and d[:, P.HUE].max() <= 0.2
    assert 0.1 <= d[:, P.SIGMA].min() and d[:, P.SIGMA].max() <= 2.0
    np.testing.assert_array_equal(np.sort(d[:, P.ORDER], axis=1), np.tile(np.arange(4.0), (400, 1)))
    assert 0.72 <= d[:, P.JITTER].mean() <= 0.88
    assert 0.13 <= d[:, P.GRAYSCALE].mean() <= 0.27
    assert np.std(d[:, P.BRIGHTNESS]) > 0.4  # uniform on a width-1.6 interval: sd 0.46
  # per-view probabilities: clip 1 always blurred, never solarized; clip 2 blur 0.1, solarize 0.2
  assert view0[:, P.BLUR].mean() == 1.0 and view0[:, P.SOLARIZE].mean() == 0.0
  assert 0.05 <= view1[:, P.BLUR].mean() <= 0.15 and 0.14 <= view1[:, P.SOLARIZE].mean() <= 0.26
  # every one of the 24 orders shows up
  orders = {tuple(o) for o in view0[:, P.ORDER].astype(int)}
  assert len(orders) == 24


def test_fixed_order_zero_strength_and_no_kernel():
  spec = A.AugmentSpec(color_random_order=False, brightness=0.0, hue=0.0, blur_probs=(1.0,))
  d = _draws(spec, 0, n=50, radius=0)
  np.testing.assert_array_equal(d[:, P.ORDER], np.tile(np.arange(4.0), (50, 1)))
  np.testing.assert_array_equal(d[:, P.BRIGHTNESS], 1.0)  # neutral factors when a strength is 0
  np.testing.assert_array_equal(d[:, P.HUE], 0.0)
  assert d[:, P.BLUR].max() == 0.0  # a crop too small for a kernel is never blurred
  assert P.blur_radius(224) == 11 and P.blur_radius(32) == 1 and P.blur_radius(9) == 0


def test_has_photometric_follows_the_probabilities():
  from cvrl.data import config
  cfg = config.default_data_config()
  assert A.AugmentSpec.from_config(cfg.augmentation).has_photometric(2, 11)
  config.set_probe_augmentation(cfg)
  probe = A.AugmentSpec.from_config(cfg.augmentation)
  assert not probe.has_photometric(1, 11)
  only_blur = A.AugmentSpec(color_jitter_prob=0.0, grayscale_prob=0.0, solarize_probs=(0.0,),
                            blur_probs=(0.5,))
  assert only_blur.has_photometric(1, 11) and not only_blur.has_photometric(1, 0)


TCLR = A.AugmentSpec(gray_gamma_prob=0.175, gamma_prob=0.75, gamma_range=(0.75, 1.25),
                     channel_drop_prob=0.125, erase_prob=0.5, erase_size=19 / 112)


def _many(spec, n, out_size=112, view=0):
  """n parameter vectors (seeds [i, 8]) of `view` in one graph."""
  draw = tf.function(lambda seeds: tf.map_fn(
      lambda s: A.draw_photometric(tf.random.stateless_uniform([A.NUM_DRAWS], s), spec, view,
                                   11, out_size), seeds, fn_output_signature=tf.float32))
  seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(8, tf.int64))], axis=1)
  return draw(seeds).numpy()


def _binomial(hits, p, sigmas=4.5):
  n = len(hits)
  assert abs(np.mean(hits) - p) <= sigmas * np.sqrt(p * (1 - p) / n), (np.mean(hits), p)


def test_tclr_extras_frequencies_ranges_and_exclusive_arms():
  """TCLR's reference: of one uniform r, gray (then gamma w.p. 0.75) on 0.175 of the clips,
  channel drop on 0.125, never both; erasing on 0.5; gamma U(0.75, 1.25); erase box corner
  uniform over the 112 x 112 crop, sides uniform over the integers [9, 19)."""
  n = 4000
  d = _many(TCLR, n)
  assert d.shape == (n, P.SIZE)
  gray, gamma, drop, erase = (d[:, i] for i in (P.GRAY_GAMMA, P.GAMMA, P.CHANNEL_DROP, P.ERASE))
  for flags in (gray, gamma, drop, erase):
    assert set(np.unique(flags)) == {0.0, 1.0}
  _binomial(gray, 0.175)
  _binomial(gamma, 0.175 * 0.75)
  _binomial(drop, 0.125)
  _binomial(erase, 0.5)
  assert not np.any(gamma > gray)  # gamma only on the grayscale arm
  assert not np.any((gray > 0) & (drop > 0))  # the two arms of one draw
  _binomial(gamma[gray > 0], 0.75)
  # gamma exponent: U(0.75, 1.25), filling the range
  g = d[gamma > 0, P.GAMMA_EXP]
  assert 0.75 <= g.min() < 0.76 and 1.24 < g.max() <= 1.25
  np.testing.assert_allclose(np.std(g), 0.5 / np.sqrt(12), rtol=0.1)
  # channel: uniform over {0, 1, 2}
  channel = d[:, P.CHANNEL]
  assert set(np.unique(channel)) == {0.0, 1.0, 2.0}
  for c in range(3):
    _binomial(channel == c, 1 / 3)
  _binomial(channel[drop > 0] == 0, 1 / 3)
  # erase box: integers; corner anywhere in [0, 112), sides every integer in [9, 19)
  box = d[:, P.ERASE_BOX]
  np.testing.assert_array_equal(box, np.round(box))
  assert set(np.unique(box[:, 0])) == set(range(112)) == set(np.unique(box[:, 1]))
  assert set(np.unique(box[:, 2])) == set(range(9, 19)) == set(np.unique(box[:, 3]))
  for side in (2, 3):
    for v in (9, 18):
      _binomial(box[:, side] == v, 1 / 10)
  assert P.erase_extent(19 / 112, 112) == 19 and P.erase_extent(19 / 112, 224) == 38


def test_tclr_extras_leave_the_other_draws_alone():
  """Off by default; on, they change no earlier entry (new draws come after the old 14)."""
  seeds = [tf.constant([i, 3], tf.int64) for i in range(20)]
  for s in seeds:  # a longer stateless draw starts with the shorter one's numbers
    np.testing.assert_array_equal(tf.random.stateless_uniform([A.NUM_DRAWS], s).numpy()[:14],
                                  tf.random.stateless_uniform([14], s).numpy())
  default, tclr = _many(A.AugmentSpec(), 200), _many(TCLR, 200)
  np.testing.assert_array_equal(tclr[:, :P.GRAY_GAMMA], default[:, :P.GRAY_GAMMA])
  for i in (P.GRAY_GAMMA, P.GAMMA, P.CHANNEL_DROP, P.ERASE):
    assert default[:, i].max() == 0.0
  # drawn from their own uniforms: independent of grayscale_prob's and of each other
  both = _many(A.AugmentSpec(grayscale_prob=0.5, gray_gamma_prob=0.5, erase_prob=0.5,
                             solarize_probs=(0.5,)), 3000)
  for i, j in ((P.GRAYSCALE, P.GRAY_GAMMA), (P.GRAY_GAMMA, P.ERASE), (P.SOLARIZE, P.ERASE)):
    _binomial((both[:, i] > 0) & (both[:, j] > 0), 0.25)
  assert not A.AugmentSpec(color_jitter_prob=0.0, grayscale_prob=0.0, solarize_probs=(0.0,),
                           blur_probs=(0.0,)).has_photometric(2, 11)
  for extra in ({'gray_gamma_prob': 0.1}, {'channel_drop_prob': 0.1}, {'erase_prob': 0.1}):
    assert A.AugmentSpec(color_jitter_prob=0.0, grayscale_prob=0.0, solarize_probs=(0.0,),
                         blur_probs=(0.0,), **extra).has_photometric(1, 0), extra
  with pytest.raises(ValueError, match='output size'):
    A.draw_photometric(tf.zeros([A.NUM_DRAWS]), TCLR, 0, 11)
  with pytest.raises(ValueError, match='at most 1'):
    A.AugmentSpec(gray_gamma_prob=0.6, channel_drop_prob=0.5)


def test_background_erase_draw_per_view_ranges_and_the_other_draws_alone():
  """Wang et al. 2021 (their code): the query view always, the key never; weight U(0, 0.3);
  the static frame's position uniform in [0, 1); appended after every earlier entry."""
  n = 3000
  spec = A.AugmentSpec(background_erase_probs=(1.0, 0.0))
  query, key = _many(spec, n, view=0), _many(spec, n, view=1)
  assert query[:, P.BG_ERASE].min() == 1.0 and key[:, P.BG_ERASE].max() == 0.0
  w = query[:, P.BG_WEIGHT]
  assert 0.0 <= w.min() < 0.003 and 0.297 < w.max() < 0.3
  np.testing.assert_allclose([w.mean(), w.std()], [0.15, 0.3 / np.sqrt(12)], rtol=0.05)
  pos = query[:, P.BG_FRAME]
  assert 0.0 <= pos.min() and pos.max() < 1.0
  for t in range(8):  # every frame of an 8-frame clip equally likely
    _binomial(np.floor(pos * 8) == t, 1 / 8)
  np.testing.assert_array_equal(key[:, P.BG_WEIGHT:], query[:, P.BG_WEIGHT:])  # one draw per clip
  default = _many(A.AugmentSpec(), n)
  np.testing.assert_array_equal(query[:, :P.BG_ERASE], default[:, :P.BG_ERASE])
  assert default[:, P.BG_ERASE].max() == 0.0
  half = _many(A.AugmentSpec(background_erase_probs=(0.5,), background_erase_max=0.6), n, view=3)
  _binomial(half[:, P.BG_ERASE], 0.5)
  assert 0.59 < half[:, P.BG_WEIGHT].max() <= 0.6
  assert A.AugmentSpec(color_jitter_prob=0.0, grayscale_prob=0.0, solarize_probs=(0.0,),
                       blur_probs=(0.0,), background_erase_probs=(0.0, 0.1)).has_photometric(2, 0)
  with pytest.raises(ConfigError, match='background_erase_max must be in'):
    A.AugmentSpec(background_erase_max=1.5)
