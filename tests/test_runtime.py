"""cvrl.core.runtime: jobs' JAX settings scoped to the job, and the lost-peer line."""
import os
import subprocess
import sys
import textwrap

import pytest

from cvrl.core import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_import_changes_no_global_jax_setting_and_jobs_scope_theirs():
  code = textwrap.dedent("""
      import jax
      def settings():
        return {k: str(v) for k, v in jax.config.values.items()}
      before = settings()
      import cvrl, cvrl.main, cvrl.core.runtime, cvrl.data.pipeline, cvrl.jobs.pretrain
      after = settings()
      changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
      assert not changed, changed
      assert jax.config.jax_default_prng_impl == "threefry2x32"
      def run(config, workdir):
        with cvrl.core.runtime.job():
          return str(jax.random.key(0).dtype)
      assert run(None, None) == "key<rbg>", run(None, None)
      assert str(jax.random.key(0).dtype) == "key<fry>"  # restored after the job
      print("ok")
  """)
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


class JaxRuntimeError(RuntimeError):
  """Stands in for jax.errors.JaxRuntimeError (matched by name)."""


def test_peer_failures_recognised():
  assert runtime.is_peer_failure(JaxRuntimeError(
      "UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error: Connection reset by peer"))
  assert runtime.is_peer_failure(JaxRuntimeError("UNAVAILABLE: Task 1 heartbeat timeout"))
  assert not runtime.is_peer_failure(JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory"))
  assert not runtime.is_peer_failure(RuntimeError("gloo connection reset"))  # not from JAX
  assert not runtime.is_peer_failure(ValueError("peer"))
  assert not runtime.is_peer_failure(None)
  # orbax's barrier timeout raised from a lost peer's error (as `raise ... from e`), and
  # an error raised while handling one: both are the lost peer.
  try:
    try:
      raise JaxRuntimeError("INTERNAL: Barrier failed: UNAVAILABLE: Task 1 heartbeat timeout")
    except JaxRuntimeError as e:
      raise TimeoutError("Timed out while waiting for async_write_complete barrier.") from e
  except TimeoutError as e:
    assert runtime.is_peer_failure(e)
  try:
    try:
      raise JaxRuntimeError("UNKNOWN: Gloo AllReduce failed: Connection reset by peer")
    except JaxRuntimeError:
      raise KeyError("cleanup")
  except KeyError as e:
    assert runtime.is_peer_failure(e)
  assert not runtime.is_peer_failure(TimeoutError("slow disk"))


def test_lost_peer_message_and_latest_checkpoint(tmp_path):
  d = tmp_path / "checkpoints"
  for name in ("4", "12", "16.orbax-checkpoint-tmp-3", "junk"):
    os.makedirs(d / name)
  assert runtime.latest_checkpoint(str(d)) == 12  # an unfinished save is not one
  assert runtime.latest_checkpoint(str(tmp_path / "none")) is None
  msg = runtime.lost_peer_message(16, 0, 4, str(d), "no heartbeat for 60 s")
  assert msg == (f"lost process 0 (the coordinator) of 4 during step 17 (no heartbeat for "
                 f"60 s); the latest checkpoint is step 12 in {d}; restart every process with "
                 "the same command to resume from the latest checkpoint")
  msg = runtime.lost_peer_message(None, None, 2, None, "x")
  assert msg.startswith("lost a peer process of 2 before the first step (x); no checkpoint")


def test_job_turns_a_peer_failure_into_one_line_and_exit(monkeypatch, capsys):
  codes = []
  monkeypatch.setattr(runtime, "_exit", codes.append)
  monkeypatch.setattr(runtime, "_distributed", lambda: True)
  monkeypatch.setattr(runtime.jax, "process_count", lambda: 2)
  records = []

  def broken(config, workdir):
    with runtime.job() as process:
      records.append(process)
      process.step = 6  # where its training loop reported it was (Process.progress)
      raise JaxRuntimeError("UNKNOWN: Gloo AllReduce failed: Connection closed by peer")
  with pytest.raises(JaxRuntimeError):  # _exit is stubbed, so the error goes on
    broken(None, None)
  assert codes == [3]  # the documented exit code of a lost peer (README)
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("cvrl: error: lost a peer process of 2 during step 7 "
                            "(JaxRuntimeError: UNKNOWN: Gloo AllReduce failed"), err

  def other(config, workdir):
    with runtime.job() as process:
      records.append(process)
      raise JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")
  with pytest.raises(JaxRuntimeError):
    other(None, None)
  assert codes == [3]  # not a lost peer: left alone
  # Each job its own record: the second job never saw the first one's step.
  assert records[0] is not records[1] and records[1].step is None
