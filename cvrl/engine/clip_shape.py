"""The clip shape a downstream job feeds an encoder: frames, stride and crop size.

The downstream configs (cvrl.config_lib, cvrl.data.config.from_checkpoint) leave `data.num_frames`, `data.stride`,
`data.crop_size` and the test sizes `data.eval_resize` / `data.eval_crop_size` at None:
"as the encoder was trained". `resolved(data, encoder, run_dir)` gives the shape the job
uses (a `ClipShape`, from `reference` and `resolve`); the job runs on a copy of its data and
record with that shape (`shape.applied(data, record)`), its config left as given:
- from the config stored in the checkpoint (`config.pretrained`);
- for the evaluate job's multi-view test, from the probe / fine-tune run that trained the
  classifier (`evaluate.run_dir`: its results.json), test sizes included;
- with neither (random init), from the data defaults.
The test sizes otherwise follow the crop size. A value the user set (in the config file or
as --config.data.KEY=V) is kept; one that differs from the checkpoint's is allowed, with
a warning line. One line says which shape the job uses.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from cvrl import config_lib
from cvrl.core import paths
from cvrl.data.config import CLIP_FIELDS, TEST_FIELDS, default_data_config
from cvrl.engine import checkpoint
from cvrl.engine import metrics


def reference(*, pretrained: str, pretrained_step: int | None, random_init: bool,
              run_dir: str) -> tuple[dict | None, str, bool]:
  """(data config the encoder was trained with, where from, whether its test sizes count)
  of a downstream job's encoder: the checkpoint `pretrained` (at `pretrained_step`) unless
  `random_init`, else the run in `run_dir` that trained the classifier the multi-view test
  reads ('': none); (None, 'the data defaults', False) without one."""
  if pretrained and not random_init:
    directory, step = checkpoint.find(pretrained, pretrained_step)
    data = checkpoint.load_config(directory, step).data.to_dict()
    return data, f"the checkpoint {pretrained} (step {step})", False
  path = paths.as_path(paths.join(run_dir, "results.json")) if run_dir else None
  if path is not None and path.is_file():
    data = config_lib.filled(json.loads(path.read_text())["config"]).data.to_dict()
    return data, f"the classifier's run {run_dir}", True
  return None, "the data defaults (no checkpoint)", False


@dataclasses.dataclass(frozen=True)
class ClipShape:
  """The clip shape a downstream job uses (data.CLIP_FIELDS + TEST_FIELDS), where it comes
  from, and the fields set unlike the checkpoint's."""
  num_frames: int
  stride: int
  crop_size: int
  eval_resize: int
  eval_crop_size: int
  origin: str
  differs: tuple = ()

  def as_dict(self) -> dict:
    """What results.json records as `clip_shape`."""
    return dict(dataclasses.asdict(self), differs=list(self.differs))

  def applied(self, data, record: dict) -> tuple[Any, dict]:
    """(a copy of `data` (config.data) with this shape, a copy of `record` (the config as
    JSON values, config_lib.as_dict) with that data): what the job runs on and records;
    `data` and `record` left as given."""
    out = copy.deepcopy(data)
    for key in CLIP_FIELDS + TEST_FIELDS:
      out[key] = getattr(self, key)
    return out, {**record, "data": config_lib.as_dict(out)}


def resolve(data, ref: tuple[dict | None, str, bool], say=None) -> ClipShape:
  """The shape of the clips of `data` (config.data): its unset fields filled from `ref`
  (`reference`'s; module docstring), `data` unchanged. Says which shape the job uses in
  one line (and one warning line for a shape unlike the checkpoint's)."""
  say = say or metrics.say  # process 0 only
  ref, origin, ref_eval = ref
  sizes, taken, differs = _sizes(data, ref, ref_eval)
  if len(taken) == len(CLIP_FIELDS) or (ref_eval and taken):
    how = f"from {origin}"
  elif not taken:
    how = f"as set in the config{'' if differs or not ref else ', as in ' + origin}"
  else:
    how = f"{', '.join(taken)} from {origin}, the rest as set in the config"
  say(f"clip shape: {_shape(sizes)}, tested at {sizes['eval_crop_size']} px (shorter side "
      f"{sizes['eval_resize']}); {how}")
  if differs:
    say(f"warning: clip shape unlike {origin}: {', '.join(differs)}; allowed, but the "
        "encoder was not trained on it (leave data.num_frames / stride / crop_size unset "
        "to use the checkpoint's)")
  return ClipShape(**sizes, origin=origin, differs=tuple(differs))


def resolved(data, encoder: dict, run_dir: str = "", say=None) -> ClipShape:
  """The shape of a downstream job's clips of `data` (config.data) for its `encoder`
  (config_lib.encoder_args: the checkpoint or random init) or the classifier trained in
  `run_dir` ('': none), as `resolve` says it."""
  return resolve(data, reference(
      pretrained=encoder["pretrained"], pretrained_step=encoder["pretrained_step"],
      random_init=encoder["random_init"], run_dir=run_dir), say)


def _sizes(data, ref: dict | None, ref_eval: bool) -> tuple[dict, list, list]:
  """(every shape field, the fields taken from `ref` or the defaults, the set fields
  unlike `ref`'s) of `data`; the test sizes follow the crop size unless set or taken."""
  defaults = default_data_config()
  sizes, taken, differs = {}, [], []
  for key in CLIP_FIELDS + (TEST_FIELDS if ref_eval else ()):
    theirs = None if ref is None else ref[key]
    sizes[key] = data[key]
    if sizes[key] is None:
      sizes[key] = int(theirs if theirs is not None else defaults[key])
      taken.append(key)
    elif theirs is not None and int(sizes[key]) != int(theirs):
      differs.append(f"{key} {sizes[key]} (trained on {theirs})")
  for key in TEST_FIELDS:
    if sizes.get(key) is None:
      sizes[key] = data[key] if data[key] is not None else int(sizes["crop_size"])
  return sizes, taken, differs


def _shape(sizes: dict) -> str:
  return f"{sizes['num_frames']} frames at stride {sizes['stride']}, " \
         f"{sizes['crop_size']} px crops"
