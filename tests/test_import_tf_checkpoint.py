"""The official CVRL checkpoints import: the reference Keras R3D-50 (tf-models-official)
and the imported cvrl R3D-50 give the same features on the same clip."""
import jax
import importlib
import os
import sys
import types

import numpy as np
import pytest

from cvrl.tools import import_tf_checkpoint as imp

T, S = 8, 40  # 40 px: odd spatial sizes deep in the net (20, 10, 5, 3) exercise TF 'SAME'


def _model_garden_resnet3d():
  """official.vision.modeling.backbones.resnet_3d without `official.vision/__init__`, which
  imports every vision task (COCO tools, OpenCV, ...) that the backbone never needs."""
  try:
    official = importlib.import_module("official")
  except ImportError:
    if os.environ.get("CI"):
      raise
    pytest.skip("tf-models-official is not installed (CI installs it)")
  if "official.vision" not in sys.modules:
    package = types.ModuleType("official.vision")
    package.__path__ = [os.path.join(os.path.dirname(official.__file__), "vision")]
    sys.modules["official.vision"] = package
  return importlib.import_module("official.vision.modeling.backbones.resnet_3d")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """CVRL's R3D-50 as the model garden builds it (the settings of the released
  cvrl_pretrain_k600 / cvrl_linear_eval_k600 experiment configs), with random BN
  statistics so that a swapped BN field cannot pass, saved as the released files are."""
  resnet_3d = _model_garden_resnet3d()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel
  net = resnet_3d.ResNet3D(
      model_id=50, temporal_strides=[1, 1, 1, 1],
      temporal_kernel_sizes=[(1, 1, 1), (1, 1, 1, 1), (3, 3, 3, 3, 3, 3), (3, 3, 3)],
      stem_conv_temporal_kernel_size=5, stem_conv_temporal_stride=2,
      stem_pool_temporal_stride=1, norm_momentum=0.9, norm_epsilon=1e-5,
      input_specs=tf_keras.layers.InputSpec(shape=[None, T, S, S, 3]))
  rng = np.random.default_rng(0)
  for v in net.weights:
    name, shape = v.name, v.shape
    if "gamma" in name or "moving_variance" in name:
      v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    elif "beta" in name or "moving_mean" in name:
      v.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
  x = rng.uniform(0.0, 1.0, (2, T, S, S, 3)).astype(np.float32)
  feature_map = net(tf.constant(x), training=False)["5"].numpy()
  root = tmp_path_factory.mktemp("tf")
  released = tf.train.Checkpoint(backbone=net).write(str(root / "r3d_1x_k600_backbone-1"))
  holder = tf.Module()
  holder.backbone = net
  nested = tf.train.Checkpoint(model=holder).write(str(root / "nested" / "ckpt-1"))
  return dict(net=net, x=x, feature_map=feature_map, released=released, nested=nested)


@pytest.mark.slow
def test_imported_r3d50_gives_the_reference_features(reference, tmp_path):
  from cvrl.engine.checkpoint import load_pretrained  # pylint: disable=import-outside-toplevel
  report = imp.import_checkpoint(reference["released"], str(tmp_path))
  assert (report["prefix"], report["depth"], report["width"]) == ("backbone/", 50, 1.0)
  assert report["variables"] == len(reference["net"].weights) == 265
  assert report["backbone_params"] == reference["net"].count_params() - 2 * sum(
      int(v.shape[0]) for v in reference["net"].weights if "moving_mean" in v.name)

  # The probe / evaluate jobs' own loader, on the paper's K600 linear-eval config.
  from configs import cvrl_k600_linear  # pylint: disable=import-outside-toplevel
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  from cvrl.core import parallel  # pylint: disable=import-outside-toplevel
  from cvrl.eval import features  # pylint: disable=import-outside-toplevel
  config = cvrl_k600_linear.get_config(f"pretrained={tmp_path}")
  with jax.set_mesh(parallel.make_mesh()):
    encoder, model_config, source = features.load_encoder(**config_lib.encoder_args(config))
  assert (model_config.depth, model_config.width, model_config.preset) == (50, 1.0, "cvrl")
  assert source["init"] == "pretrained"
  _, model = load_pretrained(str(tmp_path))
  assert model.head is not None  # the projection head comes along (fresh, unused here)
  encoder = features.frozen(encoder)
  from flax import nnx  # pylint: disable=import-outside-toplevel
  got, pooled = nnx.jit(lambda e, x: (e(x, return_map=True), e(x)))(encoder, reference["x"])
  got, pooled = np.asarray(got), np.asarray(pooled)
  want = reference["feature_map"]
  assert got.shape == want.shape == (2, T // 2, 2, 2, 2048)
  scale = np.abs(want).max()
  assert scale > 0
  np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)
  np.testing.assert_allclose(pooled / scale, want.mean(axis=(1, 2, 3)) / scale, atol=2e-5)


