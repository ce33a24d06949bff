"""Procedural "object + action" videos: classes that hold through a whole video.

Why: in real action data (Kinetics, UCF101) the label is a property of the whole video:
what is there and what it does. Two clips of one video share it, which is what
instance discrimination across clips (CVRL, rho-methods) can learn. The older motion
source (`cvrl.data.sources.synthetic`, kind 'motion') draws each video's appearance at random and
labels only the motion direction, so a CVRL encoder solves its task by appearance and
learns nothing about the label; this source is the benchmark data for "does
self-supervised pretraining learn?" (experiments/bench_quality.py, the demo).

Each video shows one textured object over a textured background. Class `c` is the pair
  object = c % num_objects   what the object is: a shape with its own surface pattern
                             (disc/stripes, square/checks, triangle/dots, cross/rings)
  action = c // num_objects  how it moves: translate (straight, wrapping round the edges),
                             spin (rotate about its centre), oscillate (back and forth
                             along a line), orbit (circle a point)
with num_objects = min(4, num_classes) and ceil(num_classes / num_objects) actions (at
most 16 classes). Every class is unchanged by a horizontal flip, so the usual flip
augmentation keeps labels.

Nuisance factors, drawn per video independently of the label (what the paper's
augmentations are meant to make the encoder ignore, or what varies between videos of
one class in real data): the object's colour (its pattern is that colour against a
darker shade of it, so the pattern survives colour jitter and grayscale) and the
background's colours (colour jitter / grayscale), its position and the direction of its motion (crops,
flips), its scale (random resized crop), the background texture (a smooth random field),
the pattern's orientation and frequency, the speed (and sign) of the action, the
phase at which the video starts. The object (radius 0.3-0.4 of the frame) stands out
from a low-contrast background, and its pattern is coarse (1.2-1.8 periods per radius),
so shape and pattern survive a resized crop to 2/3 of the frame; version 2 (radius
0.2-0.3, 2-3 periods, two free colours, full-contrast background) was too fine for a
1/8-width R3D: trained supervised for 400 steps it reached 0.16 top-1 of 8 classes
(0.34-0.38 on version 3).

Videos are a pure function of (seed, video index); they are written as SequenceExample
shards by `cvrl.data.sources.synthetic.write_synthetic_shards` (config `data.synthetic.kind =
'objects'`), so they take the same pipeline as users' data.
"""
from __future__ import annotations

import numpy as np

OBJECTS = ("disc", "square", "triangle", "cross")
ACTIONS = ("translate", "spin", "oscillate", "orbit")
MAX_CLASSES = len(OBJECTS) * len(ACTIONS)
# Bumped when the videos change: written shards of an older version are rewritten.
VERSION = 4


