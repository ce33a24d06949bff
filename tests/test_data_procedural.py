"""Procedural object + action videos: classes are whole-video properties, nuisances random."""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from cvrl.data import procedural as P
from cvrl.data.sources import synthetic


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
  hard = dict(colour=1.0, texture=1.0)
  videos = [P.render_video(0, i, 4, 8, T, size, hard) for i in range(4)]  # disc, spin
  # colour / background at full difficulty: first frames of one class differ a lot
  assert min(np.abs(videos[0][0].astype(float) - v[0]).mean() for v in videos[1:]) > 10
  # spin: the disc stays in place, so only pixels inside a disc-sized region change
  for v in videos:
    changed = _object_mask(v)
    ys, xs = np.nonzero(changed)
    assert changed.sum() < np.pi * (0.41 * size) ** 2  # radius <= 0.4 size
    assert np.ptp(ys) < 0.82 * size and np.ptp(xs) < 0.82 * size
  # translate: the changed pixels spread far wider than one object
  moving = P.render_video(0, 0, 0, 8, 40, size, hard)
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


def test_the_calibrated_default_is_a_white_object_with_a_black_pattern_on_plain_grey():
  v = P.render_video(0, 3, 4, 8, 16, 48)  # disc, spin
  obj = _object_mask(v)
  assert obj.any() and (~obj).any()
  np.testing.assert_array_equal(v[:, ~obj], 128)  # plain mid-grey background
  inside = v[:, obj].reshape(-1, 3)
  assert np.all(inside[:, 0] == inside[:, 1]) and np.all(inside[:, 1] == inside[:, 2])  # grey
  levels = set(np.unique(inside[:, 0]).tolist())
  assert {0, 255} <= levels <= {0, 128, 255}  # white, black (and background where it turned)


def _grey_levels(video, mask):
  grey = video.astype(float).mean(-1)[mask]
  return np.percentile(grey, 5), np.percentile(grey, 95)


@pytest.mark.parametrize("contrast", [1.0, 0.5, 0.2])
def test_contrast_sets_the_pattern_dark_shade_even_with_random_colours(contrast):
  # The pattern is the light colour against (1 - contrast) of it, whatever the colour:
  # a luminance pattern that colour jitter and grayscale keep.
  for i in range(3):
    inside = (P.render_video(0, i, 4, 8, 16, 48) != 128).any(-1)  # the same geometry
    video = P.render_video(0, i, 4, 8, 16, 48, dict(colour=1.0, contrast=contrast))
    lo, hi = _grey_levels(video, inside)
    np.testing.assert_allclose(lo, (1 - contrast) * hi, atol=2.0)


def test_each_setting_changes_only_its_own_nuisance():
  base = P.render_video(0, 2, 5, 8, 12, 40)
  obj = np.broadcast_to((base != 128).any(-1)[..., None], base.shape)  # object pixels
  textured = P.render_video(0, 2, 5, 8, 12, 40, dict(texture=1.0))
  np.testing.assert_array_equal(textured[obj], base[obj])  # the object is untouched
  assert np.abs(textured[~obj].astype(float) - 128).mean() > 5  # the background is not
  coloured = P.render_video(0, 2, 5, 8, 12, 40, dict(colour=1.0))
  # same geometry: the object covers the same pixels, in another colour
  np.testing.assert_array_equal((coloured != coloured[0, 0, 0]).any(-1), obj[..., 0])
  big = P.render_video(0, 2, 5, 8, 12, 40, dict(scale=(0.45, 0.45)))
  small = P.render_video(0, 2, 5, 8, 12, 40, dict(scale=(0.15, 0.15)))
  area = lambda v: (v != 128).any(-1).mean()
  assert area(big) > 4 * area(small)


def test_bad_difficulty_settings_name_the_field():
  for bad, field in [(dict(colour=1.5), "colour"), (dict(contrast=0.0), "contrast"),
                     (dict(texture=-0.1), "texture"), (dict(scale=(0.4, 0.3)), "scale"),
                     (dict(blur=1.0), "unknown")]:
    with pytest.raises(ValueError, match=field):
      P.check_difficulty(bad)
  assert P.check_difficulty(None) == {**P.DIFFICULTY, "scale": (0.3, 0.4)}


def test_settings_are_part_of_the_written_data(tmp_path):
  cfg = lambda **d: ml_collections.ConfigDict(dict(synthetic=dict(
      kind="objects", dir=str(tmp_path / "d"), num_train_videos=2, num_eval_videos=2,
      num_classes=2, num_frames=4, size=16, num_shards=1, seed=0, difficulty=d)))
  first = lambda paths: next(iter(tf.data.TFRecordDataset(paths[0]))).numpy()
  plain = first(synthetic.prepare(cfg(), "train"))
  textured = first(synthetic.prepare(cfg(texture=1.0), "train"))
  assert plain != textured  # same folder, other settings: rewritten
  assert first(synthetic.prepare(cfg(), "train")) == plain
  with pytest.raises(ValueError, match="kind 'objects' only"):
    synthetic.write_synthetic_shards(str(tmp_path / "m"), 2, 2, 4, 16, 1, 0,
                                     difficulty=dict(colour=1.0))


def test_the_default_folder_is_named_by_every_parameter(monkeypatch, tmp_path):
  # Two runs of different sizes side by side must not rewrite each other's shards.
  import tempfile  # pylint: disable=import-outside-toplevel
  from cvrl.data import config as data_config  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
  base = data_config.default_data_config().synthetic
  base.update(kind="objects", num_train_videos=4, num_eval_videos=2, num_frames=4, size=16,
              num_shards=1)
  paths = lambda c: synthetic.prepare(ml_collections.ConfigDict(dict(synthetic=c)), "train")
  first = paths(base)
  assert os.path.dirname(first[0]).startswith(str(tmp_path / "cvrl_synthetic_objects_"))
  assert paths(base.copy_and_resolve_references()) == first
  for change in (dict(num_train_videos=6), dict(size=20), dict(seed=1),
                 dict(difficulty=dict(texture=1.0))):
    other = base.copy_and_resolve_references()
    other.update(change)
    assert os.path.dirname(paths(other)[0]) != os.path.dirname(first[0]), change
  assert len(list(tf.data.TFRecordDataset(first))) == 4  # untouched by the others
