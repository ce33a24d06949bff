"""Every knob of the input pipeline, with the CVRL paper defaults (Qian et al., CVPR 2021).

One `ml_collections.ConfigDict` goes under `config.data`; `build_dataset` reads nothing
else. Helpers switch the augmentation to the rho-methods recipe (Feichtenhofer et al., CVPR 2021)
or to probe-time augmentation (crop + flip only).
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from cvrl.data import procedural


def default_augmentation_config() -> ml_collections.ConfigDict:
  """CVRL pretraining augmentation: one draw per clip, per-view blur/solarize."""
  aug = ml_collections.ConfigDict()
  # Random resized crop, as tf.image.sample_distorted_bounding_box.
  aug.area_range = (0.3, 1.0)
  aug.aspect_ratio_range = (0.5, 2.0)
  aug.min_object_covered = 0.1
  aug.max_attempts = 100
  aug.flip_prob = 0.5
  # Colour jitter (SimCLR style): brightness multiplicative U[1-b, 1+b], contrast
  # U[1-c, 1+c], saturation U[1-s, 1+s], hue shift U[-h, h]; random order; clip after each.
  aug.color_jitter_prob = 0.8
  aug.brightness = 0.8
  aug.contrast = 0.8
  aug.saturation = 0.8
  aug.hue = 0.2
  aug.color_random_order = True
  aug.grayscale_prob = 0.2
  # Gaussian blur: sigma ~ U(sigma_range); kernel size crop_size // 10 made odd (23 at 224).
  # Probabilities per view (view v uses entry min(v, len - 1)): CVRL blurs clip 1 always,
  # clip 2 with p 0.1.
  aug.blur_probs = (1.0, 0.1)
  aug.blur_sigma_range = (0.1, 2.0)
  # Taps farther than this many sigmas are dropped (their weight < 7e-5 of the total at 4);
  # 0 keeps every tap of the kernel.
  aug.blur_truncate_sigmas = 4.0
  # Solarization (x -> 1 - x where x >= 0.5), per view: CVRL only on clip 2.
  aug.solarize_probs = (0.0, 0.2)
  # TCLR's extras (Dave et al., CVIU 2022), off here; configs/tclr_ucf101_r3d18.py has the
  # reference's values. One draw picks at most one of two arms right after the colour
  # jitter: grayscale then, with probability gamma_prob, x -> x ** gamma with gamma ~
  # U(gamma_range) (probability gray_gamma_prob), or one colour channel, uniform over
  # {0, 1, 2}, set to 0 (probability channel_drop_prob). Independent of grayscale_prob.
  aug.gray_gamma_prob = 0.0
  aug.gamma_prob = 0.75
  aug.gamma_range = (0.75, 1.25)
  aug.channel_drop_prob = 0.0
  # Random erasing, last of all (after blur, grayscale, solarization): a rectangle set to
  # 0, corner uniform over the crop (clipped where it runs past the edge), height and
  # width each uniform over the integers [m // 2, m), m = round(erase_size * crop_size):
  # TCLR's 19 px at 112 is erase_size 19 / 112.
  aug.erase_prob = 0.0
  aug.erase_size = 19 / 112
  # Background erasing (Wang et al., CVPR 2021), after everything else: a frame of the
  # clip, uniform over its frames, mixed into every frame, x_t' = (1 - lambda) x_t +
  # lambda x_static, lambda ~ U(0, background_erase_max) per clip. Probability per view as
  # blur_probs; the paper's (1.0, 0.0) mixes the first view (the query) only; off here.
  aug.background_erase_probs = (0.0,)
  aug.background_erase_max = 0.3
  # Foreground-background merging (FAME; Ding et al., CVPR 2022; cvrl.data.fame), on device
  # before the colour ops: the clip's moving foreground (the fame_beta share of the frame
  # most likely foreground by a colour prior on its motion map) pasted over the same view
  # of another video in the batch. Probability per view as blur_probs; off here.
  aug.fame_probs = (0.0,)
  aug.fame_beta = 0.5
  # fame_foreground 'median' (ours, not the paper's): what moves in each frame, more than
  # fame_threshold from the clip's temporal median frame on some channel, pasted over the
  # other video's median frame (its still scene).
  aug.fame_foreground = 'colour'
  aug.fame_threshold = 0.1
  # Per-clip symmetries, one flag each per clip (augmentation.symmetries): the clip upside
  # down (vflip_prob), its rows and columns swapped (transpose_prob; with flip_prob, the 8
  # symmetries of the square: each turns the direction of motion), its frames in reverse
  # order (reverse_prob: the motion played backwards) and its levels inverted (invert_prob:
  # x -> 1 - x before the colour ops, the sign of every edge and frame difference turned).
  # Then each colour channel inverted on its own, one flag a channel (channel_invert_prob).
  # And a camera pan per clip (pan_prob, augmentation.pan_windows): the crop box moves in a
  # straight line over the clip, from its drawn place in the first frame to a uniform one
  # in the last (object motion relative to the camera's). All off here.
  for key in ('vflip_prob', 'transpose_prob', 'reverse_prob', 'invert_prob',
              'channel_invert_prob', 'pan_prob'):
    aug[key] = 0.0
  # A playback speed per training clip: its stride drawn uniformly from clip_strides, one
  # draw a clip (the 'cvrl', 'rho' and 'single' samplers; () = data.stride, the paper's).
  aug.clip_strides = ()
  # True: one draw per clip for all its frames (the paper). False: independent draws per
  # frame (the paper's "not temporally consistent" ablation).
  aug.consistent = True
  return aug


def default_data_config() -> ml_collections.ConfigDict:
  """Pipeline defaults: CVRL pretraining recipe (16 frames, stride 2, 224 crops)."""
  c = ml_collections.ConfigDict()
  c.source = 'synthetic'  # 'synthetic' | 'tfrecord' | 'tfds'
  # Dataset facts the jobs need: epochs -> steps, classifier width. None = unknown (the
  # synthetic source knows its own).
  c.num_train_examples = config_dict.placeholder(int)
  c.num_classes = config_dict.placeholder(int)

  # TFRecord shards of tf.train.SequenceExample: a glob, a comma-separated list of globs,
  # or a list of paths. `eval_paths` is read when build_dataset(train=False).
  c.train_paths = ''
  c.eval_paths = ''
  c.frames_key = 'image/encoded'   # feature list: one JPEG string per frame
  c.label_key = 'clip/label/index'  # context int64
  c.text_key = 'clip/label/text'    # context bytes, optional, not read into batches
  c.require_label = True  # False: records without a label get label -1 (pretraining data)
  # A label outside [0, num_classes) or missing (require_label): 'error' stops the job
  # naming the record; 'skip' counts (stats bad_label) and skips it.
  c.bad_label = 'error'
  # Semi-supervised fine-tuning / probing (CVRL sec. 4: 1% and 10% of the labels): a value
  # in (0, 1] keeps, of the labelled TRAIN split, a fixed class-balanced subset (per class
  # max(1, round(fraction * n_c)) videos, chosen by the job's seed: the same subset in every
  # job of that seed, on any host count); epochs count the subset. Pretraining ignores it;
  # evaluation splits are never subset. 1.0 = all labels (cvrl.data.subset).
  c.label_fraction = 1.0

  # TFDS video datasets (e.g. 'ucf101/ucf101_1_256'): builder name and splits.
  c.tfds_name = ''
  c.tfds_train_split = 'train'
  c.tfds_eval_split = 'test'
  c.tfds_data_dir = ''
  c.tfds_video_key = 'video'
  c.tfds_label_key = 'label'

  # Synthetic videos, written once as SequenceExample shards into `dir`. kind 'motion':
  # labelled by motion direction alone (cvrl.data.sources.synthetic); 'objects': labelled by what
  # the object is and how it moves, appearance nuisances random (cvrl.data.procedural).
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.kind = 'motion'
  c.synthetic.dir = ''  # '' -> a folder under the system temp dir
  c.synthetic.num_train_videos = 256
  c.synthetic.num_eval_videos = 64
  c.synthetic.num_classes = 8
  c.synthetic.num_frames = 64
  c.synthetic.size = 48
  c.synthetic.num_shards = 4
  c.synthetic.seed = 0
  # The 'objects' kind's difficulty (cvrl.data.procedural.DIFFICULTY says what each does;
  # README "Quality benchmark" gives the ladder): these defaults are the calibrated data.
  c.synthetic.difficulty = ml_collections.ConfigDict(dict(procedural.DIFFICULTY))

  # Temporal sampling (samplers may override num_frames / stride).
  c.num_frames = 16
  c.stride = 2
  # Videos shorter than a clip's footprint: 'wrap' (indices modulo the length, as the
  # reference), 'repeat_last' (pad with the last frame) or 'skip'. Always counted.
  c.short_video = 'wrap'

  # Spatial sizes.
  c.crop_size = 224
  c.eval_resize = 256     # shorter side at evaluation
  c.eval_crop_size = 256  # eval crops (the paper: 3 crops of 256 along the long side)

  c.augmentation = default_augmentation_config()

  # Reading. Training's order is one seeded permutation of every example per epoch
  # (cvrl.data.order), the same on any number of hosts: no shuffle buffer.
  c.cycle_length = 8      # records read in parallel (training), files (evaluation)
  # A resume whose batch_size, seed or data (source, paths, dataset, label_fraction) differ
  # from the checkpoint's stops with one line (it would not read the stream it was reading);
  # True goes on with the new stream after one warning line (e.g. the shards moved).
  c.resume_new_stream = False
  c.num_parallel_calls = -1  # -1 = tf.data.AUTOTUNE
  c.prefetch = 2          # batches
  # Where the colour jitter / grayscale / blur / solarization / erasing run. 'device': the host
  # ships uint8 video plus per-clip parameters and every job's jitted step calls
  # cvrl.data.device.finish_batch (4x less host->device traffic, no float32 passes on
  # the host). 'host': the host does everything and ships float32 video in [0, 1].
  c.photometric = 'device'
  c.jit_photometric = True  # host mode: XLA-compile the colour/blur stage (fused, faster)
  c.dct_method = ''       # JPEG IDCT: '' (library default) or 'INTEGER_FAST'
  c.update(input_service_defaults())
  return c


def input_service_defaults() -> dict:
  """Input on the tf.data service (cvrl.data.service, README "Input on the tf.data
  service"): `service` is a dispatcher's HOST:PORT, every job's pipeline then runs on its
  workers ('' = on this host); `service_timeout`: seconds without a reachable dispatcher
  or worker before the job stops (one line, exit 2)."""
  return {'service': '', 'service_timeout': 60.0}


def set_rho_augmentation(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Augmentation of the rho-methods study (Feichtenhofer et al., CVPR 2021), in place."""
  aug = data_config.augmentation
  aug.area_range = (0.2, 0.766)
  aug.aspect_ratio_range = (0.75, 1.333)
  aug.color_jitter_prob = 0.8
  aug.brightness = 0.6
  aug.contrast = 0.6
  aug.saturation = 0.6
  aug.hue = 0.15
  aug.grayscale_prob = 0.2
  aug.blur_probs = (0.5,)
  aug.blur_sigma_range = (0.1, 2.0)
  aug.solarize_probs = (0.0,)
  aug.gray_gamma_prob = aug.channel_drop_prob = aug.erase_prob = 0.0
  aug.background_erase_probs = aug.fame_probs = (0.0,)
  aug.clip_strides = ()
  return data_config


def set_probe_augmentation(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Probe / fine-tune training: random resized crop and flip only, no colour or erasing
  (random or background), in place."""
  aug = data_config.augmentation
  aug.area_range = (0.3, 1.0)
  aug.aspect_ratio_range = (0.5, 2.0)
  aug.color_jitter_prob = 0.0
  aug.grayscale_prob = 0.0
  aug.blur_probs = (0.0,)
  aug.solarize_probs = (0.0,)
  aug.gray_gamma_prob = aug.channel_drop_prob = aug.erase_prob = 0.0
  aug.background_erase_probs = aug.fame_probs = (0.0,)
  aug.clip_strides = ()
  return data_config


# A downstream job's clip shape: "as the encoder was trained" when unset (cvrl.engine.clip_shape).
CLIP_FIELDS = ("num_frames", "stride", "crop_size")
TEST_FIELDS = ("eval_resize", "eval_crop_size")


def from_checkpoint(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets the shape fields of a downstream data config to None (typed: settable from
  the command line), in place: cvrl.engine.clip_shape.resolve takes them from the
  checkpoint."""
  for key in CLIP_FIELDS + TEST_FIELDS:
    data[key] = config_dict.placeholder(int)
  return data
