"""experiments/letters: the held-out family of moving letters (shapes, label = letter,
per-video nuisance draws, determinism, shards the pipeline reads, the bench's flag)."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from experiments import bench_quality as B  # pylint: disable=wrong-import-position
from experiments import letters as L  # pylint: disable=wrong-import-position


def test_glyphs_are_the_font_letters_at_the_asked_height():
  masks = [L.glyph(c, 24) for c in L.LETTERS]
  assert all(m.shape[0] == 24 and 0.0 <= m.min() and m.max() == 1.0 for m in masks)
  # the ink box fills the mask: some ink in the first and last rows and columns
  assert all(m[0].max() > 0 and m[-1].max() > 0 and m[:, 0].max() > 0 and m[:, -1].max() > 0
             for m in masks)
  flat = [np.resize(m, (24, 24)).ravel() for m in masks]
  # every pair of letters differs (in shape, not only in width)
  assert min(np.abs(a - b).mean() for i, a in enumerate(flat) for b in flat[i + 1:]) > 0.05
  # an A's apex is thinner than its legs: less ink in the top row than in the bottom one
  assert masks[0][0].sum() < masks[0][-1].sum()


def test_each_video_draws_its_label_s_letter_at_0_4_to_0_6_of_the_frame(monkeypatch):
  drawn, glyph = [], L.glyph
  monkeypatch.setattr(L, "glyph", lambda c, h: drawn.append((c, h)) or glyph(c, h))
  for label in range(8):
    video = L.render_video(0, label, label, "colour", num_frames=2, size=50)
    assert np.ptp(video[0].astype(int), axis=(0, 1)).max() > 40  # the letter shows
  assert [c for c, _ in drawn] == list(L.LETTERS)
  assert all(20 <= h <= 30 for _, h in drawn) and len({h for _, h in drawn}) > 1


def _static(video):
  """The frame's pixels the letter never covers: the median over time."""
  return np.median(video.astype(np.float64), axis=0)


@pytest.mark.parametrize("variant", L.VARIANTS)
def test_videos_are_deterministic_and_draw_their_nuisance_per_video(variant):
  a = L.render_video(0, 3, 3, variant, num_frames=12, size=48)
  assert a.shape == (12, 48, 48, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, L.render_video(0, 3, 3, variant, num_frames=12, size=48))
  b = L.render_video(0, 4, 3, variant, num_frames=12, size=48)  # same letter, next video
  assert np.abs(_static(a) - _static(b)).mean() > 5  # its own background
  grey = np.ptp(_static(a), axis=-1).mean() < 4  # channels equal up to the noise
  assert grey == (variant == "brightness")


def test_the_letter_moves_and_the_background_holds_still():
  video = L.render_video(1, 0, 0, "colour", num_frames=16, size=48).astype(np.float64)
  moved = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))
  assert (moved > 0.5).mean() > 0.5  # most frames differ by more than the noise
  # away from the letter a pixel keeps its level: the noise's std, a few grey levels
  still = np.abs(video - _static(video)).max(axis=-1) < 3 * 255 * L.NOISE
  assert still.mean() > 0.6


def test_shards_hold_the_videos_with_their_letter_as_label(tmp_path):
  from cvrl.data.sources import tfrecord  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  shards = L.write_split(str(tmp_path), "brightness", "eval", 10, num_frames=4, num_shards=2)
  assert L.write_split(str(tmp_path), "brightness", "eval", 10, num_frames=4,
                       num_shards=2) == shards  # written once
  for k, path in enumerate(shards):  # video i in shard i % 2, label i % 8
    for j, record in enumerate(tf.data.TFRecordDataset(path)):
      i = k + 2 * j
      frames, label, status = tfrecord.parse_sequence_example(
          record, "image/encoded", "clip/label/index", True)
      assert (int(label), int(status)) == (i % 8, tfrecord.OK) and len(frames) == 4
      video = L.render_video(L.EVAL_SEED_OFFSET, i, i % 8, "brightness", 4)
      decoded = tf.io.decode_jpeg(frames[2]).numpy().astype(int)
      assert np.abs(decoded - video[2]).mean() < 6  # JPEG at quality 90 on the noise
    assert j == 4


def test_the_bench_trains_on_a_family_through_the_tfrecord_source(tmp_path, monkeypatch):
  monkeypatch.setattr(L, "write_split", lambda d, v, split, n: [f"{d}/{v}-{split}-{n}"])
  c = B.recipe("cvrl", 10, 0, videos=32, family="letters_colour")
  assert c.data.source == "tfrecord" and c.data.num_classes == 8
  assert c.data.num_train_examples == 32
  assert c.data.train_paths.endswith("colour-train-32")
  assert c.data.eval_paths.endswith("colour-eval-256")
  assert B.recipe("cvrl", 10, 0, videos=32).data.source == "synthetic"
