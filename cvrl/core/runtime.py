"""What every job sets up where it runs, and how a multi-process job ends when a peer dies.

`with job() as process:` runs a job's body (each job's `run(config, workdir)`) with:

* JAX settings the jobs need, scoped to the job (importing cvrl changes no global JAX
  setting): random bits from the 'rbg' generator rather than threefry. XLA:CPU takes
  minutes to compile a model initialiser of a few dozen threefry draws (seconds with rbg),
  and rbg is the faster generator on TPU too; keys stay reproducible for a backend and seed.
* A lost peer. When one process of a multi-process run dies (killed, host lost), the
  survivors' next collective fails (gloo: "connection reset"), or hangs on some
  transports. Left alone, JAX's shutdown at exit then waits for the coordination service's
  heartbeat timeout and aborts with a C++ stack trace. Instead every survivor prints one
  line `cvrl: error: ...` (the step, the lost process when known, the latest checkpoint,
  and that restarting every process with the same command resumes) and exits with
  `LOST_PEER_EXIT` at once, skipping that shutdown. A heartbeat through the coordination
  service's key-value store catches a peer that stops without breaking a collective (a
  hang): stale for `CVRL_PEER_TIMEOUT_S` seconds (default 60) means lost.

`job()` makes one `Process` record per job and hands it to the job, which passes it to the
training loop; the loop reports its progress there (`Process.progress(step,
checkpoint_dir)`, which also starts the heartbeat once JAX is distributed). Nothing here is
module-level state: two jobs in one process keep their own records.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable, Iterator

import jax
import orbax.checkpoint as ocp

from cvrl.core import paths

LOST_PEER_EXIT = 3  # not 2: the config is fine, a machine is not
PRNG_IMPL = "rbg"
_HEARTBEAT_S = 5.0
# Messages of a collective or coordination call that failed because a peer went away.
_PEER_FAILURE_MARKERS = ("gloo", "connection reset", "connection refused", "broken pipe",
                         "socket closed", "unavailable", "heartbeat", "coordination service",
                         "deadline_exceeded", "nccl", "peer")

_exit = os._exit  # pylint: disable=protected-access  (replaced in tests)


def peer_timeout_s() -> float:
  return float(os.environ.get("CVRL_PEER_TIMEOUT_S", "60"))


def _distributed() -> bool:
  return jax.distributed.is_initialized() and jax.process_count() > 1


def is_peer_failure(exc: BaseException | None) -> bool:
  """A JAX runtime error that says a collective or the coordination service lost a peer,
  or an error raised because of one (orbax's barrier timeout, caused by such an error)."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, RuntimeError) and type(exc).__name__ in ("JaxRuntimeError",
                                                               "XlaRuntimeError"):
      text = str(exc).lower()
      if any(m in text for m in _PEER_FAILURE_MARKERS):
        return True
    exc = exc.__cause__ or exc.__context__
  return False


def peer_lost(exc: BaseException | None) -> bool:
  """`exc` ended a multi-process job because a peer went away."""
  return exc is not None and _distributed() and is_peer_failure(exc)


def latest_checkpoint(directory: str | None) -> int | None:
  """Newest finished checkpoint step in `directory` (unfinished saves have other names)."""
  if not directory:
    return None
  try:
    steps = [int(p.name) for p in paths.as_path(directory).iterdir() if p.name.isdigit()]
  except Exception:  # pylint: disable=broad-except  (no folder, or its store unreachable)
    return None
  return max(steps) if steps else None


def lost_peer_message(step, lost, num_processes, checkpoint_dir, cause: str) -> str:
  """The one line a survivor prints."""
  who = f"process {lost}" if lost is not None else "a peer process"
  if lost == 0:
    who += " (the coordinator)"
  at = f"during step {step + 1}" if step is not None else "before the first step"
  ckpt = latest_checkpoint(checkpoint_dir)
  where = (f"the latest checkpoint is step {ckpt} in {checkpoint_dir}" if ckpt is not None
           else "no checkpoint was written yet")
  return (f"lost {who} of {num_processes} {at} ({cause}); {where}; restart every process "
          "with the same command to resume from the latest checkpoint")


