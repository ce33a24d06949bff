"""The linear probe job on a demo pretraining workdir (and a random-init encoder of the
same architecture), on cached features of the synthetic data:
  python -m cvrl.main --config=configs/demo_probe.py:pretrained=/tmp/cvrl_demo --workdir=DIR
Data and model come from configs/demo.py; the probe's fields from
`cvrl.config_lib.demo_probe_fields`; the clip shape (frames, stride, crop size) from
the checkpoint unless set (e.g. --config.data.num_frames=16).
"""
from configs import demo
from cvrl import config_lib
from cvrl.data.config import from_checkpoint


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, pretrained="", steps=150)
  pre = demo.get_config(f"steps={arg.steps}")
  c = config_lib.probe_config_for(pre, arg.pretrained, config_lib.demo_probe_fields())
  from_checkpoint(c.data)  # as the checkpoint was pretrained, not the demo's defaults
  return c
