"""Test-wide set-up: 8 fake CPU devices, so sharded code is tested as on a TPU slice."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# etils.epath decides once per process whether gs:// goes through TensorFlow's GCS client
# (which has no endpoint setting) or gcsfs: gcsfs, so every test in a worker can reach the
# GCS emulator that tests/test_cloud_storage.py starts, whichever test file ran first.
os.environ.setdefault("EPATH_USE_TF", "false")
# No metadata server here: google-auth reads this once, when imported; without it each
# gcsfs client of this process first looks for one (tests/_storage.py sets it for the
# subprocesses it reaches the GCS emulator from).
os.environ.setdefault("NO_GCE_CHECK", "true")

# One XLA compilation cache for the single-device subprocesses the tests start (the demo,
# killed and restarted runs, sweep points inherit the environment): a restarted run loads
# the step its twin compiled instead of compiling it again. Not in this process: an
# executable loaded from the cache deadlocked in an all-gather across the 8 fake devices
# here (XLA:CPU's in-process collectives), so multi-device processes compile afresh.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="cvrl-tests-xla-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# The PRNG the jobs use (cvrl.core.runtime.job), for the tests that build models outside a job.
jax.config.update("jax_default_prng_impl", "rbg")
jax.config.update("jax_enable_compilation_cache", False)


# The files that take minutes, longest first. Under `--dist loadfile` each file runs whole on
# one worker, and xdist by default queues the files with the most tests first: the
# few-test, minutes-long files (several processes, end-to-end runs) came last, where one
# worker could run one of them for minutes after the other had finished. Longest first, the
# short files fill in behind them and the two workers end close together (longest
# processing time first).
LONGEST_FIRST = (
    "test_objectives_recipes.py", "test_demo.py", "test_fsdp.py", "test_engine_loop.py",
    "test_objectives_moco.py", "test_global_order.py", "test_data_service.py",
    "test_bench_quality.py", "test_multihost.py", "test_jobs_pretrain.py",
    "test_readme_commands.py",
)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end tests (still run in CI)")
  if getattr(config.option, "loadscopereorder", False) and not hasattr(config, "workerinput"):
    config.option.loadscopereorder = False  # the controller queues files in collection order


def pytest_collection_modifyitems(items):
  """LONGEST_FIRST's files first, in its order; the others after them, as collected."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True, scope="session")
def _hide_gpus_from_tensorflow():
  """The host pipeline must never grab an accelerator JAX wants."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass
  yield


@pytest.fixture
def run_mesh():
  """The run's mesh over every device, set as a job sets it (`jax.set_mesh`): what
  cvrl.core.parallel.run_mesh finds while the test runs."""
  from cvrl.core import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh()
  with jax.set_mesh(mesh):
    yield mesh