def class_factors(num_classes: int) -> list[tuple[str, str]]:
  """(object, action) of each class."""
  if not 1 <= num_classes <= MAX_CLASSES:
    raise ValueError(f"the 'objects' synthetic data has 1 to {MAX_CLASSES} classes, "
                     f"got num_classes={num_classes}")
  n_obj = min(len(OBJECTS), num_classes)
  return [(OBJECTS[c % n_obj], ACTIONS[c // n_obj]) for c in range(num_classes)]


def class_name(label: int, num_classes: int) -> str:
  obj, action = class_factors(num_classes)[label]
  return f"{obj}_{action}"


def _smooth_field(rng, h, w, octaves=(2, 4, 8)) -> np.ndarray:
  """Smooth random field in [0, 1], [h, w] (sum of bilinearly upsampled noise)."""
  out = np.zeros((h, w))
  for o in octaves:
    coarse = rng.random((o + 1, o + 1))
    ys, xs = np.linspace(0, o, h), np.linspace(0, o, w)
    y0 = np.floor(ys).astype(int).clip(0, o - 1)
    x0 = np.floor(xs).astype(int).clip(0, o - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    out += (c[y0][:, x0] * (1 - fy) * (1 - fx) + c[y0 + 1][:, x0] * fy * (1 - fx)
            + c[y0][:, x0 + 1] * (1 - fy) * fx + c[y0 + 1][:, x0 + 1] * fy * fx) / o ** 0.5
  out -= out.min()
  return out / max(out.max(), 1e-6)


def _random_colour(rng) -> np.ndarray:
  """An RGB colour of random hue, saturation and brightness."""
  hue = rng.random()
  sat, val = rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0)
  rgb = np.clip(np.abs(((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6) - 3) - 1, 0, 1)
  return val * (1 - sat + sat * rgb)


def shape_mask(obj: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside test in the object's frame (u, v in units of its radius)."""
  if obj == "disc":
    return u ** 2 + v ** 2 < 1.0
  if obj == "square":
    return np.maximum(abs(u), abs(v)) < 0.8
  if obj == "triangle":  # equilateral, circumradius 1, apex up
    return (v > -0.5) & (np.sqrt(3) * abs(u) < 1.0 - v)
  if obj == "cross":
    return (((abs(u) < 0.33) & (abs(v) < 1.0)) | ((abs(v) < 0.33) & (abs(u) < 1.0)))
  raise ValueError(f"unknown object {obj!r}")


def pattern(obj: str, u: np.ndarray, v: np.ndarray, freq: float) -> np.ndarray:
  """The object's surface pattern in {0, 1}, in its frame (so it turns with it)."""
  k = np.pi * freq
  if obj == "disc":  # stripes
    return (np.sin(k * u) > 0).astype(np.float64)
  if obj == "square":  # checks
    return (np.sin(k * u) * np.sin(k * v) > 0).astype(np.float64)
  if obj == "triangle":  # dots
    return ((np.cos(k * u) + np.cos(k * v)) > 1.0).astype(np.float64)
  if obj == "cross":  # concentric rings
    return (np.sin(k * np.sqrt(u ** 2 + v ** 2)) > 0).astype(np.float64)
  raise ValueError(f"unknown object {obj!r}")


def trajectory(action: str, rng, num_frames: int, size: int):
  """Centre [T, 2] (y, x in pixels, may leave the frame: positions wrap) and rotation
  angle [T] of the object over the video, for one random draw of the nuisances."""
  t = np.arange(num_frames, dtype=np.float64)
  speed = rng.uniform(0.6, 1.4)  # a per-video tempo, shared by every action
  centre = rng.uniform(0.25, 0.75, 2) * size
  theta0 = rng.uniform(0, 2 * np.pi)
  direction = rng.uniform(0, 2 * np.pi)
  axis = np.array([np.sin(direction), np.cos(direction)])
  angle = np.full(num_frames, theta0)
  if action == "translate":
    pos = rng.uniform(0, size, 2) + np.outer(t, axis) * 1.2 * speed * size / 48.0
  elif action == "spin":
    omega = rng.choice((-1.0, 1.0)) * 0.22 * speed
    pos = np.repeat(centre[None], num_frames, 0)
    angle = theta0 + omega * t
  elif action == "oscillate":
    amp = rng.uniform(0.12, 0.2) * size
    omega = 2 * np.pi / 16.0 * speed
    pos = centre + np.outer(amp * np.sin(omega * t + rng.uniform(0, 2 * np.pi)), axis)
  elif action == "orbit":
    rad = rng.uniform(0.12, 0.2) * size
    omega = rng.choice((-1.0, 1.0)) * 2 * np.pi / 20.0 * speed
    phase = omega * t + rng.uniform(0, 2 * np.pi)
    pos = centre + rad * np.stack([np.sin(phase), np.cos(phase)], 1)
  else:
    raise ValueError(f"unknown action {action!r}")
  return pos, angle


# The difficulty settings (config `data.synthetic.difficulty`), each a nuisance of real
# video that the augmentations must remove or the encoder must learn to ignore:
#   colour   0: white object over a mid-grey background; 1: the object's and the
#            background's colours drawn at random per video (the colour shortcut of
#            SimCLR, Chen et al. 2020 sec. 3, unless colour jitter removes it).
#   contrast the pattern's dark colour is (1 - contrast) x its light one (1: black).
#   texture  0: a plain background; 1: a smooth random field between two random
#            colours (per-video scenes: the background bias of video SSL, Wang et al.,
#            "Background Erasing", CVPR 2021).
#   scale    (min, max) of the object's radius, as a fraction of the frame.
# The random draws are the same whatever the settings: changing one setting changes
# only its own nuisance in every video.
DIFFICULTY = {"colour": 0.0, "contrast": 1.0, "texture": 0.0, "scale": (0.3, 0.4)}


def check_difficulty(difficulty: dict | None) -> dict:
  """The full settings (DIFFICULTY, then `difficulty`); ValueError names a bad one."""
  d = dict(DIFFICULTY, **(difficulty or {}))
  unknown = sorted(set(d) - set(DIFFICULTY))
  if unknown:
    raise ValueError(f"data.synthetic.difficulty: unknown {unknown}; "
                     f"the settings are {sorted(DIFFICULTY)}")
  for k in ("colour", "texture"):
    if not 0.0 <= float(d[k]) <= 1.0:
      raise ValueError(f"data.synthetic.difficulty.{k} must be in [0, 1], got {d[k]}")
  if not 0.0 < float(d["contrast"]) <= 1.0:
    raise ValueError(f"data.synthetic.difficulty.contrast must be in (0, 1], got {d['contrast']}")
  lo, hi = (float(x) for x in d["scale"])
  if not 0.05 <= lo <= hi <= 0.5:
    raise ValueError("data.synthetic.difficulty.scale must be (min, max) with "
                     f"0.05 <= min <= max <= 0.5, got {tuple(d['scale'])}")
  return {"colour": float(d["colour"]), "contrast": float(d["contrast"]),
          "texture": float(d["texture"]), "scale": (lo, hi)}


def render_video(seed: int, index: int, label: int, num_classes: int, num_frames: int,
                 size: int, difficulty: dict | None = None) -> np.ndarray:
  """uint8 [num_frames, size, size, 3] of one video of class `label`; `difficulty`
  overrides DIFFICULTY's settings."""
  d = check_difficulty(difficulty)
  obj, action = class_factors(num_classes)[label]
  rng = np.random.default_rng([seed, index, 7])
  field = _smooth_field(rng, size, size)[..., None]
  grey, white = np.full(3, 0.5), np.ones(3)
  base = grey + d["colour"] * (_random_colour(rng) - grey)
  other = _random_colour(rng)
  background = base + d["texture"] * field * (other - base)
  # The pattern is the object's colour against a darker shade of it: a luminance
  # pattern, which colour jitter and grayscale keep.
  light = white + d["colour"] * (_random_colour(rng) - white)
  colours = np.stack([light, (1.0 - d["contrast"]) * light])
  radius = rng.uniform(*d["scale"]) * size
  freq = rng.uniform(1.2, 1.8)  # periods per radius: coarse enough to survive a crop
  pos, angle = trajectory(action, rng, num_frames, size)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  for t in range(num_frames):
    dy = (yy - pos[t, 0] + size / 2) % size - size / 2  # wrap-around distance
    dx = (xx - pos[t, 1] + size / 2) % size - size / 2
    c, s = np.cos(angle[t]), np.sin(angle[t])
    u, v = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
    inside = shape_mask(obj, u, v)
    tex = colours[pattern(obj, u, v, freq).astype(int)]
    img = np.where(inside[..., None], tex, background)
    frames[t] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
  return frames