def test_layouts_other_than_the_released_one_are_found(reference):
  shapes = imp.read_shapes(reference["nested"])
  assert imp.find_backbone_prefix(shapes) == "model/backbone/"
  expected = {path: None for path in imp.tf_to_cvrl_names(50).values()}
  assert len(expected) == 265


def _expected_shapes(depth=50, width=1.0):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cvrl.models.r3d import R3D  # pylint: disable=import-outside-toplevel
  enc = nnx.eval_shape(lambda: R3D(depth, width, "cvrl", rngs=nnx.Rngs(0)))
  return {tuple(p): tuple(v.shape) for p, v in nnx.state(enc).flat_state()}


def test_misfits_are_refused_by_name(reference):
  shapes = imp.read_shapes(reference["released"])
  expected = _expected_shapes()
  assert len(imp.match(shapes, "backbone/", expected, 50)) == 265

  bad = dict(shapes)
  del bad["backbone/layer_with_weights-5/_norm2/moving_variance"]
  bad["backbone/layer_with_weights-9/_temporal_conv/kernel"] = (1, 1, 1, 512, 256)
  bad["backbone/layer_with_weights-17/_self_gating/kernel"] = (2048, 2048)
  with pytest.raises(imp.CheckpointMismatch) as e:
    imp.match(bad, "backbone/", expected, 50)
  msg = str(e.value)
  assert "1 missing: backbone/layer_with_weights-5/_norm2/moving_variance" in msg
  assert "1 unexpected: backbone/layer_with_weights-17/_self_gating/kernel" in msg
  assert ("backbone/layer_with_weights-9/_temporal_conv/kernel (1, 1, 1, 512, 256) "
          "(cvrl stages.2.0.conv1.conv.kernel wants (3, 1, 1, 512, 256))") in msg

  # A checkpoint of another depth does not fit R3D-101: its blocks are named missing.
  with pytest.raises(imp.CheckpointMismatch, match=r"missing: .*backbone/layer_with_weights-18/"):
    imp.match(shapes, "backbone/", _expected_shapes(101), 101)
  with pytest.raises(imp.CheckpointMismatch, match="no ResNet3D backbone"):
    imp.find_backbone_prefix({"dense/kernel": (3, 4)})


def test_command_line_refuses_a_wrong_width_before_building_anything(reference, tmp_path,
                                                                     capsys):
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  imp.define_flags(fv)
  fv(["import_tf_checkpoint", f"--checkpoint={reference['released']}",
      f"--workdir={tmp_path}", "--width=2"])
  with pytest.raises(SystemExit) as e:
    imp.run(fv)
  assert e.value.code == 2
  out = capsys.readouterr().out
  assert "does not fit the cvrl R3D-50" in out
  assert ("265 with the wrong shape: backbone/layer_with_weights-0/kernel (5, 7, 7, 3, 64) "
          "(cvrl stem.conv.kernel wants (5, 7, 7, 3, 128))") in out
  assert not (tmp_path / "checkpoints").exists()
