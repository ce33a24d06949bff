"""TCLR (Dave et al., CVIU 2022): temporal contrastive losses on a sparse clip and 4 dense clips.

Clips (the data pipeline's 'tclr' sampler, V = 10): views 0-4 = [sparse, dense0..dense3]
under augmentation A, views 5-9 the same clips under augmentation B. The sparse clip (16
frames at stride 4) spans the four dense clips (16 consecutive frames each) exactly.

Model: the 'tclr' R3D-18 (16 frames -> 4 timesteps), spatial pooling only; one MLP
512 -> 512 -> BN -> ReLU -> 128 -> BN, L2-normalised, applied to
- the sparse clip's pooled feature (global sparse representation, gsr),
- each of the sparse clip's 4 timesteps (local sparse representations, lsr),
- each dense clip's pooled feature (global dense representation, gdr).
As the reference, the encoder runs once per clip and the MLP once per representation
group, so each BatchNorm sees one group of B (set `bn_per_view=False` to batch them).

Losses (temperature 0.1, weights from the method's fields):
- instance: NT-Xent between the two augmentations' gsr over the batch (mean over the 2B
  anchors; each anchor's other 2B - 1 clips in the softmax);
- local-local: per video, NT-Xent between dense clips under A and under B (positive: the
  same clip, other augmentation; negatives: the other 3 clips, both augmentations), mean
  over its 8 anchors; summed over videos (`local_local_reduction='sum'`, the reference)
  or averaged ('mean');
- global-local: per video and each pair of augmentations (sparse a, dense b), the 4 x 4
  similarity between lsr timesteps and gdr clips, cross-entropy both ways with timestep i
  matching dense clip i: the sum over the 8 rows, averaged over videos and the 2
  directions, summed over the 4 augmentation pairs;
- dense instance (weight 1 by default, as the reference code): NT-Xent over the batch
  between every ordered pair of distinct dense representations (56 pairs), / 4; the
  paper's total leaves it out (`dense_instance_weight=0` for that).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cvrl.models.heads import MLP, EncoderHead, l2_normalize
from cvrl.objectives import contrastive
from cvrl.objectives.base import Objective, defaults
from cvrl.objectives.views import apply_views

NUM_DENSE = 4
NUM_VIEWS = 2 * (1 + NUM_DENSE)
MASKED = -1e9



def nt_xent(z_a, z_b, temperature: float):
  """SimCLR NT-Xent between two views of N items: mean over the 2N anchors."""
  loss, _ = contrastive.info_nce_pair(z_a, z_b, temperature)
  return loss / 2.0


def local_local_loss(gdr, temperature: float, *, reduction: str = "sum"):
  """gdr [2, B, 4, D]: dense clips' representations under augmentations A and B."""
  if reduction not in ("sum", "mean"):
    raise ValueError(f"local_local_reduction must be 'sum' or 'mean', got {reduction!r}")
  per_video = jax.vmap(lambda a, b: nt_xent(a, b, temperature))(gdr[0], gdr[1])  # over videos
  return jnp.sum(per_video) if reduction == "sum" else jnp.mean(per_video)


def global_local_loss(lsr, gdr, temperature: float):
  """lsr [2, B, 4, D] sparse clip timesteps, gdr [2, B, 4, D] dense clips (per augmentation)."""
  lsr = l2_normalize(lsr.astype(jnp.float32))
  gdr = l2_normalize(gdr.astype(jnp.float32))
  b, steps = lsr.shape[1], lsr.shape[2]
  labels = jnp.arange(steps)
  total = 0.0
  for a in range(2):
    for d in range(2):
      sim = jnp.einsum("btd,bsd->bts", lsr[a], gdr[d]) / temperature  # [B, 4, 4]
      both = jnp.concatenate([sim, jnp.swapaxes(sim, 1, 2)], axis=0)  # [2B, 4, 4]
      logp = jax.nn.log_softmax(both, axis=-1)
      total = total - jnp.sum(logp[:, labels, labels]) / (2 * b)
  return total


def dense_instance_loss(gdr, temperature: float):
  """The reference's extra term: NT-Xent over the batch for every ordered pair of distinct
  dense representations (augmentation, clip), summed and divided by 4."""
  flat = jnp.reshape(jnp.swapaxes(gdr, 1, 2), (-1, *gdr.shape[1:2], gdr.shape[-1]))  # [8, B, D]
  pairs = [(i, j) for i in range(flat.shape[0]) for j in range(flat.shape[0]) if i != j]
  first = jnp.array([p[0] for p in pairs])
  second = jnp.array([p[1] for p in pairs])
  losses = jax.vmap(lambda a, b: nt_xent(a, b, temperature))(flat[first], flat[second])
  return jnp.sum(losses) / 4.0


