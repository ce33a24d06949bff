"""Data parallelism the pjit way: one `Mesh` over every device, axis 'data'.

The batch is split along its leading axis over 'data'. Parameters and optimizer state are
replicated (`parallel.param_sharding='replicated'`) or sharded over the same axis
('fsdp': each array along its largest dimension the device count divides, big_vision's
rule; arrays under `fsdp_min_kib` stay whole), XLA gathering them for compute. Each host
feeds its own slice of the global batch (`cvrl.engine.input.global_batch`), and XLA
inserts the collectives, so BatchNorm statistics and the contrastive loss see the whole
global batch whatever the device count. Multi-host runs start with
`maybe_initialize_distributed`.

A job sets its mesh once, at its top (`jax.set_mesh(make_mesh())`: the run's mesh); what
runs under it finds the mesh there (`run_mesh`), so the functions below take a `mesh` only
to place on another one (None: the run's).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


# ------------------------------------------------------------------------ multi-host

def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def _cluster_asks_for_distributed() -> bool:
  """True when a launcher started several processes that must join one JAX job."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  for count in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    if (_env_int(count) or 1) > 1:
      return True
  # Multi-host Cloud TPU: the runtime lists every worker of the slice.
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None,
                                 local_device_ids: Sequence[int] | None = None) -> bool:
  """Joins a multi-process JAX job when told to; returns whether JAX is distributed.

  Explicit arguments (from `config.parallel` / the command line) win. Otherwise the
  environment decides: `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID`), or a launcher JAX detects (SLURM, Open MPI, multi-host TPU). A
  single process with no such hint is left alone. Must run before any JAX computation.
  """
  if jax.distributed.is_initialized():
    return True
  if coordinator_address is None and num_processes is None and process_id is None:
    if not _cluster_asks_for_distributed():
      return False
    coordinator_address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = _env_int("JAX_NUM_PROCESSES")
    process_id = _env_int("JAX_PROCESS_ID")
  logging.info("jax.distributed.initialize(coordinator=%s, num_processes=%s, process_id=%s)",
               coordinator_address, num_processes, process_id)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)
  return True


# ------------------------------------------------------------------------ mesh, shardings

def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process), axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def run_mesh(mesh: Mesh | None = None) -> Mesh:
  """`mesh`, or the run's: the concrete mesh `jax.set_mesh` set in this thread."""
  mesh = jax.sharding.get_mesh() if mesh is None else mesh
  if mesh.empty:
    raise RuntimeError("no mesh is set: run under `with jax.set_mesh(parallel.make_mesh()):` "
                       "(every job sets its mesh at its top)")
  return mesh


def replicated(mesh: Mesh | None = None) -> NamedSharding:
  """Parameters and optimizer state: a full copy on every device of `mesh` (the run's)."""
  return NamedSharding(run_mesh(mesh), P())


def batch_sharding(mesh: Mesh | None = None) -> NamedSharding:
  """Split the leading (batch) axis over 'data' of `mesh` (the run's); the other axes
  stay whole."""
  return NamedSharding(run_mesh(mesh), P(DATA_AXIS))


PARAM_SHARDINGS = ("replicated", "fsdp")
FSDP_MIN_KIB = 64  # config.parallel.fsdp_min_kib's default


def fsdp_spec(shape: Sequence[int], nbytes: int, shards: int, min_bytes: int = 0) -> P:
  """big_vision's fsdp rule: split the largest dimension `shards` divides over 'data';
  P() (whole on every device) for an array under `min_bytes` or with no such dimension."""
  if shards <= 1 or nbytes < min_bytes:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % shards == 0:
      return P(*(DATA_AXIS if a == axis else None for a in range(len(shape))))
  return P()


def _nbytes(x) -> int:
  """Bytes of an array or ShapeDtypeStruct; 0 for PRNG keys (never sharded)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return 0
  return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def check_param_sharding(mode: str) -> None:
  if mode not in PARAM_SHARDINGS:
    raise ValueError(f"config.parallel.param_sharding must be one of {list(PARAM_SHARDINGS)}, "
                     f"got {mode!r}")


def leaf_spec(x, mode: str, shards: int, min_kib: float = FSDP_MIN_KIB) -> P:
  """The PartitionSpec `mode` ('replicated' or 'fsdp') gives one state array."""
  check_param_sharding(mode)
  nbytes = _nbytes(x)
  if mode == "replicated" or nbytes == 0:
    return P()
  return fsdp_spec(x.shape, nbytes, shards, int(min_kib * 1024))


def state_placement(mesh: Mesh | None = None, mode: str = "replicated",
                    min_kib: float = FSDP_MIN_KIB) -> Callable[[Any], NamedSharding]:
  """array (or ShapeDtypeStruct) -> its NamedSharding on `mesh` (the run's) under `mode`."""
  mesh = run_mesh(mesh)
  shards = num_data_shards(mesh)
  return lambda x: NamedSharding(mesh, leaf_spec(x, mode, shards, min_kib))


def placement_from_config(p) -> Callable[[Any], NamedSharding]:
  """`state_placement` on the run's mesh of a config's `parallel` section."""
  return state_placement(None, p.param_sharding, float(p.fsdp_min_kib))


def bytes_per_device(tree, mode: str, shards: int, min_kib: float = FSDP_MIN_KIB) -> int:
  """Bytes of `tree`'s arrays one device holds under `mode` on `shards` devices."""
  total = 0
  for x in jax.tree.leaves(tree):
    split = DATA_AXIS in leaf_spec(x, mode, shards, min_kib)
    total += _nbytes(x) // shards if split else _nbytes(x)
  return total


def num_data_shards(mesh: Mesh | None = None) -> int:
  """Devices the batch splits over on `mesh` (the run's)."""
  return int(run_mesh(mesh).shape[DATA_AXIS])


def local_batch_size(global_batch_size: int, mesh: Mesh | None = None) -> int:
  """This host's share of the global batch; the batch must split evenly over the devices
  of `mesh` (the run's)."""
  devices = num_data_shards(mesh)
  if global_batch_size % devices:
    raise ValueError(f"batch_size {global_batch_size} must be a multiple of the device count "
                     f"{devices}")
  return global_batch_size // jax.process_count()


def to_host(tree):
  """Fully replicated (or fully addressable) arrays -> numpy, on every process."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        x = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)
