"""Temporal samplers against their definitions (the papers the README cites)."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from cvrl.core.errors import ConfigError
from cvrl.data import sampling
from cvrl.data.augmentation import AugmentSpec


def _draw(fn, n):
  """Run fn(seed) for n seeds in graph mode; returns a numpy array [n, ...]."""
  ds = tf.data.Dataset.range(n).map(
      lambda i: fn(tf.stack([tf.constant(7, tf.int64), i])), num_parallel_calls=2)
  return next(iter(ds.batch(n))).numpy()


def _gap_cdf(k, m):
  return 2 * k / m - k ** 2 / m ** 2


def test_cvrl_gap_follows_decreasing_density():
  length, t, s, n = 100, 16, 2, 20000
  m = length - (t - 1) * s  # 70
  idx = _draw(lambda seed: sampling.cvrl_indices(length, t, s, seed), n)
  assert idx.shape == (n, 2, t)
  np.testing.assert_array_equal(np.diff(idx, axis=-1), s)
  starts = idx[:, :, 0]
  gaps = np.abs(starts[:, 1] - starts[:, 0])
  assert gaps.max() <= m - 1
  # D is integer: P(D <= d) = F(d + 1). KS statistic against the discrete CDF.
  d = np.arange(m)
  ecdf = np.searchsorted(np.sort(gaps), d, side='right') / n
  ks = np.abs(ecdf - _gap_cdf(d + 1, m)).max()
  crit = stats.kstwo.ppf(0.999, n)  # conservative for a discrete law
  assert ks < crit, (ks, crit)
  # Chi-square on the exact pmf.
  pmf = _gap_cdf(d + 1, m) - _gap_cdf(d, m)
  counts = np.bincount(gaps, minlength=m)
  assert stats.chisquare(counts, pmf * n).pvalue > 1e-3
  # The test has power: a uniform gap is rejected.
  uniform = np.random.default_rng(0).integers(0, m, n)
  ecdf_u = np.searchsorted(np.sort(uniform), d, side='right') / n
  assert np.abs(ecdf_u - _gap_cdf(d + 1, m)).max() > 5 * crit
  # start_low ~ U{0..M-D-1}: every clip fits in the video; order is swapped half the time.
  assert starts.min() >= 0 and idx.max() <= length - 1
  low = starts.min(axis=1)
  assert np.all(low <= m - gaps - 1)
  frac_swapped = np.mean(starts[:, 0] > starts[:, 1])
  frac_equal = np.mean(gaps == 0)
  assert abs(frac_swapped - (1 - frac_equal) / 2) < 0.02
  # Given the gap, the lower start is uniform on its range: normalised position ~ U(0,1).
  sel = gaps < m - 10
  pos = (low[sel] + np.random.default_rng(1).random(sel.sum())) / (m - gaps[sel])
  assert stats.kstest(pos, 'uniform').pvalue > 1e-3


@pytest.mark.parametrize('length', [20, 30])
def test_cvrl_short_video_draws_both_starts_uniformly_and_wraps(length):
  t, s, n = 16, 2, 6000
  idx = _draw(lambda seed: sampling.cvrl_indices(length, t, s, seed), n)
  starts = idx[:, :, 0]
  for c in range(2):
    counts = np.bincount(starts[:, c], minlength=length)
    assert len(counts) == length
    assert stats.chisquare(counts).pvalue > 1e-3
  # independent starts: the gap is not concentrated near 0 like the decreasing law
  assert abs(np.corrcoef(starts[:, 0], starts[:, 1])[0, 1]) < 0.05
  wrapped = sampling.fit_indices(tf.constant(idx), length, 'wrap').numpy()
  np.testing.assert_array_equal(wrapped, idx % length)
  clamped = sampling.fit_indices(tf.constant(idx), length, 'repeat_last').numpy()
  np.testing.assert_array_equal(clamped, np.minimum(idx, length - 1))


def test_cvrl_one_admissible_start():
  # L = 31: M = 1, the only gap is 0 and both clips are frames 0, 2, ..., 30.
  idx = _draw(lambda seed: sampling.cvrl_indices(31, 16, 2, seed), 50)
  np.testing.assert_array_equal(idx, np.broadcast_to(np.arange(16) * 2, idx.shape))


def test_rho_clips_independent_uniform_starts():
  length, rho, t, s, n = 60, 3, 8, 4, 6000
  m = length - (t - 1) * s  # 32
  idx = _draw(lambda seed: sampling.random_clip_indices(length, rho, t, s, seed), n)
  assert idx.shape == (n, rho, t)
  np.testing.assert_array_equal(idx - idx[..., :1], np.broadcast_to(np.arange(t) * s, idx.shape))
  starts = idx[..., 0]
  for c in range(rho):
    assert stats.chisquare(np.bincount(starts[:, c], minlength=m)).pvalue > 1e-3
  corr = np.corrcoef(starts.T)
  assert np.abs(corr[np.triu_indices(rho, 1)]).max() < 0.05


def test_tclr_dense_clips_tile_the_sparse_clip():
  length, t, n = 100, 16, 500
  idx = _draw(lambda seed: sampling.tclr_indices(length, t, seed), n)
  assert idx.shape == (n, 5, t)
  s = idx[:, 0, 0]
  assert s.min() >= 0 and s.max() <= length - 64
  assert len(np.unique(s)) > 20
  for i in range(n):
    np.testing.assert_array_equal(idx[i, 0], s[i] + 4 * np.arange(16))
    for j in range(4):
      np.testing.assert_array_equal(idx[i, 1 + j], s[i] + 16 * j + np.arange(16))
      assert idx[i, 1 + j, 0] == idx[i, 0, 4 * j]  # starts at sparse frame 4j
    np.testing.assert_array_equal(np.sort(idx[i, 1:].ravel()), s[i] + np.arange(64))


def test_linspace_eval_indices():
  idx = sampling.linspace_indices(100, 10, 32, 2).numpy()
  starts = np.floor(np.linspace(0, 100 - 64, 10)).astype(int)
  np.testing.assert_array_equal(idx, starts[:, None] + 2 * np.arange(32))
  middle = sampling.linspace_indices(100, 1, 32, 2).numpy()
  np.testing.assert_array_equal(middle, (100 - 64) // 2 + 2 * np.arange(32)[None])
  short = sampling.linspace_indices(40, 3, 32, 2).numpy()  # shorter than a clip: start 0
  np.testing.assert_array_equal(short, np.broadcast_to(2 * np.arange(32), (3, 32)))


def test_make_sampler_views_and_errors():
  mk = lambda spec, train=True: sampling.make_sampler(spec, num_frames=16, stride=2, train=train)
  assert mk({'name': 'cvrl'}).num_views == 2
  assert mk({'name': 'rho', 'num_clips': 4}).num_views == 4
  tclr = mk({'name': 'tclr'})
  assert tclr.num_views == 10 and tclr.footprint == 64
  rows = tclr.indices(tf.constant(200), tf.constant([1, 2], tf.int64)).numpy()
  np.testing.assert_array_equal(rows[:5], rows[5:])
  # CVRL's two clips for a DIF encoder: T + 1 frames each, placed by the same law over T + 1
  dif = mk({'name': 'cvrl', 'extra_frames': 1})
  assert (dif.num_views, dif.frames, dif.footprint) == (2, 17, 33)
  seed = tf.constant([3, 4], tf.int64)
  np.testing.assert_array_equal(dif.indices(tf.constant(90), seed).numpy(),
                                sampling.cvrl_indices(90, 17, 2, seed).numpy())
  single = mk({'name': 'single', 'extra_frames': 1})
  assert single.frames == 17 and single.footprint == 33
  mv = mk({'name': 'multiview', 'num_clips': 10, 'num_crops': 3}, train=False)
  assert mv.num_views == 30 and not mv.random
  assert mv.indices(tf.constant(100), None).shape == (10, 16)
  # A DIF encoder's T + 1 frames per view, placed by the same linspace law over T + 1.
  mv1 = mk({'name': 'multiview', 'num_clips': 4, 'num_crops': 3, 'extra_frames': 1}, train=False)
  assert (mv1.num_views, mv1.frames, mv1.footprint) == (12, 17, 34)
  idx = mv1.indices(tf.constant(100), None).numpy()
  starts = np.floor(np.linspace(0, 100 - 17 * 2, 4)).astype(int)
  np.testing.assert_array_equal(idx, starts[:, None] + 2 * np.arange(17))
  assert mk({'name': 'rho', 'num_clips': 2, 'num_frames': 8, 'stride': 8}).footprint == 57
  with pytest.raises(ValueError, match="the sampler must be one of .*, got 'nope'"):
    mk({'name': 'nope'})
  with pytest.raises(ValueError, match='unknown options'):
    mk({'name': 'cvrl', 'num_clip': 3})


def _steps(idx):
  """Each clip's stride from its indices [..., T] (asserting one stride a clip)."""
  step = np.diff(idx, axis=-1)
  np.testing.assert_array_equal(step, np.broadcast_to(step[..., :1], step.shape))
  return step[..., 0]


