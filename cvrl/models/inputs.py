"""What an encoder's input mode asks of its clips (cvrl.models.r3d.INPUTS)."""
from __future__ import annotations


def extra_frames(input_mode: str) -> int:
  """Frames a clip needs beyond its T for an encoder of `input_mode`: 1 for the modes on
  frame differences ('dif', 'dif_std', 'dif_pc': T + 1 frames give T differences), else 0."""
  return 1 if input_mode.partition("_")[0] == "dif" else 0
