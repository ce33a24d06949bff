r"""The first training batch of a config, as the train step sees it, as a picture.

  python -m cvrl.tools.show_clips --config=CONFIG [--config.key=value ...] \
      --out=FILE.png|FILE.gif [--videos=4]

The job's own pipeline (source, the method's sampler, crops, flips; TFRecord shards from
`python -m cvrl.data.convert` as any other source) gives its first batch; the photometric
ops are applied as on the accelerator (cvrl.data.device) and the method shows its clips as
its loss takes them (e.g. 3DRotNet's four rotations): cvrl.engine.pictures. A PNG has a row
per video, its views side by side, each view's frames left to right; a GIF plays the
frames, a row per video, views side by side. Needs matplotlib (the `plots` extra).
"""
from __future__ import annotations

from cvrl.core import cli

cli.quiet_native_logs()  # before anything imports TensorFlow

# pylint: disable=wrong-import-position
import os  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cvrl import config_lib  # noqa: E402
from cvrl import objectives  # noqa: E402
from cvrl.core.errors import ConfigError  # noqa: E402
from cvrl.data import sources  # noqa: E402
from cvrl.engine import pictures  # noqa: E402


def define_flags():
  """The command line; defined only when it runs as a program, so that importing this
  module beside cvrl.main (which owns --config) does not clash."""
  global _CONFIG, _OUT, _VIDEOS  # pylint: disable=global-statement
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A pretraining config file, e.g. configs/demo.py or "
      "configs/tclr_tiny.py", lock_config=True)
  _OUT = flags.DEFINE_string("out", None, "The picture: FILE.png (frames across) or FILE.gif "
                             "(frames in time).")
  _VIDEOS = flags.DEFINE_integer("videos", 4, "Videos shown (rows), the batch's first.")


FPS = 4  # GIF frames per second
PIXELS = 96  # a clip's frames are scaled up (nearest) to about this height,
WIDTH = 4000  # unless the picture would be wider than this


def checked(config, out: str, videos: int, extra_args=()):
  """The config's objective, once the arguments and the data are known good (ConfigError)."""
  for wrong, message in (
      (extra_args, f"unexpected arguments {list(extra_args)}: flags are --config=FILE[:ARG], "
                   "--config.KEY=VALUE, --out=FILE.png|FILE.gif and --videos=N"),
      (config is None, "--config is required, e.g. --config=configs/demo.py"),
      (not out or os.path.splitext(out)[1].lower() not in (".png", ".gif"),
       f"--out must name a .png or .gif file, got {out!r}"),
      (videos < 1, f"--videos must be >= 1, got {videos}"),
      (config is not None and "objective" not in config,
       "show_clips draws pretraining batches: give a pretraining config (one with "
       "config.objective), e.g. configs/demo.py")):
    if wrong:
      raise ConfigError(message)
  try:
    objective = objectives.method(**config_lib.method_args(config))
    sources.check(config.data, "train")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return objective


def scale(clips: np.ndarray, image_width: int) -> int:
  """The whole-number zoom of the pictures (see PIXELS, WIDTH)."""
  return max(1, min(PIXELS // clips.shape[3], WIDTH // image_width))


def write_png(plt, clips: np.ndarray, names: list[str], title: str, path: str) -> None:
  image = pictures.mosaic(clips)
  h, zoom = clips.shape[3], scale(clips, image.shape[1])
  (img_h, img_w), (left, top, pad) = (np.array(image.shape[:2]) * zoom / 100), (0.9, 0.6, 0.1)
  width, height = img_w + left + pad, img_h + top + pad
  fig = plt.figure(figsize=(width, height), dpi=100)
  ax = fig.add_axes((left / width, pad / height, img_w / width, img_h / height))
  ax.imshow(image, interpolation="nearest")
  ax.set_yticks([i * (h + pictures.ROW_GAP) + h / 2 for i in range(len(clips))],
                [f"video {i}" for i in range(len(clips))])
  ax.set_xticks(pictures.view_centres(clips.shape), names)
  ax.xaxis.tick_top()
  ax.tick_params(length=0)
  for side in ax.spines.values():
    side.set_visible(False)
  fig.suptitle(title, x=0.1 / width, y=1 - 0.05 / height, ha="left", va="top",
               fontsize="medium")
  cli.save_figure(plt, fig, path)


def write_gif(clips: np.ndarray, path: str) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel  (matplotlib's dependency)
  frames = [pictures.mosaic(clips[:, :, t:t + 1]) for t in range(clips.shape[2])]
  zoom = scale(clips, frames[0].shape[1])
  frames = [f.repeat(zoom, 0).repeat(zoom, 1) for f in frames]
  Image.fromarray(frames[0]).save(path, save_all=True, loop=0, duration=1000 // FPS,
                                  append_images=[Image.fromarray(f) for f in frames[1:]])


def main(argv):
  config, out = _CONFIG.value, _OUT.value
  objective = checked(config, out, _VIDEOS.value, argv[1:])
  plt = cli.pyplot("no picture written")
  if plt is None:
    raise ConfigError("show_clips draws with matplotlib: pip install -e '.[plots]'")
  sources.prepare(config.data, ["train"])
  clips, names = pictures.first_batch(config.data, objective, _VIDEOS.value,
                                      seed=int(config.seed), batch_size=int(config.batch_size))
  if out.lower().endswith(".gif"):
    write_gif(clips, out)
  else:
    title = (f"first batch of {objective.name}: {clips.shape[2]} frames of {clips.shape[3]} x "
             f"{clips.shape[4]} per clip, frames left to right")
    write_png(plt, clips, names, title, out)
  print(f"show_clips: {clips.shape[0]} videos x {len(names)} views -> {out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