@pytest.mark.parametrize('name', ['cvrl', 'rho'])
def test_each_clip_draws_its_own_stride_uniformly(name):
  length, t, n, strides = 100, 8, 4000, (1, 3)
  if name == 'cvrl':
    fn = lambda seed: sampling.cvrl_indices(length, t, 2, seed, strides)
  else:
    fn = lambda seed: sampling.random_clip_indices(length, 2, t, 2, seed, strides)
  idx = _draw(fn, n)
  steps = _steps(idx)  # [n, 2]
  assert set(np.unique(steps)) == set(strides)
  assert idx.min() >= 0 and idx.max() <= length - 1  # placed by the largest stride: no wrap
  pairs = np.bincount((steps[:, 0] // 3) * 2 + steps[:, 1] // 3, minlength=4)
  assert stats.chisquare(pairs).pvalue > 1e-3  # the 4 pairs equally likely: independent draws
  # one stride to choose from draws what the plain stride draws
  plain = sampling.cvrl_indices if name == 'cvrl' else (
      lambda length, t, s, seed, *k: sampling.random_clip_indices(length, 2, t, s, seed, *k))
  np.testing.assert_array_equal(_draw(lambda seed: plain(length, t, 3, seed, (3,)), 50),
                                _draw(lambda seed: plain(length, t, 3, seed), 50))


def test_clip_strides_reach_the_samplers_that_take_them_and_only_in_training():
  mk = lambda spec, train=True: sampling.make_sampler(spec, num_frames=8, stride=2, train=train,
                                                      strides=(1, 4))
  assert mk({'name': 'cvrl'}).footprint == 7 * 4 + 1
  assert mk({'name': 'rho', 'num_clips': 3}).footprint == 29
  single = mk({'name': 'single', 'extra_frames': 1})
  assert single.footprint == 8 * 4 + 1
  seed = tf.constant([3, 4], tf.int64)
  steps = {int(_steps(single.indices(tf.constant(80), _fold(seed, k)).numpy())[0]) for k in range(40)}
  assert steps == {1, 4}
  evaluation = mk({'name': 'single'}, train=False)
  assert evaluation.footprint == 15 and set(np.diff(evaluation.indices(80, seed).numpy()[0])) == {2}
  with pytest.raises(ConfigError, match="clip_strides: the 'tclr' sampler"):
    mk({'name': 'tclr'})
  with pytest.raises(ConfigError, match='clip_strides must hold strides >= 1'):
    AugmentSpec(clip_strides=(0, 2))


def _fold(seed, k):
  return tf.random.experimental.stateless_fold_in(seed, k)
