"""Linear probe: frozen backbone, feature-cache path == end-to-end path, schedule, the probe
of a pretraining checkpoint (both paths run on the training engine)."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from _downstream_toys import TinyEncoder, clip_stream, encoder_numpy, tiny_encoder, video_batches
from cvrl.models.heads import EncoderHead
from cvrl import config_lib
from cvrl.core import parallel
from cvrl.engine import optim
from cvrl.engine import tasks
from cvrl.eval import features as F
from cvrl.jobs import probe


def small_config(**probe_overrides):
  c = config_lib.probe_config()
  c.random_init = True
  c.batch_size = 8
  c.total_steps = 6
  c.total_epochs = None
  c.warmup_steps = 2
  c.warmup_epochs = None
  c.optim.base_lr = 0.8
  c.optim.base_batch_size = 8
  c.optim.weight_decay = 1e-3
  c.log.update(every_steps=1000, tensorboard=False)
  c.checkpoint.async_save = False
  c.probe.update(probe_overrides)
  return c


def tiny_arch(features=8):
  return lambda: TinyEncoder(features, rngs=nnx.Rngs(0))


def train(enc, config, workdir, **kw):
  """probe.train_probe on the toy encoder: (head, stats)."""
  kw.setdefault("make_encoder", tiny_arch(enc.num_features))
  with jax.set_mesh(parallel.make_mesh()):
    head, stats, _ = probe.train_probe(enc, probe.parse(config), workdir=str(workdir), **kw)
  return head, stats


def stream(num_videos=24, batch=8, seed=0):
  """A fresh iterator of the same augmented-clip stream each call, like the pipeline's."""
  return clip_stream(num_videos, batch, seed=seed)


def test_k600_linear_config_is_the_paper_recipe():
  from configs import cvrl_k600_linear  # pylint: disable=import-outside-toplevel
  c = cvrl_k600_linear.get_config("pretrained=/ckpt")
  assert c.pretrained == "/ckpt" and c.job == "probe"
  assert (c.batch_size, c.total_epochs, c.warmup_epochs) == (1024, 100, 5)
  assert (c.data.num_frames, c.data.stride, c.data.num_classes) == (32, 2, 600)
  aug = c.data.augmentation
  assert aug.area_range == (0.3, 1.0) and aug.aspect_ratio_range == (0.5, 2.0)
  assert aug.flip_prob == 0.5 and aug.color_jitter_prob == 0.0 and aug.grayscale_prob == 0.0
  assert (c.evaluate.num_clips, c.evaluate.num_crops, c.data.eval_resize) == (10, 3, 256)
  assert c.probe.normalize
  tx, schedule, peak = optim.make(c.optim, c.batch_size, total_steps=35_744,
                                            warmup_steps=1_788)
  assert peak == 32.0 and c.optim.momentum == 0.9 and c.optim.weight_decay == 0.0
  assert float(schedule(0)) == 0.0 and float(schedule(1_788)) == pytest.approx(32.0)
  assert float(schedule(35_744)) == pytest.approx(0.0, abs=1e-5)


def test_cached_batches_replay_then_permute_every_row_once_per_pass():
  feats = np.arange(12, dtype=np.float32)[:, None]
  labels = np.arange(12)
  it = tasks.cached_batches(feats, labels, batch=4, replay_rows=8, seed=0)
  first = [next(it)["label"] for _ in range(2)]
  np.testing.assert_array_equal(np.concatenate(first), np.arange(8))  # stream order
  passes = np.concatenate([next(it)["label"] for _ in range(6)])  # 24 rows = 2 full passes
  for p in range(2):
    np.testing.assert_array_equal(np.sort(passes[12 * p:12 * (p + 1)]), np.arange(12))
  assert not np.array_equal(passes[:12], np.arange(12))


