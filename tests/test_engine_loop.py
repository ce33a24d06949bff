"""The training engine under fine-tuning and the linear probe: synchronised BN over 8
devices, exact resume, SIGKILL + restart, SIGTERM, the probe's L2 normalisation."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from _downstream_toys import TinyEncoder, encoder_numpy, save_numpy_checkpoint, tiny_data, \
    tiny_encoder, video_batches, clip_stream
from cvrl import config_lib
from cvrl.core import parallel
from cvrl.core import runtime
from cvrl.data import sources
from cvrl.engine import loop as engine
from cvrl.jobs import finetune
from cvrl.models import extra_frames
from cvrl.jobs import probe
from cvrl.engine import tasks
from cvrl.eval import features as F
from cvrl.engine import state as state_lib
from _processes import committed_steps, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(config, steps=4, every=2, batch=8):
  config.batch_size = batch
  config.total_epochs, config.total_steps = None, steps
  config.warmup_epochs, config.warmup_steps = None, 1
  config.optim.update(base_lr=0.05, base_batch_size=batch, weight_decay=1e-4)
  config.checkpoint.update(every_steps=every, keep=5, async_save=False)
  config.log.update(every_steps=1000, tensorboard=False)
  return config


def toy_stream(num_videos=32, batch=16, seed=0):
  return clip_stream(num_videos, batch, seed=seed, drift_per="step")


def plain(x):
  """numpy of an array; of its key data for a PRNG key (dropout's stream)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x)


def leaves(state):
  return [plain(x) for x in jax.tree.leaves(state_lib.full_state(state))]


def test_8_devices_give_the_1_device_step_1_loss_and_bn_statistics(tmp_path):
  """Synchronised BN through the engine: BN statistics and the loss over the global batch,
  whatever the device count (per-device BN on 8 devices would give other numbers)."""
  config = small(config_lib.finetune_config(), steps=1, every=1, batch=16)
  config.random_init = True
  config.optim.head_lr = 0.5
  outs = {}
  for n in (8, 1):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:n]), ("data",))
    task = tasks.ClassifierTask(
        tasks.Training(**config_lib.training(config)),
        make_encoder=lambda: TinyEncoder(8, rngs=nnx.Rngs(7)), num_classes=4,
        normalize=False, dropout=0.0, train_encoder=True, batches=toy_stream(),
        encoder_init=tiny_encoder(seed=7), groups=tasks.FINETUNE_GROUPS)
    process = runtime.Process()
    with jax.set_mesh(mesh):
      spec = engine.RunSpec(**config_lib.run_args(config))
      outs[n] = engine.run(task, spec, str(tmp_path / str(n)), total_steps=1, process=process)
    # The loop reports to the job's record it is given (what a lost peer's line names).
    assert (process.step, process.checkpoint_dir) == (0, outs[n]["checkpoint_dir"])
  assert outs[8]["last_step_metrics"]["loss"] == pytest.approx(
      outs[1]["last_step_metrics"]["loss"], rel=1e-6)
  bn = {n: nnx.state(outs[n]["model"].encoder.bn) for n in outs}
  for key in ("mean", "var"):
    np.testing.assert_allclose(np.asarray(bn[8][key][...]), np.asarray(bn[1][key][...]),
                               rtol=1e-5, atol=1e-7)
  # ... and they are the statistics of the whole batch of 16 videos (momentum 0.9).
  x = toy_stream()(0).__next__()["video"][:, 0]
  enc = tiny_encoder(seed=7)
  y = x.astype(np.float64) @ np.asarray(enc.dense.kernel[...]) + np.asarray(enc.dense.bias[...])
  want = 0.9 * np.asarray(enc.bn.mean[...]) + 0.1 * y.reshape(-1, 8).mean(0)
  np.testing.assert_allclose(np.asarray(bn[8]["mean"][...]), want, rtol=1e-4, atol=1e-6)


