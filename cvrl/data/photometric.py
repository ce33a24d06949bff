"""Layout of the photometric parameter vector: drawn on the host, applied on either side.

Each training clip (each frame, in the inconsistent ablation mode) gets ONE float32
vector of `SIZE` numbers, drawn by `augmentation.draw_photometric` from the clip's
stateless seed. The host path (`augmentation.Photometric`, TF) and the device path
(`device.finish_batch`, JAX) both apply the clip's colour jitter, grayscale, blur,
solarization, TCLR's extras (grayscale + gamma or colour-channel drop, random erasing),
background erasing and FAME's flag from this vector only, so the two give the same pixels for the same seed.
No TensorFlow or JAX here: both sides import it.
"""

# Flags are 0.0 / 1.0.
JITTER = 0        # apply the colour jitter (probability color_jitter_prob)
BRIGHTNESS = 1    # multiplicative factor
CONTRAST = 2      # factor around the per-channel mean of the clip (of the frame, per-frame mode)
SATURATION = 3    # factor on HSV saturation (tf.image.adjust_saturation)
HUE = 4           # shift of HSV hue in turns (tf.image.adjust_hue)
ORDER = slice(5, 9)  # ORDER[i] = the jitter op of step i (a permutation of OP_*)
GRAYSCALE = 9     # flag
BLUR = 10         # flag
SIGMA = 11        # Gaussian blur sigma (pixels)
SOLARIZE = 12     # flag
# TCLR's extras (Dave et al., CVIU 2022), appended so the entries above keep their places.
# The gray-gamma branch and the channel drop are the two arms of one draw (never both).
GRAY_GAMMA = 13   # flag: grayscale of the TCLR branch (right after the jitter)
GAMMA = 14        # flag: then x -> x ** GAMMA_EXP (only with GRAY_GAMMA)
GAMMA_EXP = 15    # the gamma exponent
CHANNEL_DROP = 16  # flag: set colour channel CHANNEL to 0 (right after the jitter)
CHANNEL = 17      # 0, 1 or 2
ERASE = 18        # flag: random erasing, the very last op (after solarization)
ERASE_BOX = slice(19, 23)  # top row, left column, height, width in output pixels (integers)
# Background erasing (Wang et al., CVPR 2021), after everything else: the clip's frame
# min(floor(BG_FRAME * T), T - 1) mixed into every frame with weight BG_WEIGHT. One draw per
# clip: the per-frame ablation reads its first frame's entries.
BG_ERASE = 23     # flag
BG_WEIGHT = 24    # the mixing weight lambda
BG_FRAME = 25     # which frame is the static one, as a position in [0, 1)
# Foreground-background merging (FAME, Ding et al., CVPR 2022; `fame.py`), before the colour
# ops on device: the clip's moving foreground over another video's clip.
FAME = 26         # flag
SIZE = 27
FAME_BETA = 0.5   # the foreground's share of the frame (the authors' code's beta)
FAME_FOREGROUNDS = ('colour', 'median')  # the paper's colour prior; the temporal median (ours)

# Jitter ops, as numbered in ORDER.
OP_BRIGHTNESS, OP_CONTRAST, OP_SATURATION, OP_HUE = 0, 1, 2, 3

# tf.image.rgb_to_grayscale weights.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def erase_extent(size_fraction: float, crop_size: int) -> int:
  """The erase box's exclusive size bound in pixels: round(size_fraction * crop_size).

  Height and width are drawn from the integers [extent // 2, extent); TCLR's 19 at 112 px
  is size_fraction 19 / 112.
  """
  return int(round(float(size_fraction) * int(crop_size)))


def blur_radius(crop_size: int) -> int:
  """Reference kernel: crop_size // 10 taps made odd, i.e. radius (crop_size // 10) // 2."""
  return (int(crop_size) // 10) // 2


def per_view(probs, view: int) -> float:
  """Entry min(view, len - 1) of a per-view probability tuple (0 when empty)."""
  return float(probs[min(view, len(probs) - 1)]) if probs else 0.0


def can_fire(aug, num_views: int, blur_radius: int) -> bool:
  """Whether any colour/grayscale/blur/solarize/erase op can fire on one of the views of
  the augmentation `aug` (config.data.augmentation or augmentation.AugmentSpec): then the
  host ships each training clip's parameter vector (device mode)."""
  return (aug.color_jitter_prob > 0 or aug.grayscale_prob > 0 or aug.gray_gamma_prob > 0 or
          aug.channel_drop_prob > 0 or aug.erase_prob > 0 or
          max(aug.background_erase_probs or (0.0,)) > 0 or max(aug.fame_probs or (0.0,)) > 0 or
          any(per_view(aug.solarize_probs, v) > 0 or
              (blur_radius > 0 and per_view(aug.blur_probs, v) > 0) for v in range(num_views)))
