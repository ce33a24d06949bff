"""The method configs: paper recipes load and validate; tiny ones pretrain end to end."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl import config_lib
from cvrl.core import parallel
from cvrl.objectives import base
from objective_checks import load_config
from outside_cvrl import memory as memory_source

PAPER = {
    "simclr_k400_slowr50": ("simclr", {"name": "rho", "num_clips": 2}),
    "moco_k400_slowr50": ("moco", {"name": "rho", "num_clips": 2}),
    "byol_k400_slowr50": ("byol", {"name": "rho", "num_clips": 2}),
    "swav_k400_slowr50": ("swav", {"name": "rho", "num_clips": 2}),
    "tclr_ucf101_r3d18": ("tclr", {"name": "tclr"}),
    "rotation_k400_r3d18": ("rotation", {"name": "single"}),
}
RHO = ("simclr_tiny", "moco_tiny", "byol_tiny", "swav_tiny")
TINY = RHO + ("tclr_tiny", "rotation_tiny", "cvrl_tiny")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_load_and_match_methods_md(name):
  config = load_config(name)
  objective = base.method(**config_lib.method_args(config))
  method, sampler = PAPER[name]
  assert objective.name == method and objective.sampler() == sampler
  assert config.objective.get("temperature", 0.1) == 0.1
  assert config_lib.steps("total", config, num_examples=config.data.num_train_examples,
                          batch_size=config.batch_size) > 0
  if method in ("simclr", "moco", "byol", "swav"):
    assert (config.data.num_frames, config.data.stride, config.data.crop_size) == (8, 8, 224)
    assert config.data.augmentation.area_range == (0.2, 0.766)
    assert (config.total_epochs, config.warmup_epochs) == (200, 35)


def test_paper_recipe_numbers():
  moco = load_config("moco_k400_slowr50").objective
  assert (moco.queue_size, moco.momentum, moco.momentum_schedule) == (65_536, 0.994, "cosine")
  byol = load_config("byol_k400_slowr50")
  assert (byol.objective.head_hidden, byol.objective.head_out, byol.objective.head_layers,
          byol.objective.predictor_hidden, byol.objective.momentum) == (4096, 256, 1, 4096, 0.996)
  assert byol.optim.base_lr == 0.6
  assert load_config("byol_k400_slowr50", "rho=4").optim.base_lr == 1.2
  swav = load_config("swav_k400_slowr50").objective
  assert (swav.num_prototypes, swav.sinkhorn_epsilon, swav.sinkhorn_iterations,
          swav.head_bn) == (1000, 0.05, 3, True)
  simclr = load_config("simclr_k400_slowr50", "rho=4")
  assert simclr.objective.num_clips == 4 and simclr.objective.head_bn is False
  tclr = load_config("tclr_ucf101_r3d18")
  assert (tclr.model.preset, tclr.data.num_frames, tclr.data.crop_size) == ("tclr", 16, 112)
  rot = load_config("rotation_k400_r3d18", "input=dif")
  assert base.method(**config_lib.method_args(rot)).sampler() == {"name": "single", "extra_frames": 1}
  assert (rot.optim.weight_decay, rot.batch_size) == (1e-3, 32)
  # 3DRotNet's backbone as its authors' code builds it: Hara et al.'s resnet18, option A.
  assert (rot.model.preset, rot.model.depth, rot.data.num_frames, rot.data.crop_size) == (
      "hara", 18, 16, 112)


E2E_ARGS = {"rotation_tiny": "input=dif,steps=16"}  # DIF: T + 1 frames through the pipeline
# The tiny runs' mesh: 2 of the 8 devices. The batch is still split over devices (global
# batch norm, gathered negatives, queues, Sinkhorn across them), at 0.6x the CPU time of 8
# (SwAV + TCLR: 119 s against 163 s); each objective's own tests check 8 devices against 1.
DEVICES = 2


def pretrain(name, workdir, **overrides):
  from cvrl.jobs import pretrain as pretrain_job  # pylint: disable=import-outside-toplevel
  config = load_config(name, E2E_ARGS.get(name, "steps=16"))
  config.unlock()
  if name in RHO:
    config.data.source = memory_source.NAME  # no TensorFlow pipeline: the rho sampler's clips in memory
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  with jax.set_mesh(parallel.make_mesh(jax.devices()[:DEVICES])):
    result = pretrain_job.run(pretrain_job.parse(config), str(workdir))
  with open(os.path.join(str(workdir), "metrics.jsonl"), encoding="utf-8") as f:
    losses = {int(r["step"]): float(r["loss"]) for r in map(json.loads, f) if "loss" in r}
  return result, losses


def checkpoint_steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def check_run(name, result, losses):
  """Ran every step, finite losses falling (mean of the last third below the first third's:
  single tiny batches are noisy), a checkpoint at the end."""
  steps = load_config(name, E2E_ARGS.get(name, "steps=16")).total_steps
  assert result["step"] == steps
  assert all(np.isfinite(v) for v in losses.values())
  trained = [losses[s] for s in sorted(losses) if losses[s] > 0]  # MoCo: 0 while filling
  third = len(trained) // 3
  assert np.mean(trained[-third:]) < np.mean(trained[:third]), losses
  assert checkpoint_steps(result["checkpoint_dir"])[-1] == steps


def check_downstream_encoder(name, workdir):
  """What every downstream job starts from: `load_encoder` on the checkpoint gives its
  `model.encoder` parameters, the model config the objective built it with, and
  features [B, num_features] on clips of the frames that config asks for."""
  # pylint: disable=import-outside-toplevel
  from flax import nnx
  from cvrl import models
  from cvrl.engine import checkpoint
  from cvrl.eval import features as F
  config = config_lib.probe_config()
  config.pretrained = str(workdir)
  with jax.set_mesh(parallel.make_mesh()):
    encoder, model_config, source = F.load_encoder(**config_lib.encoder_args(config))
  assert source["init"] == "pretrained"
  pre_config, model = checkpoint.load_pretrained(str(workdir))
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(encoder, nnx.Param)),
               nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param)))
  assert model_config.to_dict() == base.method(**config_lib.method_args(pre_config)).encoder_config().to_dict()
  assert model_config.input == ("dif" if "input=dif" in E2E_ARGS.get(name, "") else "rgb")
  d = pre_config.data
  frames = d.num_frames + models.extra_frames(model_config)
  clips = np.random.default_rng(0).random((2, frames, d.crop_size, d.crop_size, 3), np.float32)
  feats = np.asarray(nnx.jit(lambda e, x: e(x))(F.frozen(encoder), clips))
  assert feats.shape == (2, encoder.num_features) == (2, round(512 * model_config.width))
  assert np.all(np.isfinite(feats))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """name -> (workdir, result, losses) of its tiny pretraining, run once per module."""
  runs = {}

  def get(name):
    if name not in runs:
      workdir = tmp_path_factory.mktemp(name)
      runs[name] = (workdir, *pretrain(name, workdir))
    return runs[name]
  return get


# Objectives with state beyond parameters, BatchNorm and optimizer (which the CVRL, demo
# and SIGKILL tests resume): BYOL's target network, SwAV's prototypes, MoCo's queue (below).
RESUMED = ("byol_tiny", "swav_tiny")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TINY if n != "moco_tiny"])  # MoCo: below
def test_tiny_config_pretrains_resumes_and_feeds_downstream(name, pretrained, tmp_path):
  workdir, result, losses = pretrained(name)
  check_run(name, result, losses)
  check_downstream_encoder(name, workdir)
  if name in RESUMED:
    check_resume(name, workdir, result, losses, tmp_path)


@pytest.mark.slow
def test_dif_rotation_checkpoint_is_probed_and_tested_on_frame_differences(pretrained, run_mesh):
  """The probe job on a DIF 3DRotNet checkpoint: T + 1 frames per clip, features of their
  differences, input='dif' in results.json and model.json (so the evaluate job's
  multi-view test feeds the saved classifier T + 1 frames per view too)."""
  # pylint: disable=import-outside-toplevel
  import ml_collections
  from flax import nnx
  from cvrl import models
  from cvrl.data import device
  from cvrl.eval import classifier_io
  from cvrl.eval import common
  from cvrl.eval import features as F
  from cvrl.jobs import probe
  workdir, result, _ = pretrained("rotation_tiny")
  pre = load_config("rotation_tiny", E2E_ARGS["rotation_tiny"])
  pre.unlock()
  pre.probe = config_lib.demo_probe_fields()
  pre.probe.update(batch_size=8, total_epochs=None, warmup_epochs=None, num_clips=2,
                   num_crops=1, eval_batch_size=8)
  pre.probe.total_steps, pre.probe.warmup_steps = 2, 1
  probe.run_after_pretrain(pre, str(workdir), result["checkpoint_dir"])
  with open(os.path.join(str(workdir), "probe", "results.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["probe"]["model"]["input"] == saved["random_init"]["model"]["input"] == "dif"
  assert saved["probe"]["train"]["total_steps"] == 2
  assert 0.0 <= saved["metrics"]["top1"] <= 1.0 and saved["probe"]["test"]["num_videos"] == 8

  config = config_lib.probe_config_for(pre, result["checkpoint_dir"])
  encoder, model_config, _ = F.load_encoder(**config_lib.encoder_args(config))
  train_batches, _ = probe._datasets(  # pylint: disable=protected-access
      probe.parse(config), models.extra_frames(model_config))
  batch = next(train_batches())
  t = pre.data.num_frames
  assert batch["video"].shape[1:3] == (1, t + 1)
  got = np.asarray(F.ViewRunner(encoder, data_config=config.data)(batch))
  # Independently: the same parameters as an RGB network, on numpy frame differences.
  x = np.asarray(device.finish_batch(dict(batch), config.data)["video"])[:, 0]
  rgb = ml_collections.ConfigDict(model_config.to_dict())
  rgb.input = "rgb"
  twin = nnx.eval_shape(lambda: models.build_encoder(rgb, nnx.Rngs(0)))
  nnx.update(twin, nnx.state(encoder))
  twin.eval()
  want = np.asarray(nnx.jit(lambda e, v: e(v))(twin, x[:, 1:] - x[:, :-1]))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  model, meta = classifier_io.load_classifier(os.path.join(str(workdir), "probe"))
  assert meta["model"]["input"] == "dif" and model.encoder.input_mode == "dif"
  splits = common.Splits(config.data, int(config.seed),
                         models.extra_frames(ml_collections.ConfigDict(meta["model"])))
  views = next(iter(splits.batches("eval", 2, 1, 8)))
  assert views["video"].shape[1:3] == (2, t + 1)


def check_resume(name, workdir, result, losses, tmp_path):
  """As if stopped right after the mid-run checkpoint: drop the final one, restart. The
  restarted run does only the remaining steps and ends on the same loss (same data,
  parameters, optimizer and objective state: targets, queues, prototypes)."""
  last = result["step"]
  part = tmp_path / "part"
  shutil.copytree(workdir, part, ignore=shutil.ignore_patterns("probe"))
  assert checkpoint_steps(part / "checkpoints") == [last // 2, last]
  shutil.rmtree(part / "checkpoints" / str(last))
  os.remove(part / "metrics.jsonl")  # only the restarted run's lines from here on
  resumed, resumed_losses = pretrain(name, part)
  assert resumed["step"] == last
  assert min(resumed_losses) > last // 2, sorted(resumed_losses)
  np.testing.assert_allclose(resumed_losses[last], losses[last], rtol=1e-4)


@pytest.mark.slow
def test_moco_tiny_pretrains_and_resumes_queue_and_key_encoder_exactly(tmp_path):
  full, full_losses = pretrain("moco_tiny", tmp_path / "full")
  check_run("moco_tiny", full, full_losses)
  check_downstream_encoder("moco_tiny", tmp_path / "full")
  check_resume("moco_tiny", tmp_path / "full", full, full_losses, tmp_path)


@pytest.mark.parametrize("name", ["simclr_k400_slowr50", "moco_k400_slowr50",
                                  "byol_k400_slowr50", "swav_k400_slowr50"])
def test_rho_recipes_run_slowfast_solver_on_slow_r50_and_summarise(name):
  from cvrl.jobs import summary  # pylint: disable=import-outside-toplevel
  config = load_config(name)
  assert (config.model.depth, config.model.preset) == (50, "slow")
  assert (config.optim.schedule, config.optim.warmup_start_lr, config.optim.nesterov,
          config.optim.momentum) == ("half_cosine", 0.001, True, 0.9)
  assert config.optim.name == ("sgd" if name.startswith("moco") else "lars")
  result = summary.summarize(summary.parse(config))
  # SlowFast's SLOW_8x8_R50 without its 400-class fc: 32.45M - 0.82M.
  assert result["backbone_params"] == 31_634_496
  assert result["feature_shape"] == [8, 7, 7, 2048] and result["input_shape"] == [8, 224, 224, 3]
  assert 50 < result["gflops_per_clip"] < 120
