"""The photometric parameter vector: layout, ranges and frequencies of the host draw."""
import numpy as np
import tensorflow as tf

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
