"""The method configs: paper recipes load and validate; tiny ones pretrain end to end."""
import json
import os
import shutil

import numpy as np
import pytest

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl import config_lib
from cvrl.objectives import base
from objective_checks import load_config

PAPER = {
    "simclr_k400_slowr50": ("simclr", {"name": "rho", "num_clips": 2}),
    "moco_k400_slowr50": ("moco", {"name": "rho", "num_clips": 2}),
    "byol_k400_slowr50": ("byol", {"name": "rho", "num_clips": 2}),
    "swav_k400_slowr50": ("swav", {"name": "rho", "num_clips": 2}),
    "tclr_ucf101_r3d18": ("tclr", {"name": "tclr"}),
    "rotation_k400_r3d18": ("rotation", {"name": "single"}),
}
RHO = ("simclr_tiny", "moco_tiny", "byol_tiny", "swav_tiny")
TINY = RHO + ("tclr_tiny", "rotation_tiny")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_load_and_match_methods_md(name):
  config = load_config(name)
  objective = base.get(config)
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
  assert base.get(rot).sampler() == {"name": "single", "extra_frames": 1}
  assert (rot.optim.weight_decay, rot.batch_size) == (1e-3, 32)


E2E_ARGS = {"rotation_tiny": "input=dif,steps=16"}  # DIF: T + 1 frames through the pipeline


def pretrain(name, workdir, **overrides):
  from cvrl.train import pretrain as pretrain_job  # pylint: disable=import-outside-toplevel
  config = load_config(name, E2E_ARGS.get(name, "steps=16"))
  config.unlock()
  if name in RHO:
    config.data.source = "memory"  # no TensorFlow pipeline: the rho sampler's clips in memory
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  result = pretrain_job.run(config, str(workdir))
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


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TINY if n != "moco_tiny"])  # MoCo: below
def test_tiny_config_pretrains_with_a_falling_loss_and_checkpoints(name, tmp_path):
  check_run(name, *pretrain(name, tmp_path))


@pytest.mark.slow
def test_moco_tiny_pretrains_and_resumes_queue_and_key_encoder_exactly(tmp_path):
  full, full_losses = pretrain("moco_tiny", tmp_path / "full")
  check_run("moco_tiny", full, full_losses)
  last = full["step"]
  # As if stopped right after the mid-run checkpoint: drop the final one, resume.
  shutil.copytree(tmp_path / "full", tmp_path / "part")
  assert checkpoint_steps(tmp_path / "part" / "checkpoints") == [last // 2, last]
  shutil.rmtree(tmp_path / "part" / "checkpoints" / str(last))
  resumed, resumed_losses = pretrain("moco_tiny", tmp_path / "part")
  assert resumed["step"] == last
  # Same data, parameters, key encoder and queue from the checkpoint: the same last loss.
  np.testing.assert_allclose(resumed_losses[last], full_losses[last], rtol=1e-4)