def encode(model, video, *, per_view: bool):
  """video [B, 10, T, H, W, 3] -> (gsr [2, B, D], lsr [2, B, 4, D], gdr [2, B, 4, D])."""
  b, v = video.shape[:2]
  if v != NUM_VIEWS:
    raise ValueError(f"TCLR needs {NUM_VIEWS} clips per video (the 'tclr' sampler), got {v}")
  # The reference's call order: sparse A, sparse B, dense A 0-3, dense B 0-3.
  order = jnp.array([0, 5, 1, 2, 3, 4, 6, 7, 8, 9])

  def features(m, clips):
    fmap = m.encoder(clips, return_map=True)  # [N, T', H', W', C]
    steps = jnp.mean(fmap, axis=(2, 3))  # spatial pooling only
    return jnp.mean(steps, axis=1), steps

  pooled, steps = apply_views(model, features, video[:, order], per_view=per_view)
  if steps.shape[2] != NUM_DENSE:
    raise ValueError(f"TCLR's global-local loss needs {NUM_DENSE} output timesteps from the "
                     f"encoder, got {steps.shape[2]} (use the 'tclr' preset with 16 frames)")
  # MLP inputs in the reference's call order, one BN group each:
  # [gsr A, lsr A 0-3, gsr B, lsr B 0-3, gdr A 0-3, gdr B 0-3].
  groups = jnp.concatenate([pooled[:, 0:1], steps[:, 0], pooled[:, 1:2], steps[:, 1],
                            pooled[:, 2:]], axis=1)  # [B, 18, C]
  reps = apply_views(model, lambda m, x: l2_normalize(m.head(x)), groups, per_view=per_view)
  gsr = jnp.stack([reps[:, 0], reps[:, 5]])
  lsr = jnp.stack([reps[:, 1:5], reps[:, 6:10]])
  gdr = jnp.stack([reps[:, 10:14], reps[:, 14:18]])
  return gsr, lsr, gdr


class TCLR(Objective):
  """temperature; the MLP: head_layers hidden layers of head_hidden, then head_out; the
  loss terms' weights and local_local_reduction, bn_per_view: see the module docstring."""

  def __init__(self, encoder, run, *, temperature: float = 0.1, head_hidden: int = 512,
               head_layers: int = 1, head_out: int = 128, bn_per_view: bool = True,
               instance_weight: float = 1.0, local_local_weight: float = 1.0,
               global_local_weight: float = 1.0, dense_instance_weight: float = 1.0,
               local_local_reduction: str = "sum", **base_fields):
    super().__init__(encoder, run, **base_fields)
    if local_local_reduction not in ("sum", "mean"):
      raise ValueError("config.objective.local_local_reduction must be 'sum' or 'mean', got "
                       f"{local_local_reduction!r}")
    self.temperature, self.local_local_reduction = float(temperature), local_local_reduction
    self.head_hidden, self.head_layers = int(head_hidden), int(head_layers)
    self.head_out = int(head_out)
    self.bn_per_view = bool(bn_per_view)
    self.weights = {"instance": float(instance_weight), "local_local": float(local_local_weight),
                    "global_local": float(global_local_weight),
                    "dense_instance": float(dense_instance_weight)}

  def sampler(self):
    return {"name": "tclr"}

  def build(self, rngs):
    encoder = self.encoder_spec.build(rngs)
    head = MLP(encoder.num_features, self.head_hidden, self.head_out,
               num_hidden=self.head_layers, bn=True, bn_last=True, **self.encoder_spec.bn,
               rngs=rngs)
    return EncoderHead(encoder, head)

  def shown_views(self, video):
    names = [f"{kind} {aug}" for aug in "AB" for kind in
             ["sparse"] + [f"dense {i + 1}" for i in range(NUM_DENSE)]]
    return video, names

  def loss(self, model, batch, *, step, rng):
    gsr, lsr, gdr = encode(model, batch["video"], per_view=self.bn_per_view)
    return total_loss(gsr, lsr, gdr, self.temperature, self.weights,
                      reduction=self.local_local_reduction)


def total_loss(gsr, lsr, gdr, temperature: float, weights: dict, *, reduction: str = "sum"):
  """The weighted sum of the terms from the representations (see the module docstring):
  `weights` of 'instance', 'local_local', 'global_local' and 'dense_instance' (0: the
  term left out)."""
  t = temperature
  terms = {
      "instance": nt_xent(gsr[0], gsr[1], t),
      "local_local": local_local_loss(gdr, t, reduction=reduction),
      "global_local": global_local_loss(lsr, gdr, t),
  }
  if weights["dense_instance"]:
    terms["dense_instance"] = dense_instance_loss(gdr, t)
  loss = sum(weights[k] * terms[k] for k in terms)
  return loss, {f"loss_{k}": v for k, v in terms.items()}


def objective_config() -> dict:
  """config.objective fields for TCLR (Dave et al., CVIU 2022)."""
  return defaults(TCLR, "tclr")


make = TCLR  # the method's entry point (cvrl.core.discovery)
