"""parallel.param_sharding='fsdp' on 8 fake devices: the rule, the same training as
replicated (LARS, AdamW, MoCo's key encoder and queue, BYOL's target), the state bytes a
device holds, and checkpoints across shardings and device counts."""
import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from outside_cvrl import memory as memory_source
from cvrl import config_lib, objectives
from cvrl.core import parallel
from cvrl.engine import checkpoint
from cvrl.engine import input as input_lib
from cvrl.engine import loop as engine
from cvrl.engine import optim
from cvrl.engine import state as state_lib
from cvrl.engine import step_inputs
from cvrl.engine import tasks
from cvrl.jobs import summary
from objective_checks import load_config
from test_engine_checkpoint import tiny_config


def test_fsdp_rule_splits_the_largest_dimension_the_devices_divide():
  assert parallel.fsdp_spec((3, 3, 3, 64, 256), 4 * 3 * 3 * 3 * 64 * 256, 8) == \
      P(None, None, None, None, "data")
  assert parallel.fsdp_spec((24, 20), 4 * 24 * 20, 8) == P("data", None)  # 20 % 8 != 0
  assert parallel.fsdp_spec((12, 20), 4 * 12 * 20, 8) == P()  # no dimension divides
  assert parallel.fsdp_spec((64,), 256, 8, min_bytes=1024) == P()  # small: whole
  assert parallel.fsdp_spec((64,), 256, 1) == P()
  x = jax.ShapeDtypeStruct((16, 64), np.float32)
  assert parallel.leaf_spec(x, "replicated", 8) == P()
  assert parallel.bytes_per_device({"a": x, "b": jax.ShapeDtypeStruct((3,), np.float32)},
                                   "fsdp", 8, 0) == 16 * 64 * 4 // 8 + 12
  with pytest.raises(ValueError, match="param_sharding must be one of"):
    parallel.leaf_spec(x, "zero3", 8)


# AdamW at cvrl_tiny's own peak rate: elementwise, so fsdp is bit-identical to replicated.
# LARS at a low rate: its trust ratios differ by an ulp under fsdp (README).
RATES = {"adamw": 2e-3, "lars": 0.005}


def fsdp_config(name, optimizer, sharding, lr=None):
  """configs/<name>_tiny.py on the tests' in-memory clips: 6 steps of 8 videos."""
  c = load_config(f"{name}_tiny", "steps=6")
  c.unlock()
  c.data.update(source=memory_source.NAME, num_train_examples=32)
  c.warmup_steps = 2
  if name == "moco":  # 16 keys a step fill the queue at once: updates from step 2
    c.objective.update(queue_size=16, momentum=0.9)
  c.optim.update(name=optimizer, weight_decay=1e-4, base_lr=lr or RATES[optimizer])
  c.parallel.update(param_sharding=sharding, fsdp_min_kib=0.0)
  # The native convolution, as accelerators run it: XLA splits its step over the batch
  # (gradients all-reduced or reduce-scattered); the CPU's 'fold' lowering it does not.
  c.model.conv_impl = "native"
  # Every method on the tiny CVRL's encoder (what fsdp shards is the same kind of state):
  # r3d18's 3x3x3 convolutions, native, take ~6 s a step on the 8 CPU devices.
  c.model.preset = "cvrl"
  return c


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state_lib.full_state(state))]


def on_device_0(tree) -> int:
  device = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == device)


def total_bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


# Both shardings compile their step with these (LLVM's expensive passes off: half the
# compile time of the tests' steps; the same options for both, so the comparison is fair).
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def train_both(name, optimizer, lr=None):
  """{sharding: (losses, state)}: the engine's step (loop.abstract_step, what pretraining
  compiles) fed the in-memory stream for 6 steps, from one initial state (created
  replicated as pretraining creates it; fsdp starts from a sharded copy)."""
  configs = {s: fsdp_config(name, optimizer, s, lr) for s in ("replicated", "fsdp")}
  mesh = parallel.make_mesh()
  objective = objectives.method(**config_lib.method_args(configs["fsdp"]))
  fsdp = configs["fsdp"]
  task = tasks.PretrainTask(tasks.Training(**config_lib.training(fsdp)), fsdp.data, objective)
  with jax.set_mesh(mesh):
    parts = {s: engine.abstract_step(task, engine.RunSpec(**config_lib.run_args(c)),
                                     objective.sampler(),
                                     *config_lib.durations(c)) for s, c in configs.items()}
  _, state = state_lib.create(task.make_model, task.trainable, parts["fsdp"]["tx"],
                              parallel.state_placement(mesh))
  states = {"fsdp": jax.jit(lambda t: jax.tree.map(engine._copy, t),  # pylint: disable=protected-access
                            out_shardings=state_lib.shardings(parts["fsdp"]["state"]))(state),
            "replicated": state}
  return {s: steps(parts[s]["step"], states[s], task, configs[s], mesh) for s in configs}