def test_frozen_probe_changes_no_backbone_parameter_or_bn_statistic(tmp_path, run_mesh):
  enc = tiny_encoder(seed=1)
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(enc)))
  for extract in (False, True):
    _, stats, out = probe.train_probe(
        enc, probe.parse(small_config(extract_features=extract, feature_epochs=1)), num_classes=4,
        train_batches=stream(), total_steps=6, warmup_steps=2, steps_per_epoch=3,
        workdir=str(tmp_path / str(extract)), make_encoder=tiny_arch())
    after = nnx.to_pure_dict(nnx.state(enc))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert np.isfinite(stats["train_loss"])
    if not extract:  # the trained model's encoder is the frozen one, untouched
      jax.tree.map(np.testing.assert_array_equal, before,
                   nnx.to_pure_dict(nnx.state(out["model"].encoder)))
  # ... and the features it trains on are the inference-mode (running statistics) ones.
  b = video_batches(8, 8, seed=5)[0][0]
  got = np.asarray(F.ViewRunner(enc)(b))
  np.testing.assert_allclose(got, encoder_numpy(enc, b["video"][:, 0]), rtol=1e-4, atol=1e-6)
  enc.train()  # batch statistics would give other features
  assert not np.allclose(np.asarray(nnx.merge(*nnx.split(enc))(b["video"][:, 0])), got, atol=1e-3)


def test_feature_extraction_path_gives_the_end_to_end_classifier(tmp_path):
  enc = tiny_encoder(seed=2)
  heads = {}
  for extract in (False, True):
    # feature_epochs=2 x 3 steps per epoch covers all 6 steps: the same clips, same order.
    head, stats = train(
        enc, small_config(extract_features=extract, feature_epochs=2), tmp_path / str(extract),
        num_classes=4, train_batches=stream(), total_steps=6, warmup_steps=2, steps_per_epoch=3)
    heads[extract] = nnx.to_pure_dict(nnx.state(head, nnx.Param))
  assert stats["cached_features"] == 48 and stats["encoder_passes"] == 48
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               heads[False], heads[True])
  with jax.set_mesh(parallel.make_mesh()):
    init = probe.F.make_head(8, 4, normalize=True, dropout=0.0, seed=1)
  moved = np.abs(np.asarray(heads[True]["dense"]["kernel"]) - np.asarray(init.dense.kernel[...]))
  assert moved.max() > 1e-3  # the classifier did train


def test_probe_learns_a_linearly_decodable_label_and_generalises(tmp_path):
  """Class-dependent colour: a frozen (random) colour-sensitive encoder + the probe must
  classify held-out videos far above chance, on both paths."""
  enc = tiny_encoder(seed=6, features=16, perturb_bn=False)
  palette = np.random.default_rng(0).uniform(0.1, 0.9, size=(4, 3)).astype(np.float32)

  def videos(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n).astype(np.int32)
    v = palette[y][:, None, None, None, None, :] + 0.15 * rng.normal(size=(n, 1, 2, 4, 4, 3))
    return np.clip(v, 0, 1).astype(np.float32), y

  def stream(start_step=0):
    step = start_step
    while True:
      v, y = videos(16, step)
      yield {"video": v, "label": y}
      step += 1
  test_v, test_y = videos(64, 999)
  for extract in (False, True):
    c = small_config(extract_features=extract, feature_epochs=100, normalize=False)
    c.batch_size = 16
    c.optim.update(base_lr=2.0, base_batch_size=16, weight_decay=0.0)
    head, stats = train(enc, c, tmp_path / str(extract), num_classes=4, train_batches=stream,
                        total_steps=60, warmup_steps=5, steps_per_epoch=1,
                        make_encoder=tiny_arch(16))
    model = EncoderHead(enc, head)
    with jax.set_mesh(parallel.make_mesh()):
      probs = F.run_split(F.ViewRunner(model, "softmax_mean"),
                          [{"video": test_v[i:i + 16], "label": test_y[i:i + 16]}
                           for i in range(0, 64, 16)]).values
    assert np.mean(probs.argmax(1) == test_y) > 0.9, extract
    assert stats["train_accuracy"] > 0.9


def test_unaugmented_features_encode_each_video_once(tmp_path):
  enc = tiny_encoder(seed=4)
  plain = lambda: iter(video_batches(13, 8, pad=True)[0])
  _, stats = train(
      enc, small_config(extract_features=True, feature_epochs=0), tmp_path, num_classes=4,
      train_batches=None, eval_batches=plain, total_steps=5, warmup_steps=0, steps_per_epoch=1)
  assert stats["cached_features"] == 13


