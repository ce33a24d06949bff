"""Workdirs on gs://, against a GCS API on this machine (tests/_storage.py): a missing bucket
or checkpoint is one line and writes nothing; the workdir check of hosts sharing one
workdir. Runs on gs:// end to end are in test_demo.py (the demo: pretraining, SIGKILL and
restart, a truncated checkpoint, the probe) and test_global_order.py (two processes started
in different directories resume in one gs:// workdir)."""
import os
import subprocess
import sys

import pytest

from _storage import BUCKET, ROOT, emulator, gs  # noqa: F401  (a fixture)
def run_cli(env, args, cwd=ROOT, timeout=1200):
  """(exit status, stdout + stderr, stderr) of `python -m cvrl.main ARGS`."""
  full = dict(os.environ, **env, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  full.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-m", "cvrl.main", *args], cwd=cwd, env=full,
                        capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout + proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_missing_bucket_or_checkpoint_on_gs_is_one_line(emulator, tmp_path):
  rc, out, _ = run_cli(emulator, [f"--config={ROOT}/configs/demo.py", "--workdir=gs://nobucket/run"],
                    cwd=tmp_path)
  assert rc == 2 and out.strip().splitlines() == [
      "cvrl: error: gs://nobucket/run: bucket gs://nobucket does not exist (or this account "
      "cannot see it); create it or fix the name"], out[-3000:]
  rc, out, _ = run_cli(emulator, [f"--config={ROOT}/configs/demo_probe.py:pretrained=gs://{BUCKET}/none",
                               f"--workdir=gs://{BUCKET}/p"], cwd=tmp_path)
  lines = out.strip().splitlines()
  assert rc == 2 and len(lines) == 1 and lines[0].startswith(
      f"cvrl: error: config.pretrained: no pretraining checkpoint at gs://{BUCKET}/none"), out
  assert os.listdir(tmp_path) == [] and not gs("p").exists()  # nothing written


def test_a_peers_probe_vanishing_mid_check_is_not_taken_for_a_file(emulator, monkeypatch):
  """Hosts check one shared workdir at once: the prefix holds only another host's probe,
  which is gone right after this host's first question to the store. The check still takes
  the prefix for a folder (asking exists() then is_dir() did not); an object is a file."""
  import gcsfs  # pylint: disable=import-outside-toplevel
  from cvrl.core import paths  # pylint: disable=import-outside-toplevel
  from cvrl.core.errors import ConfigError  # pylint: disable=import-outside-toplevel
  peer = gs("race/.cvrl-probe-peer")
  peer.write_text("peer\n")
  armed, real_info, real_as_path = [], gcsfs.GCSFileSystem._info, paths.as_path

  async def info(self, path, **kwargs):
    out = await real_info(self, path, **kwargs)
    if armed and armed.pop():  # the peer unlinks its probe
      await self._rm_file(f"{BUCKET}/race/.cvrl-probe-peer")
      self.invalidate_cache()
    return out

  def as_path(p):
    armed.append(True)  # from here on, check_workdir asks about the workdir itself
    return real_as_path(p)

  monkeypatch.setattr(gcsfs.GCSFileSystem, "_info", info)
  monkeypatch.setattr(paths, "as_path", as_path)
  assert os.fspath(paths.check_workdir(f"gs://{BUCKET}/race")) == f"gs://{BUCKET}/race"
  assert not armed and not gs("race").exists()  # the probes gone, the peer's and its own
  monkeypatch.undo()
  gs("object").write_text("x")
  with pytest.raises(ConfigError, match=f"workdir gs://{BUCKET}/object is a file; give a directory"):
    paths.check_workdir(f"gs://{BUCKET}/object")
