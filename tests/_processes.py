"""Helpers of the tests that run jobs in subprocesses and kill or stop them mid-run."""
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
  """The steps of the finished checkpoints in WORKDIR/checkpoints, sorted."""
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []
