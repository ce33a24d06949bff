"""Checkpoints: save/restore round trip of the sharded train state, load_pretrained."""
import numpy as np
import jax
import optax
import pytest
from flax import nnx

from cvrl import config_lib, objectives
from cvrl.core import parallel
from cvrl.engine import checkpoint
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
  objective = objectives.get(config)
  mesh = parallel.make_mesh()
  tx = optax.sgd(0.1, momentum=0.9)
  make = lambda: objective.build(nnx.Rngs(0))
  graphdef, state = state_lib.create(make, objective.trainable, tx, mesh)
  # Make the optimizer state and the step non-trivial.
  state = state.replace(step=state.step + 7,
                        opt_state=jax.tree.map(lambda x: x + 0.5, state.opt_state))
  ckpt = checkpoint.Checkpointer(workdir, keep=2)
  assert ckpt.save(state, config)
  ckpt.close()
  return workdir, config, objective, make, tx, mesh, state


def test_restore_gives_back_the_state_sharded_as_asked(saved):
  workdir, _, objective, make, tx, mesh, state = saved
  graphdef, target = state_lib.abstract(make, objective.trainable, tx, mesh)
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
    assert ckpt.save(state.replace(step=state.step + k), config)
  assert not ckpt.save(state.replace(step=state.step + 2), config)  # already there
  ckpt.close()
  assert checkpoint.Checkpointer(str(tmp_path)).all_steps() == [8, 9]


def test_load_pretrained_rebuilds_the_model_from_the_stored_config(saved):
  workdir, config, _, _, _, _, state = saved
  for path, step in ((workdir, None), (workdir + "/checkpoints", 7),
                     (workdir + "/checkpoints/7", None)):
    cfg, model = checkpoint.load_pretrained(path, step)
    assert cfg.to_dict() == checkpoint.config_from_json(checkpoint.config_to_json(config)).to_dict()
    assert leaves_equal(nnx.state(model), state_lib.full_state(state))
    assert model.encoder.depth == 18 and model.encoder.num_features == 64
  with pytest.raises(FileNotFoundError):
    checkpoint.load_pretrained(workdir, step=3)
