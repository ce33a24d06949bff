"""parallel.param_sharding='fsdp' on 8 fake devices: the rule, the same training as
replicated (LARS, AdamW, MoCo's key encoder and queue, BYOL's target), the state bytes a
device holds, and checkpoints across shardings and device counts."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from outside_cvrl import memory as memory_source
from cvrl import objectives
from cvrl.core import parallel
from cvrl.engine import checkpoint
from cvrl.engine import optim
from cvrl.engine import state as state_lib
from cvrl.jobs import pretrain
from cvrl.jobs import summary
from objective_checks import load_config
from test_engine_checkpoint import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def fsdp_config(name, optimizer, sharding):
  """configs/<name>_tiny.py on the tests' in-memory clips: 6 steps of 8 videos."""
  c = load_config(f"{name}_tiny", "steps=6")
  c.unlock()
  c.data.update(source=memory_source.NAME, num_train_examples=32)
  c.warmup_steps = 2
  if name == "moco":  # 16 keys a step fill the queue at once: updates from step 2
    c.objective.update(queue_size=16, momentum=0.9)
  c.optim.update(name=optimizer, weight_decay=1e-4,
                 base_lr={"adamw": 3e-4, "lars": 0.01}[optimizer])
  c.parallel.update(param_sharding=sharding, fsdp_min_kib=0.0)
  c.checkpoint.update(every_steps=100, async_save=False)
  return c


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state_lib.full_state(state))]


def on_device_0(tree) -> int:
  device = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == device)


def total_bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def train(tmp_path, name, optimizer, sharding):
  workdir = str(tmp_path / f"{name}_{optimizer}_{sharding}")
  out = pretrain.run(fsdp_config(name, optimizer, sharding), workdir)
  return workdir, out["state"]


@pytest.mark.slow
@pytest.mark.parametrize("name,optimizer", [("cvrl", "lars"), ("cvrl", "adamw"),
                                            ("moco", "lars"), ("byol", "lars")])
def test_fsdp_trains_as_replicated_on_a_device_eighth_of_the_state(tmp_path, name, optimizer):
  runs = {s: train(tmp_path, name, optimizer, s) for s in ("replicated", "fsdp")}
  (rep_dir, rep), (fsdp_dir, fsdp) = runs["replicated"], runs["fsdp"]
  assert len(losses(rep_dir)) == 5  # steps 2-6 (the first one includes compilation)
  np.testing.assert_allclose(losses(fsdp_dir), losses(rep_dir), rtol=1e-4, atol=1e-4)
  for a, b in zip(leaves(fsdp), leaves(rep), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # They trained: the momentum (LARS) or first moment (AdamW) is not all zero.
  assert max(np.abs(x).max() for x in jax.tree.leaves(rep.opt_state) if x.ndim) > 0
  for part in (fsdp.params, fsdp.opt_state, fsdp.rest):
    assert on_device_0(part) <= total_bytes(part) / 8 * 1.15
  assert on_device_0(rep.params) == total_bytes(rep.params)


RESTORE_ON_4 = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    sys.path.insert(0, "tests")
    from test_fsdp import fsdp_state
    from cvrl.engine import checkpoint
    target, graphdef, trainable = fsdp_state(abstract_only=True)
    ckpt = checkpoint.Checkpointer(sys.argv[1])
    state = ckpt.restore(target, graphdef, trainable)
    ckpt.close()
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    assert jax.device_count() == 4 and all("data" in s for s in specs), specs
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    np.savez(sys.argv[2], *leaves)
""")


def fsdp_state(abstract_only=False, mode="fsdp"):
  """The tiny checkpoint test's state, placed by `mode` on every device:
  (state or its abstract target, graphdef, trainable)."""
  objective = objectives.get(tiny_config())
  mesh = parallel.make_mesh()
  make = lambda: objective.build(nnx.Rngs(0))
  args = (make, objective.trainable, optax.sgd(0.1, momentum=0.9),
          parallel.state_placement(mesh, mode, 0.0))
  graphdef, out = (state_lib.abstract if abstract_only else state_lib.create)(*args)
  return out, graphdef, objective.trainable


@pytest.mark.slow
def test_fsdp_checkpoint_restores_replicated_loads_pretrained_and_resumes_on_4_devices(tmp_path):
  state, graphdef, trainable = fsdp_state()
  state = state.replace(step=state.step + 3,
                        opt_state=jax.tree.map(lambda x: x + 0.5, state.opt_state))
  assert on_device_0(state.params) <= total_bytes(state.params) / 8 * 1.15  # saved sharded
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(state, tiny_config())
  ckpt.close()
  want = [np.asarray(x) for x in jax.tree.leaves(state)]
  # fsdp -> replicated, on the same 8 devices
  target, _, _ = fsdp_state(abstract_only=True, mode="replicated")
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  restored = ckpt.restore(target, graphdef, trainable)
  ckpt.close()
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(restored))
  for a, b in zip(jax.tree.leaves(restored), want, strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)
  # pretrained= of probe and fine-tune: the model, replicated
  _, model = checkpoint.load_pretrained(str(tmp_path))
  for a, b in zip(jax.tree.leaves(state_lib.full_state(state)),
                  jax.tree.leaves(nnx.state(model)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # 8 -> 4 devices, fsdp on both
  out = str(tmp_path / "on4.npz")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_ENABLE_COMPILATION_CACHE="false")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", RESTORE_ON_4, str(tmp_path), out], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  on4 = np.load(out)
  assert len(on4.files) == len(want)
  for i, b in enumerate(want):
    np.testing.assert_array_equal(on4[f"arr_{i}"], b)



@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
def test_summary_states_the_bytes_device_0_holds(mode):
  config = tiny_config()
  config.job = "summary"
  config.data.update(num_frames=4, crop_size=16)
  config.parallel.update(param_sharding=mode, fsdp_min_kib=1.0, summary_devices=8)
  got = summary.summarize(config)["state_bytes_per_device"]
  objective = objectives.get(config)
  mesh = parallel.make_mesh()
  _, state = state_lib.create(lambda: objective.build(nnx.Rngs(0)), objective.trainable,
                              optim.build(config.optim, lambda count: 0.0),
                              parallel.state_placement(mesh, mode, 1.0))
  assert got["devices"] == 8 and got["param_sharding"] == mode
  assert got["params"] == on_device_0(state.params)
  assert got["optimizer"] == on_device_0(state.opt_state)
  assert got["rest"] == on_device_0(state.rest)
  assert (got["params"] < total_bytes(state.params) / 4) == (mode == "fsdp")
