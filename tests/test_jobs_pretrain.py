"""The pretraining loop in-process on 8 fake devices: logs, checkpoints, resume, NaN stop."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from outside_cvrl import memory as memory_source  # data.source=memory_source.NAME
from cvrl import config_lib
from cvrl.engine import checkpoint
from cvrl.engine import loop as engine
from cvrl.jobs import pretrain
from cvrl.engine import state as state_lib


CACHE = {}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  # Runs of one config in this module share compiled programs (as a restarted job would).
  CACHE["dir"] = str(tmp_path_factory.mktemp("jax_cache"))
  yield


def tiny_config(**over):
  c = config_lib.pretrain_config("cvrl")
  c.parallel.compilation_cache_dir = CACHE.get("dir")
  c.batch_size = 8
  c.total_epochs = None
  c.total_steps = 6
  c.warmup_epochs = None
  c.warmup_steps = 2
  c.model.update(depth=18, width=0.125, preset="cvrl")
  c.objective.update(head_hidden=16, head_out=8, head_layers=1)
  c.data.update(source=memory_source.NAME, num_frames=4, crop_size=16, num_train_examples=32)
  c.optim.update(name="sgd", base_lr=0.1, base_batch_size=8)
  c.checkpoint.update(every_steps=3, keep=5)
  c.log.every_steps = 2
  for k, v in over.items():
    c_sub, key = c, k
    if "." in k:
      head, key = k.rsplit(".", 1)
      for part in head.split("."):
        c_sub = c_sub[part]
    c_sub[key] = v
  return c


LOCAL = {"parallel.batch_norm": "local", "objective.loss_impl": "shard_map"}


def params_of(state):
  return [np.asarray(x) for x in jax.tree.leaves(state_lib.full_state(state))]


@pytest.mark.slow
def test_run_logs_checkpoints_and_resumes_to_the_same_parameters(tmp_path):
  # Local BN and the shard_map loss on 8 devices (the defaults, sync BN and the global
  # loss, are what the demo and the multi-process test run).
  config = tiny_config(**LOCAL)
  config.lock()
  workdir = str(tmp_path / "run")
  out = pretrain.run(pretrain.parse(config), workdir)
  assert out["step"] == 6 and not out["preempted"]
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  # The first step (compilation) is not timed, so the first line comes at step 4 with
  # steps 2..4 averaged, and then 6.
  assert [r["step"] for r in rows] == [2, 4, 6][-len(rows):] and rows[-1]["step"] == 6
  for r in rows:
    for key in ("loss", "contrastive_accuracy", "contrastive_entropy", "learning_rate",
                "clips_per_sec", "data_wait_fraction"):
      assert np.isfinite(r[key]), key
    assert 0 <= r["data_wait_fraction"] <= 1 and r["clips_per_sec"] > 0
  # lr logged = schedule at the last step of the interval: peak 0.1, warm-up 2, cosine to 6.
  assert rows[-1]["learning_rate"] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 3 / 4)),
                                                    rel=1e-5)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.all_steps() == [3, 6]
  ckpt.close()
  final = params_of(out["state"])

  # Restart from step 3 (as if the run had died after saving it): same final parameters.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  resumed = pretrain.run(pretrain.parse(config), workdir)
  assert resumed["step"] == 6
  for a, b in zip(final, params_of(resumed["state"]), strict=True):
    np.testing.assert_array_equal(a, b)
  # The encoder comes back through load_pretrained, BatchNorm statistics included.
  _, model = checkpoint.load_pretrained(workdir)
  from flax import nnx  # pylint: disable=import-outside-toplevel
  for a, b in zip(final, jax.tree.leaves(nnx.state(model)), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  """A batch that makes the loss NaN at step 5: the run stops with a clear error, the
  checkpoint of step 3 stays the latest, nothing later is saved. (Same config as above,
  so the compiled step comes from the cache.)"""
  real = memory_source.memory_batches

  def poisoned(*args, start_step=0, **kw):
    for step, batch in enumerate(real(*args, start_step=start_step, **kw), start_step):
      if step == 4:
        batch = dict(batch, video=np.full_like(batch["video"], np.nan))
      yield batch

  monkeypatch.setattr(memory_source, "memory_batches", poisoned)
  config = tiny_config(**LOCAL)
  config.lock()
  with pytest.raises(engine.NonFiniteLossError, match="at step 5.*last good checkpoint"):
    pretrain.run(pretrain.parse(config), str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.all_steps() == [3]
  ckpt.close()
  _, model = checkpoint.load_pretrained(str(tmp_path))
  from flax import nnx  # pylint: disable=import-outside-toplevel
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nnx.state(model)))


def test_validate_rejects_bad_settings_before_compiling():
  for over, match in (({"parallel.batch_norm": "ghost"}, "sync"),
                      ({"optim.name": "rmsprop"}, "lars"),
                      ({"total_steps": None}, "total"),
                      ({"log.every_steps": 0}, "log.every_steps")):
    with pytest.raises(ValueError, match=match):
      pretrain.parse(tiny_config(**over))
