"""Saving and loading a trained EncoderHead (probe or fine-tune) for the evaluate job.

DIR/model/ holds the whole classifier's variables (orbax), DIR/model.json what is needed
to rebuild it (encoder config, classes, head options), so `evaluate` needs only DIR.
"""
from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from cvrl import config_lib
from cvrl.core import parallel
from cvrl.core import paths
from cvrl.models import build_encoder
from cvrl.models.heads import LinearClassifier
from cvrl.models.heads import EncoderHead

MODEL_DIR = "model"
META = "model.json"
# Parameters and BN statistics; dropout's RNG streams are training-only and not saved.
SAVED = nnx.Any(nnx.Param, nnx.BatchStat)


def save_classifier(workdir: str, model: EncoderHead, model_config: ml_collections.ConfigDict,
                    *, num_classes: int, normalize: bool, dropout: float, source: dict) -> str:
  """Writes DIR/model (every variable of encoder and head) and DIR/model.json."""
  path = paths.as_path(workdir) / MODEL_DIR
  # Host copies: replicated parameters are small, and orbax's device-slice transfer
  # compiles one program per array (minutes for an R3D on CPU).
  state = jax.tree.map(lambda x: np.asarray(parallel.to_host(x)),
                       nnx.to_pure_dict(nnx.state(model, SAVED)))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, state, force=True)
  if jax.process_index() == 0:
    meta = dict(model=json.loads(model_config.to_json_best_effort()), num_classes=int(num_classes),
                normalize=bool(normalize), dropout=float(dropout), source=source)
    paths.write_json(paths.join(workdir, META), meta, indent=2, sort_keys=True)
  return str(path)


def load_classifier(run_dir: str) -> tuple[EncoderHead, dict]:
  """The classifier a probe or fine-tune run saved, replicated over the run's mesh, and its
  meta."""
  meta_path = paths.as_path(run_dir) / META
  if not meta_path.exists():
    raise FileNotFoundError(f"{meta_path} not found: evaluate.run_dir must be the workdir of a "
                            "finished probe or finetune job")
  meta = json.loads(meta_path.read_text())
  model_config = config_lib.filled_model(meta["model"])

  def make():
    encoder = build_encoder(model_config, nnx.Rngs(0))
    # Dropout is the identity at test time: rebuilt without it (and its RNG state).
    head = LinearClassifier(encoder.num_features, meta["num_classes"], normalize=meta["normalize"],
                            dropout=0.0, rngs=nnx.Rngs(0))
    return EncoderHead(encoder, head)

  abstract = nnx.eval_shape(make)
  graphdef, abstract_state = nnx.split(abstract, SAVED)
  sharding = parallel.replicated()
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        nnx.to_pure_dict(abstract_state))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(paths.as_path(run_dir) / MODEL_DIR, target)
  nnx.replace_by_pure_dict(abstract_state, restored)
  return nnx.merge(graphdef, abstract_state), meta