def steps(step, state, task, config, mesh):
  """(losses, state) after config.total_steps steps of the in-memory stream."""
  batches, _ = task.batches(batch_size=config.batch_size, start_step=0, process_index=0,
                            process_count=1)
  losses = []
  with jax.set_mesh(mesh):
    for i in range(config.total_steps):
      batch = input_lib.global_batch(next(batches), mesh)
      if i == 0:
        step = step.lower(state, batch).compile(QUICK_COMPILE)
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
  return losses, state


@pytest.mark.slow
@pytest.mark.parametrize("name,optimizer", [("cvrl", "lars"), ("cvrl", "adamw"),
                                            ("moco", "lars"), ("byol", "lars")])
def test_fsdp_trains_as_replicated_on_a_device_eighth_of_the_state(name, optimizer):
  """fsdp ends 6 steps within 1e-4 of replicated: AdamW at its config's rate exactly (max
  |diff| 0). LARS's trust ratios differ by an ulp (the norms of sharded tensors are summed
  per shard, then across devices: another order of the same sum), which the steps grow:
  max |diff| of params / losses for CVRL is 7.6e-6 / 2.8e-4 at lr 0.005, 2.0e-5 / 9.3e-5 at
  0.01 and 6.7e-5 / 1.3e-5 at byol_tiny's 0.6."""
  runs = train_both(name, optimizer)
  (rep_losses, rep), (fsdp_losses, fsdp) = runs["replicated"], runs["fsdp"]
  np.testing.assert_allclose(fsdp_losses, rep_losses, rtol=1e-4, atol=1e-4)
  for a, b in zip(leaves(fsdp), leaves(rep), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # They trained: the momentum (LARS) or first moment (AdamW) is not all zero.
  assert max(np.abs(x).max() for x in jax.tree.leaves(rep.opt_state) if x.ndim) > 0
  for part in (fsdp.params, fsdp.opt_state, fsdp.rest):
    assert on_device_0(part) <= total_bytes(part) / 8 * 1.15
  assert on_device_0(rep.params) == total_bytes(rep.params)


def fsdp_state(abstract_only=False, mode="fsdp", devices=8):
  """The tiny checkpoint test's state, placed by `mode` on the first `devices` devices:
  (state or its abstract target, graphdef, trainable)."""
  objective = objectives.method(**config_lib.method_args(tiny_config()))
  mesh = parallel.make_mesh(jax.devices()[:devices])
  make = lambda: objective.build(nnx.Rngs(0))
  args = (make, objective.trainable, optax.sgd(0.1, momentum=0.9),
          parallel.state_placement(mesh, mode, 0.0))
  graphdef, out = (state_lib.abstract if abstract_only else state_lib.create)(*args)
  return out, graphdef, objective.trainable


def restored(workdir, mode, devices):
  target, graphdef, trainable = fsdp_state(abstract_only=True, mode=mode, devices=devices)
  ckpt = checkpoint.Checkpointer(workdir)
  state = ckpt.restore(target, graphdef, trainable)
  ckpt.close()
  return state


def test_fsdp_checkpoint_restores_replicated_loads_pretrained_and_resumes_on_4_devices(tmp_path):
  state, _, _ = fsdp_state()
  # Created sharded, the state holds what a replicated run starts from.
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(fsdp_state(mode="replicated")[0]),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  state = state.replace(step=state.step + 3,
                        opt_state=jax.tree.map(lambda x: x + 0.5, state.opt_state))
  assert on_device_0(state.params) <= total_bytes(state.params) / 8 * 1.15  # saved sharded
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(state, config_lib.as_dict(tiny_config()))
  ckpt.close()
  want = [np.asarray(x) for x in jax.tree.leaves(state)]
  # fsdp -> replicated, on the same 8 devices; 8 -> 4 devices, fsdp on both
  on8 = restored(str(tmp_path), "replicated", 8)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(on8))
  on4 = restored(str(tmp_path), "fsdp", 4)
  assert all(len(x.sharding.device_set) == 4 for x in jax.tree.leaves(on4))
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(on4.params)}
  assert all("data" in s for s in specs), specs
  for got in (on8, on4):
    for a, b in zip(jax.tree.leaves(got), want, strict=True):
      np.testing.assert_array_equal(np.asarray(a), b)
  # pretrained= of probe and fine-tune: the model, replicated
  _, model = checkpoint.load_pretrained(str(tmp_path))
  for a, b in zip(jax.tree.leaves(state_lib.full_state(state)),
                  jax.tree.leaves(nnx.state(model)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def summary_of(mode):
  """The summary job's figures of the tiny CVRL config on 8 devices, the step compiled
  (photometric ops on the host: a smaller step to compile)."""
  config = tiny_config()
  config.job = "summary"
  config.data.update(num_frames=4, crop_size=16, photometric="host")
  config.update(batch_size=16, total_steps=6, total_epochs=None, warmup_steps=1,
                warmup_epochs=None)
  config.parallel.update(param_sharding=mode, fsdp_min_kib=1.0, summary_devices=8,
                         summary_compile=True)
  return config, summary.summarize(summary.parse(config))


def test_summary_states_the_bytes_device_0_holds_and_the_compiled_steps_memory():
  got = {}
  for mode in ("replicated", "fsdp"):
    config, got[mode] = summary_of(mode)
    state_bytes = got[mode]["state_bytes_per_device"]
    objective = objectives.method(**config_lib.method_args(config))
    mesh = parallel.make_mesh()
    _, state = state_lib.create(lambda: objective.build(nnx.Rngs(0)), objective.trainable,
                                optim.build(config.optim, lambda count: 0.0),
                                parallel.state_placement(mesh, mode, 1.0))
    assert state_bytes["devices"] == 8 and state_bytes["param_sharding"] == mode
    assert state_bytes["params"] == on_device_0(state.params)
    assert state_bytes["optimizer"] == on_device_0(state.opt_state)
    assert state_bytes["rest"] == on_device_0(state.rest)
    assert (state_bytes["params"] < total_bytes(state.params) / 4) == (mode == "fsdp")
    memory = got[mode]["step_memory"]
    assert memory["compiled"] and memory["devices"] == 8 and memory["per_device_batch"] == 2
    for field in ("argument", "output", "temp"):
      assert memory[f"{field}_bytes"] > 0, field
    # The donated state comes back in place: its outputs alias its arguments.
    assert memory["alias_bytes"] >= state_bytes["total"]
  # The arguments are the state and one batch: fsdp saves what the state bytes say.
  rep, fsdp = (got[m]["step_memory"]["argument_bytes"] for m in ("replicated", "fsdp"))
  saved = (got["replicated"]["state_bytes_per_device"]["total"]
           - got["fsdp"]["state_bytes_per_device"]["total"])
  assert saved > 0.8 * rep
  assert rep - fsdp == pytest.approx(saved, rel=0.01)


def test_summary_says_in_one_line_when_it_cannot_compile(capsys):
  config = tiny_config()
  config.job = "summary"
  config.parallel.update(summary_devices=16, summary_compile=True)
  out = summary.summarize(summary.parse(config))
  assert not out["step_memory"]["compiled"]
  assert "summary_devices=16 but this process has 8 cpu devices" in out["step_memory"]["why"]
  assert out["state_bytes_per_device"]["devices"] == 16
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("warning: summary: step memory not compiled")
  config.parallel.update(summary_devices=8, summary_compile=False)
  assert summary.summarize(summary.parse(config))["step_memory"] == {
      "compiled": False, "why": "not compiled (parallel.summary_compile=False)"}
