"""engine/step_inputs.batch_spec (the batch the summary and bench_step compile the step on,
written out without TensorFlow) against a real pipeline batch as the loop hands it to the
step: every key, shape, dtype and sharding, for each method's batch kind."""
import importlib

import jax
import pytest

from cvrl import config_lib, objectives
from cvrl.core import parallel
from cvrl.data import sources
from cvrl.engine import input as input_lib
from cvrl.engine import step_inputs
from cvrl.engine import tasks

BATCH = 8  # one clip per fake device

# (tiny config, overrides, whether the host ships photometric parameters): each sampler
# the methods use (2 clips, rho clips, TCLR's 10 views, one clip of T + 1 frames for
# 3DRotNet on differences), both photometric modes, the per-frame parameters.
KINDS = {
    "cvrl": ("cvrl_tiny", {}, True),
    "rho_3_per_frame": ("byol_tiny", {"objective.num_clips": 3,
                                      "data.augmentation.consistent": False}, True),
    "tclr_host": ("tclr_tiny", {"data.photometric": "host"}, False),
    "rotation_dif": ("rotation_tiny", {"objective.input": "dif"}, False),
}


def _config(name, overrides, directory):
  config = importlib.import_module(f"configs.{name}").get_config()
  for dotted, value in overrides.items():
    *parents, key = dotted.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[key] = value
  config.batch_size = BATCH
  config.data.synthetic.update(dir=str(directory), num_train_videos=BATCH, num_eval_videos=1,
                               num_classes=2, num_frames=20, size=20, num_shards=1)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("videos")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_batch_spec_is_the_pipelines_batch(kind, data_dir):
  name, overrides, ships_photometric = KINDS[kind]
  config = _config(name, overrides, data_dir)
  sources.prepare(config.data, ["train"])
  objective = objectives.method(**config_lib.method_args(config))
  task = tasks.PretrainTask(tasks.Training(**config_lib.training(config)), config.data, objective)
  batches, _ = task.batches(
      batch_size=BATCH, start_step=0, process_index=0, process_count=1)
  with jax.set_mesh(parallel.make_mesh()):  # the run's mesh, as a job sets it
    batch = input_lib.global_batch(next(iter(batches)))
    spec = step_inputs.batch_spec(config.data, objective.sampler(), BATCH)
  got = {k: (v.shape, v.dtype, v.sharding) for k, v in batch.items()}
  assert got == {k: (s.shape, s.dtype, s.sharding) for k, s in spec.items()}
  assert ("photometric" in got) == ships_photometric