class Process:
  """One job's record of this process: the step its training loop reached and where it
  checkpoints (what the lost-peer line reports), and the heartbeat, started once JAX is
  distributed and marked done when the job returns."""

  def __init__(self):
    self.step: int | None = None
    self.checkpoint_dir: str | None = None
    self.heartbeat: _Heartbeat | None = None

  def progress(self, step: int, checkpoint_dir: str | None = None) -> None:
    """Called by the training loop each step, before running it."""
    self.step = int(step)
    if checkpoint_dir is not None:
      self.checkpoint_dir = checkpoint_dir
    if self.heartbeat is None and _distributed():
      self.heartbeat = _Heartbeat(self.stop)
      self.heartbeat.start()

  def stop(self, lost, cause: str) -> None:
    """The one line, then exit with LOST_PEER_EXIT (skipping JAX's shutdown)."""
    msg = lost_peer_message(self.step, lost, jax.process_count(), self.checkpoint_dir, cause)
    sys.stdout.flush()
    print(f"cvrl: error: {msg}", file=sys.stderr, flush=True)
    _exit(LOST_PEER_EXIT)

  def failed(self, exc: BaseException) -> None:
    """`exc` ended the job: `stop` if a peer was lost (the heartbeat guesses which)."""
    if peer_lost(exc):
      beat = self.heartbeat
      lost = beat.guess_lost(3 * _HEARTBEAT_S) if beat is not None else None
      self.stop(lost, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")

  def finish(self) -> None:
    """The job returned: peers no longer wait for this process's heartbeat."""
    if self.heartbeat is not None:
      self.heartbeat.done()
      self.heartbeat = None


class _Heartbeat(threading.Thread):
  """Every process bumps its counter in the coordination service's key-value store; a peer
  whose counter stops changing for the timeout, or a coordinator that stops answering, is
  lost (`on_lost(its index, why)`). 'done' marks a process that finished its job normally."""

  def __init__(self, on_lost: Callable[[int, str], None]):
    super().__init__(name="cvrl-heartbeat", daemon=True)
    self.on_lost = on_lost
    self.client = ocp.multihost.get_jax_distributed_client()  # its key-value store
    self.me, self.n = jax.process_index(), jax.process_count()
    self.seen: dict[int, tuple[str, float]] = {}
    self.finished = threading.Event()

  def key(self, p: int) -> str:
    return f"cvrl/heartbeat/{p}"

  def beat(self, value: str) -> None:
    self.client.key_value_set(self.key(self.me), value, allow_overwrite=True)

  def stale(self) -> list[int]:
    """Peers whose counter has not moved for the timeout (only after it was first seen)."""
    now, out = time.monotonic(), []
    for p in range(self.n):
      if p == self.me:
        continue
      try:
        value = self.client.key_value_try_get(self.key(p))
      except Exception:  # pylint: disable=broad-except  (not written yet)
        continue
      if value == "done":
        continue
      old = self.seen.get(p)
      if old is None or old[0] != value:
        self.seen[p] = (value, now)
      elif now - old[1] > peer_timeout_s():
        out.append(p)
    return out

  def run(self):
    count, failing_since = 0, None
    while not self.finished.is_set():
      try:
        count += 1
        self.beat(str(count))
        lost = self.stale()
        failing_since = None
      except Exception:  # pylint: disable=broad-except  (the service is unreachable)
        lost = []
        failing_since = failing_since or time.monotonic()
        if time.monotonic() - failing_since > peer_timeout_s():
          self.on_lost(0, "the coordination service stopped answering")
      if lost:
        self.on_lost(lost[0], f"no heartbeat for {peer_timeout_s():.0f} s")
      self.finished.wait(_HEARTBEAT_S)

  def done(self):
    self.finished.set()
    try:
      self.beat("done")
    except Exception:  # pylint: disable=broad-except
      pass

  def guess_lost(self, wait_s: float) -> int | None:
    """After a failed collective: the one peer whose counter does not move within
    `wait_s` (the others keep beating), or 0 if the coordinator no longer answers."""
    deadline = time.monotonic() + wait_s
    start = {}
    try:
      for p in range(self.n):
        if p != self.me:
          start[p] = self.client.key_value_try_get(self.key(p))
      while time.monotonic() < deadline:
        time.sleep(0.5)
        moved = {p for p, v in start.items() if self.client.key_value_try_get(self.key(p)) != v}
        if len(moved) == len(start) - 1:
          (still,) = set(start) - moved
          if time.monotonic() > deadline - wait_s / 2:
            return still
    except Exception:  # pylint: disable=broad-except
      return 0 if self.me != 0 else None
    return None


@contextlib.contextmanager
def job() -> Iterator[Process]:
  """`with runtime.job() as process:` around a job's body: its JAX settings, its own
  `Process` record (for its training loop), and a lost peer turned into one line and a
  prompt exit (see the module docstring). A context, not a wrapper of the job's `run`: the
  job's own frames call the engine directly."""
  process = Process()
  try:
    with jax.default_prng_impl(PRNG_IMPL):
      yield process
  except Exception as e:  # pylint: disable=broad-except
    process.failed(e)
    raise
  process.finish()
