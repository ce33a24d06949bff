"""The clip shape a downstream job feeds an encoder: frames, stride and crop size.

The downstream configs (cvrl.config_lib, cvrl.data.config.from_checkpoint) leave `data.num_frames`, `data.stride`,
`data.crop_size` and the test sizes `data.eval_resize` / `data.eval_crop_size` at None:
"as the encoder was trained". `resolve` fills them in before the job reads any data:
- from the config stored in the checkpoint (`config.pretrained`);
- for the evaluate job's multi-view test, from the probe / fine-tune run that trained the
  classifier (`evaluate.run_dir`: its results.json), test sizes included;
- with neither (random init), from the data defaults.
The test sizes otherwise follow the crop size. A value the user set (in the config file or
as --config.data.KEY=V) is kept; one that differs from the checkpoint's is allowed, with
a warning line. One line says which shape the job uses.
"""
from __future__ import annotations

import json

from cvrl.core import paths
from cvrl.data.config import CLIP_FIELDS, TEST_FIELDS, default_data_config
from cvrl.engine import checkpoint
from cvrl.engine import metrics

def reference(config) -> tuple[dict | None, str, bool]:
  """(data config the encoder was trained with, where from, whether its test sizes count)
  for a downstream job's config; (None, 'the data defaults', False) without one."""
  if config.get("pretrained") and not config.get("random_init"):
    directory, step = checkpoint.find(config.pretrained, config.get("pretrained_step"))
    data = checkpoint.load_config(directory, step).data.to_dict()
    return data, f"the checkpoint {config.pretrained} (step {step})", False
  e = config.get("evaluate")
  run_dir = e.get("run_dir") if e is not None and e.get("mode") == "multiview" else ""
  path = paths.as_path(paths.join(run_dir, "results.json")) if run_dir else None
  if path is not None and path.is_file():
    data = json.loads(path.read_text()).get("config", {}).get("data")
    if data:
      return data, f"the classifier's run {run_dir}", True
  return None, "the data defaults (no checkpoint)", False


def resolve(config, say=None) -> dict:
  """Fills the unset shape fields of `config.data` in place (module docstring) and says
  which shape the job uses in one line (and one warning line for a shape unlike the
  checkpoint's). Returns the shape, its origin and the differences."""
  say = say or metrics.say  # process 0 only
  data = config.data
  ref, origin, ref_eval = reference(config)
  defaults = default_data_config()
  taken, differs = [], []
  for key in CLIP_FIELDS + (TEST_FIELDS if ref_eval else ()):
    theirs = None if ref is None else ref.get(key)
    if data.get(key) is None:
      data[key] = int(theirs if theirs is not None else defaults[key])
      taken.append(key)
    elif theirs is not None and int(data.get(key)) != int(theirs):
      differs.append(f"{key} {data.get(key)} (trained on {theirs})")
  for key in TEST_FIELDS:
    if data.get(key) is None:
      data[key] = int(data.crop_size)
  if len(taken) == len(CLIP_FIELDS) or (ref_eval and taken):
    how = f"from {origin}"
  elif not taken:
    how = f"as set in the config{'' if differs or not ref else ', as in ' + origin}"
  else:
    how = f"{', '.join(taken)} from {origin}, the rest as set in the config"
  say(f"clip shape: {_shape(data)}, tested at {data.eval_crop_size} px (shorter side "
      f"{data.eval_resize}); {how}")
  if differs:
    say(f"warning: clip shape unlike {origin}: {', '.join(differs)}; allowed, but the "
        "encoder was not trained on it (leave data.num_frames / stride / crop_size unset "
        "to use the checkpoint's)")
  return dict({k: data.get(k) for k in CLIP_FIELDS + TEST_FIELDS}, origin=origin, differs=differs)


def _shape(data) -> str:
  return f"{data.get('num_frames')} frames at stride {data.get('stride')}, " \
         f"{data.get('crop_size')} px crops"
