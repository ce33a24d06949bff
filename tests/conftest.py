"""Test-wide set-up: 8 fake CPU devices, so sharded code is tested as on a TPU slice."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end tests (still run in CI)")


@pytest.fixture(autouse=True, scope="session")
def _hide_gpus_from_tensorflow():
  """The host pipeline must never grab an accelerator JAX wants."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass
  yield
