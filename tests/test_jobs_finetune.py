"""Fine-tuning: two learning rates, dropout, the recipes, the job (synchronised BN over
devices and resume are tested on the engine, tests/test_engine_loop.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _downstream_toys import tiny_encoder
from cvrl import config_lib
from cvrl.core import parallel
from cvrl.engine import optim as optim_lib
from cvrl.engine import tasks
from cvrl.models.heads import EncoderHead, LinearClassifier
from cvrl.eval import features as F
from cvrl.jobs import finetune


def finetune_optimizer(optim_config, global_batch, total_steps, warmup_steps):
  """The fine-tune job's optimizer: what ClassifierTask.optimizer builds (two groups)."""
  tx, _, rates = optim_lib.make(optim_config, global_batch, total_steps, warmup_steps,
                                tasks.FINETUNE_GROUPS)
  return tx, rates


def optim(**kw):
  c = config_lib.finetune_config().optim
  c.update(dict(base_lr=0.1, head_lr=2.0, base_batch_size=8, weight_decay=0.0, momentum=0.9))
  c.update(kw)
  return c


def test_backbone_and_head_get_their_own_learning_rates():
  model = EncoderHead(tiny_encoder(), LinearClassifier(8, 4, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  labels = tasks.param_groups(params)
  assert set(jax.tree.leaves(labels["encoder"])) == {"backbone"}
  assert set(jax.tree.leaves(labels["head"])) == {"head"}
  tx, rates = finetune_optimizer(optim(), 16, total_steps=10, warmup_steps=0)
  assert rates == {"backbone": 0.2, "head": 4.0}  # linear scaling, batch 16 / 8
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for group, tree in (("backbone", updates["encoder"]), ("head", updates["head"])):
    for u in jax.tree.leaves(tree):
      np.testing.assert_allclose(np.asarray(u), -rates[group], rtol=1e-6)


def test_weight_decay_only_on_kernels():
  model = EncoderHead(tiny_encoder(), LinearClassifier(8, 4, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  tx, rates = finetune_optimizer(optim(weight_decay=0.5), 8, 10, 0)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  k = updates["head"]["dense"]["kernel"][...]
  np.testing.assert_allclose(np.asarray(k), -rates["head"] * 0.5 *
                             np.asarray(params["head"]["dense"]["kernel"][...]), rtol=1e-5)
  assert not np.any(np.asarray(updates["head"]["dense"]["bias"][...]))
  assert not np.any(np.asarray(updates["encoder"]["bn"]["scale"][...]))


def test_dropout_is_active_in_training_only(run_mesh):
  head = F.make_head(8, 4, normalize=False, dropout=0.5, seed=0)
  x = jnp.ones((16, 8))
  head.train()
  a, b = head(x), head(x)
  assert not np.allclose(a, b)  # fresh masks per call
  head.eval()
  np.testing.assert_allclose(head(x), head(x))
  with pytest.raises(ValueError, match="dropout"):
    c = config_lib.finetune_config()
    c.random_init = True
    c.finetune.dropout = 1.0
    finetune.parse(c)


def test_ucf101_and_hmdb51_recipes():
  from configs import ucf101_finetune  # pylint: disable=import-outside-toplevel
  c = ucf101_finetune.get_config("pretrained=/ckpt")
  assert c.job == "finetune" and c.data.source == "tfds" and c.data.num_classes == 101
  assert c.data.tfds_name.startswith("ucf101") and c.data.tfds_eval_split == "test"
  assert c.finetune.dropout == 0.5 and c.optim.head_lr > c.optim.base_lr
  h = ucf101_finetune.get_config("dataset=hmdb51,random_init=True")
  assert h.data.num_classes == 51 and h.data.source == "tfrecord" and h.random_init
  finetune.parse(c)
  with pytest.raises(ValueError, match="hmdb51"):
    ucf101_finetune.get_config("dataset=kinetics")


@pytest.mark.slow
def test_finetune_job_on_synthetic_data(tmp_path_factory, capsys):
  """The job on half the labelled videos (data.label_fraction): an epoch is an epoch of
  the subset, both learning rates, the whole network trained, the classifier saved."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from _downstream_toys import save_numpy_checkpoint, tiny_data  # pylint: disable=import-outside-toplevel
  from cvrl.eval import classifier_io  # pylint: disable=import-outside-toplevel
  data_dir = tmp_path_factory.mktemp("synthetic")
  work = tmp_path_factory.mktemp("runs")
  pre = tiny_data(config_lib.pretrain_config("cvrl"), data_dir, num_train=32)
  pre.objective.update(head_hidden=16, head_out=8, head_layers=1)
  saved_state = save_numpy_checkpoint(pre, str(work / "pretrain"))
  c = tiny_data(config_lib.finetune_config(), data_dir, num_train=32)  # 8 videos per class
  c.pretrained = str(work / "pretrain")
  c.data.label_fraction = 0.5  # 4 per class: 16 videos, 2 steps of 8 an epoch (not 4)
  c.batch_size = 8
  c.total_epochs, c.total_steps = 1, None
  c.warmup_epochs, c.warmup_steps = None, 0
  c.optim.update(base_lr=0.05, head_lr=0.5, base_batch_size=8)
  c.finetune.evaluate = False  # the multi-view test is evaluate's (tested there)
  c.checkpoint.every_steps = 1
  res = finetune.run(finetune.parse(c), str(work / "ft"))
  assert sorted(os.listdir(work / "ft" / "checkpoints")) == ["1", "2"]  # the engine's layout
  saved = json.load(open(work / "ft" / "results.json"))
  assert "test" not in saved["finetune"] and saved["metrics"]["train_accuracy"] >= 0
  assert saved["finetune"]["num_train_examples"] == 16
  assert res["finetune"]["train"]["total_steps"] == 2
  line = "data.label_fraction=0.5: 16 of 32 training videos kept, 4-4 per class"
  assert line in capsys.readouterr().out
  assert saved["finetune"]["train"]["learning_rates"] == {"backbone": 0.05, "head": 0.5}
  assert saved["checkpoint"] == c.pretrained and np.isfinite(res["metrics"]["train_loss"])
  with jax.set_mesh(parallel.make_mesh()):
    model, meta = classifier_io.load_classifier(str(work / "ft"))
  assert meta["dropout"] == 0.5
  want = nnx.to_pure_dict(saved_state)["encoder"]
  got = nnx.to_pure_dict(nnx.state(model.encoder))
  # The whole network trained: conv kernels and BN statistics moved away from the checkpoint.
  assert not np.allclose(got["stem"]["conv"]["kernel"], want["stem"]["conv"]["kernel"])
  assert not np.allclose(got["stem"]["bn"]["mean"], want["stem"]["bn"]["mean"])