def test_validate_and_after_pretrain_config():
  c = config_lib.probe_config()
  with pytest.raises(ValueError, match="pretrained"):
    probe.parse(c)
  c.random_init = True
  c.optim.name = "adagrad"
  with pytest.raises(ValueError, match="sgd"):
    probe.parse(c)
  pre = config_lib.pretrain_config("cvrl")
  pre.probe = config_lib.demo_probe_fields()
  pre.model.width = 0.25
  c = config_lib.probe_config_for(pre, "/ckpt")
  assert c.pretrained == "/ckpt" and c.model.width == 0.25
  assert c.data.augmentation.color_jitter_prob == 0.0 and c.data.augmentation.blur_probs == (0.0,)
  assert c.probe.random_baseline and c.probe.extract_features
  assert c.batch_size == pre.probe.batch_size and c.optim.base_lr == pre.probe.base_lr
  assert c.data.eval_resize == c.data.eval_crop_size == pre.data.crop_size  # no 256 upsampling
  assert c.data.augmentation.flip_prob == 0.0  # motion-direction classes


@pytest.mark.slow
def test_run_after_pretrain_probes_the_checkpoint_and_a_random_baseline(tmp_path_factory):
  """The demo chain's hook: a pretraining checkpoint in, probe/results.json with both numbers."""
  from _downstream_toys import save_numpy_checkpoint, tiny_data  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  pre = tiny_data(config_lib.pretrain_config("cvrl"), tmp_path_factory.mktemp("synthetic"))
  pre.objective.update(head_hidden=16, head_out=8, head_layers=1)
  pre.model.bn_momentum = 0.5
  pre.probe = config_lib.demo_probe_fields()
  pre.probe.update(batch_size=8, total_epochs=2, warmup_epochs=1, feature_epochs=1,
                   num_clips=1, num_crops=3, eval_batch_size=8)
  saved_state = save_numpy_checkpoint(pre, workdir)

  res = probe.run_after_pretrain(pre, workdir, workdir)
  saved = json.load(open(os.path.join(workdir, "probe", "results.json")))
  for key in ("top1", "random_init_top1", "train_accuracy", "random_init_train_accuracy"):
    assert 0.0 <= saved["metrics"][key] <= 1.0
  assert saved["probe"]["source"]["init"] == "pretrained"
  assert saved["random_init"]["source"]["init"] == "random"
  assert saved["random_init"]["model"] == saved["probe"]["model"]  # same architecture
  assert saved["probe"]["test"]["num_videos"] == 13 and saved["probe"]["test"]["views_per_video"] == 3
  assert saved["probe"]["train"]["total_steps"] == 6  # 2 epochs of 24 videos at batch 8
  assert res["metrics"]["top1"] == saved["metrics"]["top1"]
  for name in ("confusion_matrix.npy", "per_class_accuracy.csv", "scores.npz", "model.json"):
    assert os.path.exists(os.path.join(workdir, "probe", name))
  assert os.path.exists(os.path.join(workdir, "probe", "random_init", "scores.npz"))
  # The probe trained and tested the checkpoint's encoder: the saved classifier holds it.
  from cvrl.eval import classifier_io  # pylint: disable=import-outside-toplevel
  with jax.set_mesh(parallel.make_mesh()):
    model, _ = classifier_io.load_classifier(os.path.join(workdir, "probe"))
  want = nnx.to_pure_dict(saved_state)["encoder"]
  got = nnx.to_pure_dict(nnx.state(model.encoder))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)


def test_demo_probe_config_is_the_chain_s_probe():
  from configs import demo, demo_probe  # pylint: disable=import-outside-toplevel
  c = demo_probe.get_config("pretrained=/runs/demo")
  from cvrl.data.config import CLIP_FIELDS, TEST_FIELDS  # pylint: disable=import-outside-toplevel
  pre = demo.get_config()
  pre.probe = config_lib.demo_probe_fields()
  mine, chain = c.to_dict(), config_lib.probe_config_for(pre, "/runs/demo").to_dict()
  for key in CLIP_FIELDS + TEST_FIELDS:  # demo_probe: the checkpoint's
    assert mine["data"].pop(key) is None and chain["data"].pop(key) is not None
  assert mine == chain
  assert c.job == "probe" and c.probe.random_baseline and c.model.depth == pre.model.depth
