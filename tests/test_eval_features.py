"""Running models over sharded multi-view splits: every video once, views reduced on device."""
import jax
import numpy as np
import pytest
from flax import nnx

from _downstream_toys import encoder_numpy, tiny_encoder, video_batches
from cvrl.core import parallel
from cvrl.models.heads import EncoderHead, LinearClassifier
from cvrl.eval import features as F
from cvrl.eval import scores


def test_awkward_count_on_8_devices_counts_every_video_once(run_mesh):
  assert jax.device_count() == 8
  enc = tiny_encoder()
  head = LinearClassifier(8, 4, normalize=False, rngs=nnx.Rngs(1))
  model = EncoderHead(enc, head)
  batches, video, label = video_batches(13, 8, views=6, pad=True)  # 8 + 5 real, 3 padding
  out = F.run_split(F.ViewRunner(model, "softmax_mean"), batches)
  assert len(out) == 13
  np.testing.assert_array_equal(np.sort(out.index), np.arange(13))
  # Independent numpy: inference-mode encoder, dense head, softmax per view, mean over views.
  w, b = np.asarray(head.dense.kernel[...]), np.asarray(head.dense.bias[...])
  logits = np.stack([encoder_numpy(enc, video[:, v]) @ w + b for v in range(6)], axis=1)
  want = scores.average_views(logits)
  np.testing.assert_allclose(out.values, want[out.index], rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(out.labels, label[out.index])
  got, _ = scores.classification_metrics(out.values, out.labels, 4)
  assert got["top1"] == pytest.approx(np.mean(want.argmax(1) == label))
  assert got["num_videos"] == 13


def test_feature_mean_and_module_state_untouched(run_mesh):
  enc = tiny_encoder(seed=3)
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(enc)))
  batches, video, _ = video_batches(16, 8, views=3)
  out = F.run_split(F.ViewRunner(enc, "mean"), batches)
  want = np.mean([encoder_numpy(enc, video[:, v]) for v in range(3)], axis=0)
  np.testing.assert_allclose(out.values, want, rtol=1e-4, atol=1e-6)
  after = nnx.to_pure_dict(nnx.state(enc))
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_batch_must_split_over_devices():
  with pytest.raises(ValueError, match="multiple of the device count"):
    parallel.local_batch_size(12, parallel.make_mesh())
  with pytest.raises(ValueError, match="reduce"):
    F.ViewRunner(tiny_encoder(), "max")


def test_uint8_video_is_finished_on_device(run_mesh):
  """The pipeline ships uint8 clips; the runner scales them on device (data.device)."""
  enc = tiny_encoder(seed=5)
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, size=(8, 2, 2, 4, 4, 3), dtype=np.uint8)
  runner = F.ViewRunner(enc, "mean")
  got = np.asarray(runner({"video": video}))
  want = np.mean([encoder_numpy(enc, video[:, v] / 255.0) for v in range(2)], axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
