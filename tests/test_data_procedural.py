"""Procedural object + action videos: classes are whole-video properties, nuisances random."""
import os

import numpy as np
import pytest
import tensorflow as tf

from cvrl.data import procedural as P
from cvrl.data import synthetic


def test_class_factors_cover_objects_then_actions_and_reject_bad_counts():
  f = P.class_factors(8)
  assert f[:4] == [(o, "translate") for o in P.OBJECTS]
  assert f[4:] == [(o, "spin") for o in P.OBJECTS]
  assert len(set(P.class_factors(16))) == 16
  assert P.class_factors(3) == [("disc", "translate"), ("square", "translate"),
                                ("triangle", "translate")]
  for bad in (0, 17):
    with pytest.raises(ValueError, match="1 to 16 classes"):
      P.class_factors(bad)


def test_render_is_deterministic_and_seeded():
  a = P.render_video(0, 5, 2, 8, 12, 32)
  assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, P.render_video(0, 5, 2, 8, 12, 32))
  assert np.abs(a.astype(float) - P.render_video(1, 5, 2, 8, 12, 32)).mean() > 5


def _object_mask(video):
  """Pixels that change between some frames: where the object has been."""
  return np.abs(np.diff(video.astype(float), axis=0)).max(-1).max(0) > 30


def test_shape_masks_have_the_expected_areas():
  g = np.linspace(-1.5, 1.5, 601)
  u, v = np.meshgrid(g, g)
  cell = (g[1] - g[0]) ** 2
  area = {o: P.shape_mask(o, u, v).sum() * cell for o in P.OBJECTS}
  np.testing.assert_allclose(area["disc"], np.pi, rtol=0.01)
  np.testing.assert_allclose(area["square"], 1.6 ** 2, rtol=0.01)
  np.testing.assert_allclose(area["triangle"], 3 * np.sqrt(3) / 4, rtol=0.01)
  np.testing.assert_allclose(area["cross"], 2 * 0.66 * 2 - 0.66 ** 2, rtol=0.01)


def test_actions_move_as_named():
  rng = np.random.default_rng(0)
  T, size = 40, 48
  pos, ang = P.trajectory("translate", rng, T, size)
  step = np.diff(pos, axis=0)
  np.testing.assert_allclose(step, np.broadcast_to(step[0], step.shape))  # constant velocity
  assert np.linalg.norm(step[0]) > 0.5 and np.ptp(ang) == 0
  pos, ang = P.trajectory("spin", rng, T, size)
  assert np.ptp(pos, axis=0).max() == 0 and np.ptp(ang) > 3  # stays put, turns
  pos, ang = P.trajectory("oscillate", rng, T, size)
  d = pos - pos.mean(0)
  # back and forth along one line: the displacements have rank 1 and change sign
  assert np.linalg.svd(d, compute_uv=False)[1] < 1e-6 * size
  assert np.ptp(ang) == 0 and np.linalg.norm(d, axis=1).max() > 0.1 * size
  pos, ang = P.trajectory("orbit", rng, T, size)
  # on one circle (least-squares fit of y^2 + x^2 + a y + b x + c = 0), radius > 0.1 size
  a = np.c_[pos, np.ones(T)]
  coef = np.linalg.lstsq(a, -(pos ** 2).sum(1), rcond=None)[0]
  centre = -coef[:2] / 2
  r = np.linalg.norm(pos - centre, axis=1)
  np.testing.assert_allclose(r, r[0], rtol=1e-6)
  assert r[0] > 0.1 * size and np.ptp(ang) == 0


def test_nuisances_vary_within_a_class_and_the_action_shows_in_the_pixels():
  T, size = 16, 48
  videos = [P.render_video(0, i, 4, 8, T, size) for i in range(4)]  # disc, spin
  # colour / background: first frames of one class differ a lot
  assert min(np.abs(videos[0][0].astype(float) - v[0]).mean() for v in videos[1:]) > 10
  # spin: the disc stays in place, so only pixels inside a disc-sized region change
  for v in videos:
    changed = _object_mask(v)
    ys, xs = np.nonzero(changed)
    assert changed.sum() < np.pi * (0.31 * size) ** 2  # radius <= 0.3 size
    assert np.ptp(ys) < 0.62 * size and np.ptp(xs) < 0.62 * size
  # translate: the changed pixels spread far wider than one object
  moving = P.render_video(0, 0, 0, 8, T, size)
  assert _object_mask(moving).sum() > 1.5 * max(_object_mask(v).sum() for v in videos)


def test_objects_kind_writes_labelled_shards_through_the_synthetic_writer(tmp_path, monkeypatch):
  d = str(tmp_path / "obj")
  paths = synthetic.write_synthetic_shards(d, num_videos=4, num_classes=4, num_frames=6,
                                           size=24, num_shards=2, seed=0, kind="objects")
  texts, labels = [], []
  for p in paths:
    for rec in tf.data.TFRecordDataset(p):
      ex = tf.train.SequenceExample.FromString(rec.numpy())
      labels.append(ex.context.feature["clip/label/index"].int64_list.value[0])
      texts.append(ex.context.feature["clip/label/text"].bytes_list.value[0].decode())
      assert len(ex.feature_lists.feature_list["image/encoded"].feature) == 6
  assert sorted(labels) == [0, 1, 2, 3]
  assert sorted(texts) == sorted(f"{o}_translate" for o in P.OBJECTS)
  # the same folder asked for the motion kind is rewritten, not mistaken for complete
  mtimes = [os.path.getmtime(p) for p in paths]
  synthetic.write_synthetic_shards(d, 4, 4, 6, 24, 2, 0, kind="objects")
  assert mtimes == [os.path.getmtime(p) for p in paths]
  monkeypatch.setattr(P, "VERSION", P.VERSION + 1)  # changed videos: shards rewritten
  synthetic.write_synthetic_shards(d, 4, 4, 6, 24, 2, 0, kind="objects")
  assert mtimes != [os.path.getmtime(p) for p in paths]
  synthetic.write_synthetic_shards(d, 4, 4, 6, 24, 2, 0)
  rec = next(iter(tf.data.TFRecordDataset(paths[0])))
  ex = tf.train.SequenceExample.FromString(rec.numpy())
  assert ex.context.feature["clip/label/text"].bytes_list.value[0].decode() == "motion_0"
  with pytest.raises(ValueError, match="kind must be one of"):
    synthetic.write_synthetic_shards(d, 4, 4, 6, 24, 2, 0, kind="shapes")
