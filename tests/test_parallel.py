"""Mesh, shardings, host-local -> global batches, and when jax.distributed is started."""
import threading

import jax
import numpy as np
import pytest

from cvrl.core import parallel
from cvrl.engine import input as input_lib


def test_mesh_over_all_devices_and_shardings():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",) and parallel.num_data_shards(mesh) == jax.device_count() == 8
  x = jax.device_put(np.arange(16.0).reshape(16, 1), parallel.batch_sharding(mesh))
  assert [s.data.shape for s in x.addressable_shards] == [(2, 1)] * 8
  w = jax.device_put(np.ones(3), parallel.replicated(mesh))
  assert w.sharding.is_fully_replicated


def test_global_batch_is_the_host_batch_split_over_devices():
  mesh = parallel.make_mesh(jax.devices()[:4])
  rng = np.random.default_rng(0)
  local = {"video": rng.uniform(size=(8, 2, 3, 4, 4, 3)).astype(np.float32),
           "label": np.arange(8, dtype=np.int32)}
  batch = input_lib.global_batch(local, mesh)
  assert batch["video"].shape == (8, 2, 3, 4, 4, 3) and batch["label"].dtype == np.int32
  np.testing.assert_array_equal(np.asarray(batch["video"]), local["video"])
  for shard in batch["label"].addressable_shards:
    d = mesh.devices.tolist().index(shard.device)
    np.testing.assert_array_equal(shard.data, [2 * d, 2 * d + 1])
  np.testing.assert_array_equal(parallel.to_host(batch)["label"], local["label"])


def test_local_batch_size_must_split_over_devices():
  mesh = parallel.make_mesh()
  assert parallel.local_batch_size(16, mesh) == 16  # one process
  with pytest.raises(ValueError, match="multiple of the device count 8"):
    parallel.local_batch_size(12, mesh)


def test_the_run_mesh_is_the_one_set_in_this_thread():
  """Without a mesh given, shardings are on the mesh `jax.set_mesh` set (a job's, at its
  top); none set is an error, not a silent mesh of every device; a thread does not see it."""
  with pytest.raises(RuntimeError, match="no mesh is set"):
    parallel.replicated()
  mesh = parallel.make_mesh(jax.devices()[:2])
  with jax.set_mesh(mesh):
    assert parallel.batch_sharding().mesh == mesh == parallel.replicated().mesh
    assert parallel.num_data_shards() == 2 and parallel.local_batch_size(4) == 4
    placed = parallel.state_placement(mode="fsdp", min_kib=0)(np.zeros((4, 3), np.float32))
    assert placed.mesh == mesh and placed.spec == jax.sharding.PartitionSpec("data", None)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(jax.sharding.get_mesh().empty))
    thread.start()
    thread.join()
    assert seen == [True]  # so the loop's prefetcher thread is given its sharding
  with pytest.raises(RuntimeError, match="no mesh is set"):
    parallel.batch_sharding()


ENV_KEYS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
            "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "TPU_WORKER_HOSTNAMES",
            "MEGASCALE_COORDINATOR_ADDRESS")


@pytest.fixture
def calls(monkeypatch):
  for k in ENV_KEYS:
    monkeypatch.delenv(k, raising=False)
  seen = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
  return seen


def test_single_process_without_hints_is_left_alone(calls, monkeypatch):
  assert not parallel.maybe_initialize_distributed()
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
  assert not parallel.maybe_initialize_distributed()
  assert calls == []


def test_explicit_arguments_and_environment_start_jax_distributed(calls, monkeypatch):
  assert parallel.maybe_initialize_distributed("10.0.0.1:1234", 2, 1)
  assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1,
                           local_device_ids=None)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host:99")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert parallel.maybe_initialize_distributed()
  assert calls[-1]["coordinator_address"] == "host:99" and calls[-1]["num_processes"] == 4
  assert calls[-1]["process_id"] == 3
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(k)
  monkeypatch.setenv("SLURM_NTASKS", "8")  # a launcher JAX auto-detects
  assert parallel.maybe_initialize_distributed()
  assert calls[-1]["coordinator_address"] is None and len(calls) == 3
