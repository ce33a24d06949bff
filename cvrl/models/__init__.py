"""Encoders and heads. `build_encoder(config.model)` is how every job makes its backbone."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cvrl.models import inputs
from cvrl.models.conv import IMPLS as CONV_IMPLS
from cvrl.models.r3d import DEPTHS, INPUTS, PRESETS, R3D

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def input_mode(cfg) -> str:
  """The encoder's input mode (config.model.input; a checkpoint's config from before the
  field has the default, 'rgb': cvrl.config_lib.filled)."""
  return cfg["input"]


def extra_frames(cfg) -> int:
  """Frames a clip needs beyond config.data.num_frames for this encoder: 1 for 'dif',
  'dif_std' and 'dif_pc' (frame differences).

  Every job that samples clips for an encoder asks this, so a DIF model is fed T + 1
  frames downstream exactly as in pretraining.
  """
  return inputs.extra_frames(input_mode(cfg))


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Fail with a one-line message naming the valid choices, before anything is traced."""
  if cfg.name != "r3d":
    raise ValueError(f"config.model.name must be one of ['r3d'], got {cfg.name!r}")
  if cfg.depth not in DEPTHS:
    raise ValueError(f"config.model.depth must be one of {sorted(DEPTHS)}, got {cfg.depth}")
  if cfg.preset not in PRESETS:
    raise ValueError(f"config.model.preset must be one of {sorted(PRESETS)}, got {cfg.preset!r}")
  if not float(cfg.width) > 0:
    raise ValueError(f"config.model.width must be > 0, got {cfg.width}")
  if cfg.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
  if cfg.conv_impl not in CONV_IMPLS:
    raise ValueError(f"config.model.conv_impl must be one of {list(CONV_IMPLS)}, "
                     f"got {cfg.conv_impl!r}")
  if input_mode(cfg) not in INPUTS:
    raise ValueError(f"config.model.input must be one of {list(INPUTS)}, got {input_mode(cfg)!r}")


def build_encoder(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> R3D:
  validate_model_config(cfg)
  return R3D(int(cfg.depth), float(cfg.width), cfg.preset, bn_momentum=cfg.bn_momentum,
             bn_eps=cfg.bn_eps, dtype=DTYPES[cfg.dtype], remat=bool(cfg.remat),
             conv_impl=cfg.conv_impl, input_mode=input_mode(cfg), rngs=rngs)


def create(make, out_shardings=None):
  """Builds the module `make()` returns with its initialisers compiled in one jit.

  Eager initialisation compiles every initialiser on its own (minutes for a deep net on
  CPU); here one program makes all parameters, placed by `out_shardings` if given.
  """
  abstract = nnx.eval_shape(make)
  graphdef, _ = nnx.split(abstract)
  state = jax.jit(lambda: nnx.split(make())[1], out_shardings=out_shardings)()
  return nnx.merge(graphdef, state)
