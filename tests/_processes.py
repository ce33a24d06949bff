"""Helpers of the tests that run jobs in subprocesses and kill or stop them mid-run."""
import json
import os
import time


def wait_for(predicate, proc, timeout=900):
  """True once `predicate()` holds; False if `proc` exits first or `timeout` passes."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.2)
  return False


def committed_steps(workdir):
  """The steps of the finished checkpoints in WORKDIR/checkpoints (a local path or a
  gs:// URL), sorted: orbax's marker is in them (on a bucket a step's folder is there, in
  part, while it is written). Another process writes there: on a bucket, what gcsfs
  listed is forgotten before and after (else this process reads stale listings)."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  from etils.epath import backend  # pylint: disable=import-outside-toplevel
  d = epath.Path(workdir) / "checkpoints"
  forget = backend.fsspec_backend.fs(d).invalidate_cache if "://" in os.fspath(d) else None
  try:
    if forget:
      forget()
    return sorted(int(p.name) for p in (d.iterdir() if d.is_dir() else ())
                  if p.name.isdigit() and (p / "commit_success.txt").exists())
  finally:
    if forget:
      forget()


def metrics_rows(workdir):
  """The rows of WORKDIR/metrics.jsonl (a local path or a gs:// URL) written so far: whole
  lines only (the job may be writing one)."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines(keepends=True) if l.endswith("\n")]
