"""Checkpoints: save/restore round trip of the sharded train state, load_pretrained; the
newest checkpoint by step number; one that does not restore skipped and set aside."""
import glob
import os
import shutil

import numpy as np
import jax
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from cvrl import config_lib, objectives
from cvrl.core import parallel
from cvrl.core.errors import ConfigError
from cvrl.engine import checkpoint
from cvrl.engine import clip_shape
from cvrl.engine import input as input_lib
from cvrl.engine import state as state_lib


def tiny_config():
  c = config_lib.pretrain_config("cvrl")
  c.model.update(depth=18, width=0.125, preset="r3d18")
  c.objective.update(head_hidden=16, head_out=8, head_layers=1)
  return c


def leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ckpt"))
  config = tiny_config()
  objective = objectives.method(**config_lib.method_args(config))
  mesh = parallel.make_mesh()
  tx = optax.sgd(0.1, momentum=0.9)
  make = lambda: objective.build(nnx.Rngs(0))
  graphdef, state = state_lib.create(make, objective.trainable, tx,
                                     parallel.state_placement(mesh))
  # Make the optimizer state and the step non-trivial.
  state = state.replace(step=state.step + 7,
                        opt_state=jax.tree.map(lambda x: x + 0.5, state.opt_state))
  ckpt = checkpoint.Checkpointer(workdir, keep=2)
  assert ckpt.save(state, config_lib.as_dict(config))
  ckpt.close()
  return workdir, config, objective, make, tx, mesh, state


def test_restore_gives_back_the_state_sharded_as_asked(saved):
  workdir, _, objective, make, tx, mesh, state = saved
  graphdef, target = state_lib.abstract(make, objective.trainable, tx,
                                       parallel.state_placement(mesh))
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.latest_step() == 7
  restored = ckpt.restore(target, graphdef, objective.trainable)
  ckpt.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert leaves_equal(restored, state)
  for x in jax.tree.leaves(restored):
    assert x.sharding.is_fully_replicated and len(x.sharding.device_set) == jax.device_count()


def test_keep_k_and_no_duplicate_save(saved, tmp_path):
  _, config, _, _, _, _, state = saved
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for k in range(3):
    assert ckpt.save(state.replace(step=state.step + k), config_lib.as_dict(config))
  record = config_lib.as_dict(config)
  assert not ckpt.save(state.replace(step=state.step + 2), record)  # already there
  ckpt.close()
  assert checkpoint.Checkpointer(str(tmp_path)).all_steps() == [8, 9]


def test_load_pretrained_rebuilds_the_model_from_the_stored_config(saved):
  workdir, config, _, _, _, _, state = saved
  for path, step in ((workdir, None), (workdir + "/checkpoints", 7),
                     (workdir + "/checkpoints/7", None)):
    cfg, model = checkpoint.load_pretrained(path, step)
    assert config_lib.as_dict(cfg) == config_lib.as_dict(config)
    assert leaves_equal(nnx.state(model), state_lib.full_state(state))
    assert model.encoder.depth == 18 and model.encoder.num_features == 64
  with pytest.raises(FileNotFoundError):
    checkpoint.load_pretrained(workdir, step=3)


def test_a_stored_config_from_before_a_field_reads_with_its_default(saved, tmp_path):
  """A checkpoint whose config lacks fields added since (an older run's) loads with them at
  their defaults: the encoder rebuilds, a resume with today's config reads the same
  stream, a downstream job takes its clip shape."""
  _, config, _, _, _, _, state = saved
  old = config_lib.as_dict(config)
  for section, key in (("model", "input"), ("data", "label_fraction"),
                       ("parallel", "fsdp_min_kib"), ("checkpoint", "async_save")):
    del old[section][key]
  del old["data"]["augmentation"]["consistent"]
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.save(state, old)
  ckpt.close()
  cfg, model = checkpoint.load_pretrained(str(tmp_path))
  assert (cfg.model.input, cfg.data.label_fraction, cfg.parallel.fsdp_min_kib,
          cfg.checkpoint.async_save, cfg.data.augmentation.consistent) == ("rgb", 1.0, 64.0,
                                                                           True, True)
  assert leaves_equal(nnx.state(model), state_lib.full_state(state))
  input_lib.check_resume(checkpoint.load_config(str(tmp_path)), config_lib.as_dict(config))
  data, _, _ = clip_shape.reference(pretrained=str(tmp_path), pretrained_step=None,
                                    random_init=False, run_dir="")
  assert data["label_fraction"] == 1.0 and data["num_frames"] == config.data.num_frames


# ------------------------------------------------- checkpoints that do not restore

def _files_under(path):
  return [os.path.join(root, f) for root, _, files in os.walk(path) for f in files]


def truncate_arrays(step_dir):
  """A copy cut short: every array data file of the model item keeps 10 bytes."""
  data = [f for f in _files_under(os.path.join(step_dir, "model"))
          if os.sep + "d" + os.sep in f]
  assert data
  for f in data:
    os.truncate(f, 10)


def remove_arrays(step_dir):
  """The array files of the model item are missing (a copy of the metadata only)."""
  for d in glob.glob(os.path.join(step_dir, "model", "ocdbt.process_*")):
    shutil.rmtree(d)


def remove_metadata(step_dir):
  """The train item's metadata and manifest are missing (a half-written save)."""
  for f in _files_under(os.path.join(step_dir, "train")):
    if not os.sep + "d" + os.sep in f:
      os.remove(f)