def test_tasks_declare_what_the_step_reads():
  """The step finishes clips (with config.data) for a task whose loss reads them, and hands
  a cached-feature task its batch as shipped: the task says so, not the batch's keys."""
  config = small(config_lib.probe_config(), steps=1, every=1, batch=16)
  training = tasks.Training(**config_lib.training(config))
  clips = tasks.ClassifierTask(training, make_encoder=lambda: TinyEncoder(8, rngs=nnx.Rngs(0)),
                               num_classes=4, normalize=False, dropout=0.0, train_encoder=False,
                               batches=toy_stream())
  features = tasks.FeatureHeadTask(training, num_features=8, num_classes=4, normalize=False,
                                   batches=toy_stream())
  assert (clips.input_key, features.input_key) == (engine.CLIPS, "features")
  assert engine.clip_data(clips, config.data) is config.data
  assert engine.clip_data(features, config.data) is None


def test_probe_head_trains_on_l2_normalised_features(tmp_path, run_mesh):
  """The trained probe is Dense(f / ||f||): its logits on the frozen features, in numpy."""
  config = small(config_lib.probe_config(), steps=3, every=3, batch=16)
  config.random_init = True
  enc = tiny_encoder(seed=3)
  head, _, _ = probe.train_probe(enc, probe.parse(config), num_classes=4,
                                 train_batches=toy_stream(), total_steps=3, warmup_steps=1, steps_per_epoch=2,
                                 workdir=str(tmp_path),
                                 make_encoder=lambda: TinyEncoder(8, rngs=nnx.Rngs(0)))
  b = video_batches(8, 8, seed=9)[0][0]
  f = encoder_numpy(enc, b["video"][:, 0])
  f = f / np.linalg.norm(f, axis=1, keepdims=True)
  want = f @ np.asarray(head.dense.kernel[...]) + np.asarray(head.dense.bias[...])
  got = nnx.jit(lambda h, e, x: h(e(x)))(head, F.frozen(enc), b["video"][:, 0])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def _resume_matches(run, config, workdir, last_step):
  """Runs to the end, truncates the last checkpoint's array files (a copy cut short),
  runs again: it resumes from the one before (the bad one set aside, saved again at its
  step), bitwise the same final state."""
  first = run(config, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  for root, _, files in os.walk(os.path.join(checkpoints, str(last_step), "model")):
    for f in files:
      if os.path.basename(root) == "d":
        os.truncate(os.path.join(root, f), 10)
  second = run(config, workdir)
  assert second["resumed"] and second["step"] == last_step
  assert {str(last_step), f"{last_step}.corrupt"} <= set(os.listdir(checkpoints))
  for a, b in zip(leaves(first["state"]), leaves(second["state"]), strict=True):
    np.testing.assert_array_equal(a, b)
  return first


@pytest.mark.slow
def test_finetune_from_a_checkpoint_and_the_end_to_end_probe_resume_exactly(tmp_path_factory):
  # On 2 of the 8 devices (the batch still split): ~0.6x the CPU time of 8; the step on 8
  # devices against 1 is the first test's.
  mesh = parallel.make_mesh(jax.devices()[:2])
  data_dir = tmp_path_factory.mktemp("synthetic")
  work = tmp_path_factory.mktemp("runs")
  pre = tiny_data(config_lib.pretrain_config("cvrl"), data_dir)
  pre.objective.update(head_hidden=16, head_out=8, head_layers=1)
  saved = save_numpy_checkpoint(pre, str(work / "pretrain"))

  ft = small(tiny_data(config_lib.finetune_config(), data_dir))
  ft.pretrained = str(work / "pretrain")
  sources.prepare(ft.data, ["train"])
  ft.optim.head_lr = 0.5

  def run_ft(config, workdir):
    job = finetune.parse(config)
    with jax.set_mesh(mesh):
      task, _, _ = finetune.make_task(job, 4)
      return engine.run(task, job.spec, workdir, total_steps=4, warmup_steps=1)
  first = _resume_matches(run_ft, ft, str(work / "ft"), 4)
  # It started from the checkpoint: the encoder moved from it, but kept its pattern.
  want = np.asarray(nnx.to_pure_dict(saved)["encoder"]["stem"]["conv"]["kernel"])
  got = np.asarray(first["model"].encoder.stem.conv.kernel[...])
  assert not np.array_equal(got, want)
  assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.5

  pr = small(tiny_data(config_lib.probe_config(), data_dir))
  pr.pretrained = str(work / "pretrain")
  pr.optim.base_lr = 1.0

  def run_probe(config, workdir):
    job = probe.parse(config)
    with jax.set_mesh(mesh):
      make, enc, mc, _ = F.encoder_source(**job.encoder)
      batches, _ = probe._datasets(job, extra_frames(mc))  # pylint: disable=protected-access
      return probe.train_probe(enc, job, num_classes=4, train_batches=batches,
                               total_steps=4, warmup_steps=1, steps_per_epoch=3,
                               workdir=workdir, make_encoder=make)[2]
  first = _resume_matches(run_probe, pr, str(work / "probe"), 4)
  # Frozen: the encoder is the checkpoint's, BN statistics included.
  got = nnx.to_pure_dict(nnx.state(first["model"].encoder))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               got, nnx.to_pure_dict(saved)["encoder"])


