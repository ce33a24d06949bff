"""Downstream jobs take the clip shape (frames, stride, crop size) from the checkpoint
unless the user sets it, say which they use in one line, warn when it differs from
pretraining, and name the checkpoint's step in results.json (cvrl.engine.clip_shape)."""
import jax
import json

import pytest

from _downstream_toys import save_numpy_checkpoint, tiny_data
from configs import demo_probe, tclr_ucf101_retrieval
from cvrl import config_lib
from cvrl.core import parallel
from cvrl.data.config import CLIP_FIELDS, TEST_FIELDS
from cvrl.engine import clip_shape
from cvrl.jobs import evaluate
from cvrl.eval import features as F


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A pretraining checkpoint (step 5) of 4-frame clips at stride 2, 16 px crops."""
  pre = tiny_data(config_lib.pretrain_config("cvrl"), tmp_path_factory.mktemp("synthetic"),
                  num_train=8, num_eval=4)
  pre.objective.update(head_hidden=16, head_out=8, head_layers=1)
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  save_numpy_checkpoint(pre, workdir, step=5)
  return pre, workdir


def knn_config(pre, workdir):
  c = config_lib.evaluate_config()
  c.data.synthetic = pre.data.synthetic
  c.pretrained = workdir
  c.evaluate.update(mode="knn", knn_clips=1, batch_size=8, recall_ks=(1,))
  return c


def test_configs_leave_the_shape_to_the_checkpoint():
  for c in (config_lib.probe_config(), config_lib.evaluate_config(),
            demo_probe.get_config("pretrained=/ckpt"),
            tclr_ucf101_retrieval.get_config("pretrained=/ckpt,source=synthetic")):
    assert [c.data[k] for k in CLIP_FIELDS + TEST_FIELDS] == [None] * 5
  c = tclr_ucf101_retrieval.get_config("pretrained=/ckpt,frames=16,stride=4,size=112")
  assert (c.data.num_frames, c.data.stride, c.data.crop_size, c.data.eval_crop_size) == (
      16, 4, 112, 112)


def test_shape_from_the_checkpoint_unless_set(pretrained):
  pre, workdir = pretrained
  c = knn_config(pre, workdir)
  lines = []
  shape = clip_shape.resolved(c.data, config_lib.encoder_args(c), say=lines.append)
  d, record = shape.applied(c.data, config_lib.as_dict(c))
  assert [c.data[k] for k in CLIP_FIELDS + TEST_FIELDS] == [None] * 5  # the config as given
  assert record["data"] == config_lib.as_dict(d) and record["model"] == config_lib.as_dict(c.model)
  assert (d.num_frames, d.stride, d.crop_size) == (4, 2, 16)
  assert (d.eval_resize, d.eval_crop_size) == (16, 16)  # follow the crop
  assert lines == [f"clip shape: 4 frames at stride 2, 16 px crops, tested at 16 px (shorter "
                   f"side 16); from the checkpoint {workdir} (step 5)"]
  assert shape.differs == () and shape.as_dict()["differs"] == []

  c = knn_config(pre, workdir)
  c.data.num_frames, c.data.eval_crop_size = 8, 24  # the user's: kept, with a warning
  lines = []
  shape = clip_shape.resolved(c.data, config_lib.encoder_args(c), say=lines.append)
  d, _ = shape.applied(c.data, config_lib.as_dict(c))
  assert (d.num_frames, d.stride, d.crop_size, d.eval_resize, d.eval_crop_size) == (
      8, 2, 16, 16, 24)
  assert (c.data.num_frames, c.data.stride, c.data.eval_crop_size) == (8, None, 24)
  assert len(lines) == 2 and "stride, crop_size from the checkpoint" in lines[0], lines
  assert lines[1].startswith("warning: clip shape unlike the checkpoint") and \
      "num_frames 8 (trained on 4)" in lines[1]
  assert shape.as_dict() == dict(num_frames=8, stride=2, crop_size=16, eval_resize=16,
                                eval_crop_size=24, origin=f"the checkpoint {workdir} (step 5)",
                                differs=["num_frames 8 (trained on 4)"])


def test_random_init_takes_the_data_defaults():
  c = config_lib.finetune_config()
  c.random_init = True
  lines = []
  shape = clip_shape.resolved(c.data, config_lib.encoder_args(c), say=lines.append)
  d, _ = shape.applied(c.data, {})
  assert (d.num_frames, d.stride, d.crop_size) == (16, 2, 224)
  assert lines[0].endswith("from the data defaults (no checkpoint)")


def test_results_name_the_checkpoint_step(pretrained, tmp_path):
  pre, workdir = pretrained
  c = knn_config(pre, workdir)
  with jax.set_mesh(parallel.make_mesh()):
    # the latest checkpoint: its step named
    _, _, source = F.load_encoder(**config_lib.encoder_args(c))
  assert source == {"init": "pretrained", "checkpoint": workdir, "step": 5}
  c.lock()
  out = evaluate.run(evaluate.parse(c), str(tmp_path / "knn"))
  saved = json.load(open(tmp_path / "knn" / "results.json"))
  assert out["step"] == saved["step"] == saved["checkpoint"]["step"] == 5
  assert saved["config"]["data"]["num_frames"] == 4 and saved["clip_shape"]["crop_size"] == 16
