import ml_collections
import pytest

from cvrl import config_lib


def test_parse_arg_casts_to_default_types_and_rejects_unknown_keys():
  arg = config_lib.parse_arg("depth=152,width=2", depth=50, width=1.0, remat=False)
  assert arg.depth == 152 and isinstance(arg.depth, int)
  assert arg.width == 2.0 and isinstance(arg.width, float)
  assert config_lib.parse_arg("remat=true", remat=False).remat is True
  with pytest.raises(ValueError, match="valid keys"):
    config_lib.parse_arg("dept=152", depth=50)
  with pytest.raises(ValueError, match="key=value"):
    config_lib.parse_arg("152", depth=50)


def test_steps_from_steps_or_epochs():
  c = ml_collections.ConfigDict(dict(total_steps=None, total_epochs=200, warmup_steps=None,
                                     warmup_epochs=None))
  k600 = dict(num_examples=366_016, batch_size=1024)
  # K600 at batch 1024: ceil(366016 / 1024) = 358 steps per epoch.
  assert config_lib.steps("total", c, **k600) == -(-200 * 366_016 // 1024)
  c.total_steps, c.total_epochs = 10, None
  assert config_lib.steps("total", c, **k600) == 10
  c.total_epochs = 1
  with pytest.raises(ValueError, match="only one"):
    config_lib.steps("total", c, **k600)
  c.total_steps, c.total_epochs = None, 1
  with pytest.raises(ValueError, match="num_train_examples"):
    config_lib.steps("total", c, num_examples=None, batch_size=1024)
  assert config_lib.steps("warmup", c, default=0, **k600) == 0


def test_locked_config_rejects_unknown_key():
  from configs import cvrl_k600_r3d50  # pylint: disable=import-outside-toplevel
  c = cvrl_k600_r3d50.get_config()
  c.lock()
  with pytest.raises(AttributeError):
    c.optim.lerning_rate = 1.0
  c.optim.base_lr = 1.0  # known keys stay writable