# --------------------------------------------------------------- the CLI, killed

STEPS, EVERY = 12, 4


def finetune_command(workdir, data_dir, cache, *extra):
  """configs/ucf101_finetune.py from scratch on synthetic videos, 1/8-width R3D-18 at 32 px."""
  return [sys.executable, "-m", "cvrl.main",
          "--config=configs/ucf101_finetune.py:random_init=True,epochs=3,batch=8,frames=4",
          f"--workdir={workdir}", "--config.data.source=synthetic",
          f"--config.data.synthetic.dir={data_dir}", "--config.data.synthetic.num_train_videos=32",
          "--config.data.synthetic.num_eval_videos=8", "--config.data.synthetic.num_frames=16",
          "--config.data.synthetic.size=32", "--config.data.num_classes=8",
          "--config.data.crop_size=32", "--config.data.eval_resize=32",
          "--config.data.eval_crop_size=32", "--config.model.depth=18",
          "--config.model.width=0.125", "--config.finetune.evaluate=False",
          "--config.finetune.save_model=False", "--config.log.every_steps=2",
          f"--config.checkpoint.every_steps={EVERY}",
          f"--config.parallel.compilation_cache_dir={cache}", *extra]


def start(cmd):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def saved_model(workdir, step):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("model",),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    out = m.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  return [plain(x) for x in jax.tree.leaves(out.model)]


@pytest.mark.slow
def test_finetune_cli_sigkill_restart_and_sigterm(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("synthetic"))
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  ref = str(tmp_path_factory.mktemp("reference"))
  proc = start(finetune_command(ref, data_dir, cache))
  out = proc.communicate(timeout=1200)[0]
  assert proc.returncode == 0 and committed_steps(ref)[-1] == STEPS, out[-3000:]
  assert json.load(open(os.path.join(ref, "results.json")))["finetune"]["train"]["total_steps"] \
      == STEPS
  assert "ETA" in out and len(out.splitlines()) < 30, out  # cvrl's lines, no orbax INFO

  killed = str(tmp_path_factory.mktemp("killed"))
  proc = start(finetune_command(killed, data_dir, cache))
  assert wait_for(lambda: EVERY in committed_steps(killed), proc), proc.communicate()[0][-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert STEPS not in committed_steps(killed)
  proc = start(finetune_command(killed, data_dir, cache))
  out = proc.communicate(timeout=1200)[0]
  assert proc.returncode == 0 and "resumed from" in out, out[-3000:]
  for a, b in zip(saved_model(ref, STEPS), saved_model(killed, STEPS), strict=True):
    np.testing.assert_array_equal(a, b)

  termed = str(tmp_path_factory.mktemp("termed"))
  proc = start(finetune_command(termed, data_dir, cache, "--config.checkpoint.every_steps=1000"))
  metrics = os.path.join(termed, "metrics.jsonl")
  assert wait_for(lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0, proc)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-3000:]
  steps = committed_steps(termed)
  assert len(steps) == 1 and 0 < steps[0] < STEPS, (steps, out[-2000:])