@pytest.fixture(scope="module")
def saved_9_and_10(saved, tmp_path_factory):
  """A workdir with checkpoints 9 and 10 (different digit counts), states that differ."""
  _, config, objective, make, tx, mesh, state = saved
  states = {s: state.replace(step=state.step * 0 + s,
                             opt_state=jax.tree.map(lambda x: x + s, state.opt_state))
            for s in (9, 10)}
  workdir = str(tmp_path_factory.mktemp("steps_9_and_10"))
  ckpt = checkpoint.Checkpointer(workdir, keep=None, async_save=False)
  for s in (9, 10):
    assert ckpt.save(states[s], config_lib.as_dict(config))
  ckpt.close()
  graphdef, target = state_lib.abstract(make, objective.trainable, tx,
                                       parallel.state_placement(mesh))
  return workdir, states, (target, graphdef, objective.trainable), config


@pytest.fixture()
def steps_9_and_10(saved_9_and_10, tmp_path):
  """A copy of that workdir, each test's own to corrupt."""
  workdir, *rest = saved_9_and_10
  copy = shutil.copytree(workdir, tmp_path / "workdir")
  return (str(copy), *rest)


def restore(workdir, restore_args):
  ckpt = checkpoint.Checkpointer(workdir, keep=None, async_save=False)
  return ckpt, ckpt.restore(*restore_args)


def test_the_newest_checkpoint_is_the_highest_step_not_the_last_name(steps_9_and_10):
  workdir, states, args, _ = steps_9_and_10
  _, restored = restore(workdir, args)
  assert int(restored.step) == 10 and leaves_equal(restored, states[10])
  assert checkpoint.find(workdir)[1] == 10
  assert checkpoint.restore_pretrained(workdir)[0] == 10


@pytest.mark.parametrize("corrupt", [truncate_arrays, remove_arrays, remove_metadata])
def test_a_corrupt_latest_checkpoint_resumes_from_the_one_before(steps_9_and_10, corrupt,
                                                                 capsys):
  workdir, states, args, config = steps_9_and_10
  corrupt(os.path.join(workdir, "checkpoints", "10"))
  ckpt, restored = restore(workdir, args)
  assert int(restored.step) == 9 and leaves_equal(restored, states[9])
  warnings = [l for l in capsys.readouterr().out.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1 and "checkpoint 10 " in warnings[0], warnings
  assert "resuming from step 9" in warnings[0] and "10.corrupt" in warnings[0]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10.corrupt", "9"]
  # The run's own save of step 10 is not blocked, and it restores.
  assert ckpt.save(states[10], config_lib.as_dict(config))
  ckpt.close()
  _, again = restore(workdir, args)
  assert int(again.step) == 10 and leaves_equal(again, states[10])


def test_no_checkpoint_restores_is_one_error_and_nothing_moved(steps_9_and_10):
  workdir, _, args, _ = steps_9_and_10
  for s in ("9", "10"):
    truncate_arrays(os.path.join(workdir, "checkpoints", s))
  with pytest.raises(ConfigError, match=r"no checkpoint in .* restores \(step 10: .*step 9: "):
    restore(workdir, args)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "9"]


def test_pretrained_loading_skips_a_corrupt_latest_checkpoint(steps_9_and_10, capsys):
  workdir, states, _, _ = steps_9_and_10
  truncate_arrays(os.path.join(workdir, "checkpoints", "10"))
  step, _, model = checkpoint.restore_pretrained(workdir)
  assert step == 9 and leaves_equal(nnx.state(model), state_lib.full_state(states[9]))
  out = capsys.readouterr().out
  assert "warning: checkpoint 10 " in out and "using step 9" in out
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "9"]  # not ours
  with pytest.raises(ConfigError, match="step 10"):
    checkpoint.load_pretrained(workdir, step=10)


def test_one_replica_saving_leaves_orbax_global_handlers_alone(tmp_path):
  """The Checkpointer's items save through their own type-handler registry: orbax's global
  jax.Array handler is the same object while one is open and after; the registry answers
  jax.Array (by type or by saved typestr) with its one-replica handler, the rest as orbax."""
  before = ocp.type_handlers.get_type_handler(jax.Array)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ocp.type_handlers.get_type_handler(jax.Array) is before
  ckpt.close()
  assert ocp.type_handlers.get_type_handler(jax.Array) is before
  types = checkpoint.OneReplicaArrays()
  array_type = type(jax.numpy.zeros(2))
  assert types.get(array_type) is types.get("jax.Array") is types.array
  assert types.array is not before and types.array.typestr() == before.typestr()
  assert types.get(np.ndarray) is ocp.type_handlers.get_type_handler(np.ndarray)


class _ClosedLoopCallback:
  """Stands in for a read that ends after its restore failed: its callback reaches a
  closed event loop, which Python reports as an unraisable exception."""

  def __del__(self):
    raise RuntimeError("Event loop is closed")


def test_reads_ending_while_a_restore_fails_print_nothing(monkeypatch):
  printed = []
  monkeypatch.setattr("sys.unraisablehook", printed.append)

  def load(step):
    if step == 10:
      _ClosedLoopCallback()  # garbage at once: reported during the failing read itself
      raise ValueError("truncated array")
    return "state 9"

  step, value, failed = checkpoint.newest_that_loads("dir", ["9", "10"], load)
  assert (step, value, list(failed)) == (9, "state 9", [10])
  assert printed == []
  # Every other unraisable exception is still reported.
  class Other:
    def __del__(self):
      raise RuntimeError("something else")
  Other()
  assert [str(u.exc_value) for u in printed] == ["something else"]
