"""A trained classifier survives save -> load (what the evaluate job reads)."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from _downstream_toys import numpy_filled
from cvrl.config_lib import default_model_config
from cvrl.core import parallel
from cvrl.models import build_encoder
from cvrl.models.heads import EncoderHead, LinearClassifier
from cvrl.eval import classifier_io


def test_round_trip_keeps_every_parameter_and_bn_statistic(tmp_path):
  cfg = default_model_config()
  cfg.update(depth=18, width=0.125, preset="r3d18", input="dif")  # a DIF 3DRotNet's
  model = numpy_filled(lambda: EncoderHead(
      build_encoder(cfg, nnx.Rngs(0)),
      LinearClassifier(64, 7, normalize=False, dropout=0.5, rngs=nnx.Rngs(1))), seed=9)
  classifier_io.save_classifier(str(tmp_path), model, cfg, num_classes=7, normalize=False,
                                dropout=0.5, source={"init": "pretrained", "checkpoint": "/c"})
  with jax.set_mesh(parallel.make_mesh()):
    loaded, meta = classifier_io.load_classifier(str(tmp_path))
  assert meta["num_classes"] == 7 and meta["dropout"] == 0.5 and meta["model"]["preset"] == "r3d18"
  assert meta["source"]["checkpoint"] == "/c"
  want = nnx.to_pure_dict(nnx.state(model, classifier_io.SAVED))
  got = nnx.to_pure_dict(nnx.state(loaded))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
  for x in jax.tree.leaves(nnx.state(loaded)):
    assert x.sharding.is_fully_replicated and len(x.sharding.device_set) == jax.device_count()
  assert loaded.head.dropout is None  # identity at test time, rebuilt without RNG state
  assert json.load(open(tmp_path / "model.json"))["normalize"] is False
  # The encoder's input travels with it: the evaluate job rebuilds a DIF encoder.
  assert meta["model"]["input"] == "dif" and loaded.encoder.input_mode == "dif"
  # model.json written before the field: an RGB encoder.
  meta_json = json.load(open(tmp_path / "model.json"))
  del meta_json["model"]["input"]
  with open(tmp_path / "model.json", "w") as f:
    json.dump(meta_json, f)
  with jax.set_mesh(parallel.make_mesh()):
    old, _ = classifier_io.load_classifier(str(tmp_path))
  assert old.encoder.input_mode == "rgb"


def test_missing_run_dir_says_what_it_needs(tmp_path):
  with pytest.raises(FileNotFoundError, match="probe or finetune"):
    classifier_io.load_classifier(str(tmp_path))
