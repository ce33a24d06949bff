"""Input on the tf.data service: the host pipeline run by CPU-only workers.

With `config.data.service = 'HOST:PORT'` (a dispatcher's address; '' = read on this host),
`cvrl.data.pipeline.build_dataset` builds the same tf.data graph as always (read -> parse
-> sample -> decode -> augment -> batch) and hands it to the dispatcher
(`tf.data.experimental.service.distribute`); the workers run it and this host only reads
finished batches. Every job (pretraining, probe, fine-tune, evaluators) reads through
build_dataset, so every job's input moves. The batches' content does not depend on where
the graph runs: every random op is stateless and seeded from (run seed, example id,
epoch, view), so a clip decoded on a worker is byte-equal to the clip this host would
have decoded (tests/test_data_service.py checks it).

Processing mode: ShardingPolicy.DYNAMIC, for training and evaluation alike.
  * OFF would make every worker produce the whole stream: with the pipeline's seeded,
    per-host-deterministic stream, two workers give every batch twice.
  * FILE / DATA / HINT (static sharding) need the dispatcher to know the fixed list of
    workers in advance, a dead worker's shard is missing until it is back (and then starts
    over: read twice); FILE finds no file list at the top of this graph (files are listed
    per epoch, inside a flat_map), and DATA makes every worker decode everything and keep
    1/N of it (no speed-up: decoding is the cost).
  * DYNAMIC: the dispatcher hands out splits of the graph's source, the epoch counter
    (`Dataset.range(start_epoch, ...)`), one split = one epoch (this process's rows of the
    global batches that start in it, cvrl.data.order). A worker produces whole epochs,
    each exactly as the local pipeline would (same order, clips, augmentation, label,
    example id); N workers produce N epochs at once and this host
    reads their batches as they come. Workers can join or leave at any time, no list.
    Visitation is "at most once": no example of an epoch is ever produced twice; when a
    worker dies, the rest of the epoch it was producing is lost (the others go on; one
    warning line here). An evaluation pass is one epoch: one worker produces it whole,
    padded and masked exactly as locally (each video once).
Under the service the batches' running problem counts (`stats`) are each worker's own.
Batches travel uncompressed (compression=None): decoded, augmented uint8 clips compress
poorly and compressing costs CPU on the workers and on the trainer host, the two things
the service is there to spare (bench_input --service, 1 local worker: 43 clips/s with
the default snappy, 48.5 without). The network carries T x H x W x 3 bytes per clip
(2.4 MB at 16 x 224 x 224): 2.4 GB/s per accelerator at 1,000 clips/s.

What a restart resumes: per epoch. Locally a run resumed at step s reads global batch s on
(exact). Here the run starts a new job whose source begins at the epoch batch s starts in,
its batches before s left out (as locally). With one worker that is exactly the local
resume; with N workers the run before the restart had read parts of up to N epochs at once,
so around the restart point some of their examples are read again or not at all (as many
examples in all as an uninterrupted run; every epoch after the in-flight ones exactly once).

Processes (each prints one line when ready and exits 0 on SIGTERM):
  python -m cvrl.data.service dispatcher --port=P [--work_dir=DIR]
  python -m cvrl.data.service worker --dispatcher=HOST:P --port=Q [--host=NAME]
With --work_dir the dispatcher is fault tolerant: its state is journalled there and a
restarted dispatcher carries on its jobs. Workers and the trainer must see the same data
paths (e.g. gs://...; the synthetic source's `prepare`, called by the job, writes its files
where the trainer runs: the workers build no pipeline, they run the trainer's).

Faults, seen from the trainer: a dispatcher that cannot be reached, or one with no
reachable worker, within data.service_timeout seconds (default 60) is one line and exit 2
(`cvrl: error: ...`), at the start (ConfigError) or mid-run (the watchdog below).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import weakref

from cvrl.core.errors import ConfigError
from cvrl.data.config import input_service_defaults

# A logger named cvrl.*: its lines pass cvrl's log filter (cvrl.core.cli.own_record).
log = logging.getLogger('cvrl.data.service')

PREFIX = 'cvrl.data.service: '
DEFAULT_TIMEOUT = input_service_defaults()['service_timeout']  # data.service_timeout's
_POLL = 1.0  # seconds between the watchdog's looks at the workers


def address(data_config) -> str:
  """The dispatcher's HOST:PORT of data.service ('' when input is local)."""
  value = str(data_config.service).strip()
  return value[len('grpc://'):] if value.startswith('grpc://') else value


