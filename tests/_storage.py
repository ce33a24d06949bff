"""A GCS API on this machine for the tests that put workdirs on gs:// (the demo, a run
resumed across process counts, the storage checks): gcp-storage-emulator, in memory, with
one empty bucket. The clients are pointed at it as the README says (STORAGE_EMULATOR_HOST,
TENSORSTORE_GCS_HTTP_URL, EPATH_USE_TF=false); TensorFlow's own GCS client cannot be, so
runs here switch TensorBoard events off (--config.log.tensorboard=false)."""
import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bucket"


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_for_port(port, proc, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, f"the storage emulator exited ({proc.returncode})"
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.1)
  raise TimeoutError(f"the storage emulator did not listen on {port}")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """The emulator with an empty bucket; the clients of this process pointed at it. Yields
  the environment a subprocess needs to reach it too."""
  port = free_port()
  log = open(tmp_path_factory.mktemp("emulator") / "log", "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "_gcs_emulator.py"),
                           "start", "--host", "127.0.0.1", f"--port={port}", "--in-memory",
                           f"--default-bucket={BUCKET}", "-q"], stdout=log, stderr=log)
  wait_for_port(port, proc)
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "EPATH_USE_TF": "false", "NO_GCE_CHECK": "true"}  # no metadata server to ask
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield env
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  proc.terminate()
  proc.wait(timeout=30)
  log.close()


def gs(path):
  """gs://bucket/PATH as an epath (after the emulator fixture has set the environment)."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(f"gs://{BUCKET}/{path}")


def copy_tree(src, dst, skip=()):
  """Every file under `src` (an epath or local path) to the same place under `dst`, but
  those whose path relative to `src` starts with one of `skip`: a workdir moved between
  local disk and the bucket, object by object."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  src, dst = epath.Path(src), epath.Path(dst)
  for p in src.iterdir():
    if p.name in skip:
      continue
    if p.is_dir():
      copy_tree(p, dst / p.name, [s.split("/", 1)[1] for s in skip if s.startswith(p.name + "/")])
    else:
      dst.mkdir(parents=True, exist_ok=True)
      (dst / p.name).write_bytes(p.read_bytes())


def no_local_gs_folder(*dirs):
  """No folder named gs:... anywhere under `dirs`: a URL never taken for a local path."""
  for d in dirs:
    for root, names, _ in os.walk(d):
      assert not [n for n in names if n.startswith("gs:")], (root, names)