def timeout(data_config) -> float:
  return float(data_config.service_timeout)


def enabled(data_config) -> bool:
  return bool(address(data_config))


def pass_batches(host_counts, process_index: int, batch_size: int) -> int | None:
  """Batches of one evaluation pass of this host (as pipeline._eval_batches makes them:
  the last padded, every host as many as the largest); None when the counts are unknown."""
  if not host_counts:
    return None
  count = max(host_counts) if len(host_counts) > 1 else host_counts[process_index]
  return -(-int(count) // int(batch_size))


def distribute(ds, data_config, batches: int | None = None):
  """`ds` read from the tf.data service of data.service (ShardingPolicy.DYNAMIC; the module
  docstring says why); `ds` itself when data.service is ''. Checks first that the
  dispatcher answers and has a reachable worker (ConfigError after data.service_timeout).

  batches: a finite pass's batch count (evaluation). The tf.data service client ends a
  finite job only when every worker's task has ended, and the task of a worker that died
  (even before the job began: the dispatcher keeps it listed) never does; the pass is one
  split, produced whole by one live worker, so the reader stops after its last batch.
  (A pass that drops records, e.g. undecodable frames, yields fewer: with a dead worker
  listed it would wait on it.)"""
  if not enabled(data_config):
    return ds
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  where, wait = address(data_config), timeout(data_config)
  check(where, wait)
  svc = tf.data.experimental.service
  out = ds.apply(svc.distribute(processing_mode=svc.ShardingPolicy.DYNAMIC,
                                service=f'grpc://{where}', compression=None))
  if batches is not None:
    out = out.take(batches)
  _watchdog(where, wait).arm(out)
  return out


# ----------------------------------------------------------------------- the dispatcher

def _varint(data: bytes, i: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[i]
    i += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, i


def _fields(data: bytes):
  """(field number, wire type, value) of a protobuf message's wire bytes."""
  i = 0
  while i < len(data):
    key, i = _varint(data, i)
    kind = key & 7
    if kind == 0:
      value, i = _varint(data, i)
    elif kind == 2:
      size, i = _varint(data, i)
      value, i = data[i:i + size], i + size
    elif kind in (1, 5):
      size = 8 if kind == 1 else 4
      value, i = data[i:i + size], i + size
    else:
      raise ValueError(f'wire type {kind}')
    yield key >> 3, kind, value


def list_workers(where: str, wait: float = 5.0) -> list[str]:
  """Addresses of the workers registered with the dispatcher at `where` (its GetWorkers
  RPC; a dead worker stays listed). Raises grpc.RpcError when it does not answer."""
  import grpc  # pylint: disable=import-outside-toplevel
  with grpc.insecure_channel(where) as channel:
    call = channel.unary_unary('/tensorflow.data.DispatcherService/GetWorkers',
                               request_serializer=lambda x: x,
                               response_deserializer=lambda x: x)
    reply = call(b'', timeout=wait, wait_for_ready=True)
  out = []
  for number, kind, info in _fields(reply):  # repeated WorkerInfo workers = 1
    if number == 1 and kind == 2:
      out += [v.decode() for n, k, v in _fields(info) if n == 1 and k == 2]  # address = 1
  return out


def reachable(where: str, wait: float = 1.0) -> bool:
  """Whether a gRPC server (dispatcher or worker) accepts a connection at `where`."""
  import grpc  # pylint: disable=import-outside-toplevel
  with grpc.insecure_channel(where) as channel:
    try:
      grpc.channel_ready_future(channel).result(timeout=wait)
      return True
    except grpc.FutureTimeoutError:
      return False


def live_workers(where: str, wait: float = 1.0) -> list[str]:
  return [w for w in list_workers(where, max(wait, 2.0)) if reachable(w, wait)]


def _hint(where: str) -> str:
  return (f'start one with `python -m cvrl.data.service worker --dispatcher={where} '
          "--port=PORT`, or set --config.data.service='' to read on this host")


def check(where: str, wait: float = DEFAULT_TIMEOUT) -> list[str]:
  """The dispatcher's reachable workers; ConfigError (one line) if the dispatcher does not
  answer, or has no reachable worker, within `wait` seconds."""
  import grpc  # pylint: disable=import-outside-toplevel
  deadline = time.monotonic() + wait
  if not reachable(where, wait):
    raise ConfigError(f'data.service: no tf.data service dispatcher answers at {where} '
                      f'(waited {wait:g} s); start it with `python -m cvrl.data.service '
                      "dispatcher --port=PORT`, or set --config.data.service='' to read on "
                      'this host')
  while True:
    try:
      workers = live_workers(where)
    except grpc.RpcError:
      workers = []
    if workers or time.monotonic() >= deadline:
      break
    time.sleep(0.5)
  if not workers:
    raise ConfigError(f'data.service: the tf.data service dispatcher at {where} has no '
                      f'reachable worker (waited {wait:g} s); {_hint(where)}')
  return workers


class _Watchdog:
  """While a distributed dataset of this process is alive (the thread ends when the last
  one is released): one warning line when a worker becomes unreachable (and an info line
  when it is back); when no worker (or no dispatcher) has been reachable for `wait`
  seconds, one line and exit 2: the tf.data service client would wait for ever."""

  def __init__(self, where: str, wait: float):
    self.where, self.wait = where, wait
    self._armed = 0
    self._lock = threading.Lock()
    self._thread = None
    self._stop = threading.Event()

  def arm(self, dataset) -> None:
    with self._lock:
      self._armed += 1
      weakref.finalize(dataset, self._disarm)
      if self._thread is None:
        self._thread = threading.Thread(target=self._run, name='cvrl_data_service', daemon=True)
        self._thread.start()

  def _disarm(self) -> None:
    with self._lock:
      self._armed -= 1

  @property
  def armed(self) -> bool:
    return self._armed > 0

  def stop(self) -> None:
    self._stop.set()

  def _running(self) -> bool:
    """False, and the thread forgotten (the next arm starts one), once no dataset is left."""
    with self._lock:
      if not self.armed:
        self._thread = None
      return self.armed

  def _run(self) -> None:
    import grpc  # pylint: disable=import-outside-toplevel
    known: set[str] = set()
    last_ok = time.monotonic()
    while not self._stop.is_set() and self._running():
      try:
        listed = list_workers(self.where, 2.0)
        live = {w for w in listed if reachable(w, 1.0)}
      except grpc.RpcError:
        listed, live = [], set()
      for lost in sorted(known - live):
        log.warning('%sworker %s is unreachable; input goes on with %d worker(s) '
                        '(DYNAMIC sharding: the rest of the epoch it was producing is lost, '
                        'none is read twice)', PREFIX, lost, len(live))
      for back in sorted(live - known) if known else ():
        log.info('%sworker %s joined (%d worker(s))', PREFIX, back, len(live))
      known = live
      now = time.monotonic()
      if live or not self.armed:
        last_ok = now
      elif now - last_ok > self.wait:
        what = ('no reachable worker' if listed or reachable(self.where, 1.0) else
                'the dispatcher does not answer')
        sys.stdout.flush()
        print(f'cvrl: error: data.service: {what} at {self.where} for {self.wait:g} s '
              f'(data.service_timeout); {_hint(self.where)}', file=sys.stderr, flush=True)
        os._exit(2)  # pylint: disable=protected-access  (the input thread is stuck in C++)
      self._stop.wait(_POLL)


_WATCHDOGS: dict[str, _Watchdog] = {}


def stop_watchdogs() -> None:
  """Stops every watchdog of this process (e.g. before stopping the service in a test)."""
  while _WATCHDOGS:
    _WATCHDOGS.popitem()[1].stop()


def _watchdog(where: str, wait: float) -> _Watchdog:
  dog = _WATCHDOGS.get(where)
  if dog is None:
    dog = _WATCHDOGS[where] = _Watchdog(where, wait)
  dog.wait = wait
  return dog


# ----------------------------------------------------------------------------- launcher

def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_integer('port', None, 'Port to serve on (0: any free port).')
  flags.DEFINE_string('work_dir', '', 'dispatcher: journal its state here (fault tolerant: a '
                      'restarted dispatcher carries on its jobs).')
  flags.DEFINE_string('dispatcher', '', 'worker: the dispatcher, HOST:PORT.')
  flags.DEFINE_string('host', None, 'worker: the name trainers reach it by (default: this '
                      "machine's host name).")
  flags.DEFINE_float('timeout', DEFAULT_TIMEOUT, 'worker: seconds to wait for the dispatcher.')


def _serve(server, what: str, port: int) -> None:
  """Prints the ready line, then waits for SIGTERM / SIGINT; stops the server, exits 0."""
  import signal  # pylint: disable=import-outside-toplevel
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  print(f'{PREFIX}{what} ready on port {port}', flush=True)
  while not stop.wait(0.5):
    pass
  server.stop()
  print(f'{PREFIX}{what} on port {port} stopped', flush=True)


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  usage = ('usage: python -m cvrl.data.service dispatcher --port=P [--work_dir=DIR] | '
           'worker --dispatcher=HOST:P --port=Q')
  if len(argv) != 2 or argv[1] not in ('dispatcher', 'worker'):
    raise ConfigError(f'expected one command, dispatcher or worker; {usage}')
  if FLAGS.port is None or FLAGS.port < 0:
    raise ConfigError(f'--port is required; {usage}')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  svc = tf.data.experimental.service
  if argv[1] == 'dispatcher':
    if FLAGS.work_dir:
      os.makedirs(FLAGS.work_dir, exist_ok=True)
    config = svc.DispatcherConfig(port=FLAGS.port, work_dir=FLAGS.work_dir or None,
                                  fault_tolerant_mode=bool(FLAGS.work_dir))
    server = svc.DispatchServer(config)
    _serve(server, 'dispatcher', int(server.target.rsplit(':', 1)[1]))
    return
  where = FLAGS.dispatcher[len('grpc://'):] if FLAGS.dispatcher.startswith('grpc://') \
      else FLAGS.dispatcher
  if not where:
    raise ConfigError(f'--dispatcher=HOST:PORT is required; {usage}')
  if not reachable(where, FLAGS.timeout):
    raise ConfigError(f'no tf.data service dispatcher answers at {where} (waited '
                      f'{FLAGS.timeout:g} s); start it with `python -m cvrl.data.service '
                      'dispatcher --port=PORT`')
  host = FLAGS.host or socket.gethostname()
  server = svc.WorkerServer(svc.WorkerConfig(dispatcher_address=where, port=FLAGS.port,
                                             worker_address=f'{host}:%port%'))
  _serve(server, 'worker', int(server._address.rsplit(':', 1)[1]))  # pylint: disable=protected-access


if __name__ == '__main__':
  from cvrl.core import cli  # pylint: disable=ungrouped-imports
  _define_flags()
  cli.run(main)
