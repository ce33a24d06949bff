"""One discovery rule (cvrl.core.discovery): a component is the module of its name in its
kind's folder, its entry point one module-level name; helpers are not components; an
unknown name is a ValueError listing the names."""
import pytest

from cvrl.core import discovery
from cvrl.data.samplers import tclr as tclr_sampler
from cvrl.eval import linear, multiview
from cvrl.objectives import simclr


def test_each_kind_lists_its_components_and_not_its_helpers():
  assert discovery.names("cvrl.jobs", "run") == ["evaluate", "finetune", "pretrain", "probe",
                                                 "summary"]
  assert discovery.names("cvrl.objectives") == ["byol", "cvrl", "moco", "rotation", "simclr",
                                                "swav", "tclr"]  # not base, contrastive, rho...
  assert discovery.names("cvrl.eval") == ["knn", "linear", "multiview"]
  assert discovery.names("cvrl.data.sources") == ["synthetic", "tfds", "tfrecord"]
  assert discovery.names("cvrl.data.samplers") == ["cvrl", "multiview", "rho", "single", "tclr"]


def test_the_entry_point_of_a_name_is_its_modules_own():
  assert discovery.find("cvrl.objectives", "simclr", "f") is simclr.SimCLR
  assert discovery.find("cvrl.data.samplers", "tclr", "f") is tclr_sampler.make
  # multiview.py imports linear.py, yet its entry point is its own class
  assert discovery.find("cvrl.eval", "multiview", "f") is multiview.Multiview
  assert discovery.find("cvrl.eval", "linear", "f") is linear.Linear
  assert discovery.module("cvrl.jobs", "pretrain", "f", entry="run").__name__ == \
      "cvrl.jobs.pretrain"


@pytest.mark.parametrize("name", ["nope", "contrastive", "base", "os.path", "a b", "", None, 3])
def test_an_unknown_name_is_one_error_listing_the_names(name):
  with pytest.raises(ValueError) as e:
    discovery.find("cvrl.objectives", name, "config.objective.name")
  assert str(e.value).startswith("config.objective.name must be one of byol, cvrl, moco, "
                                 f"rotation, simclr, swav, tclr, got {name!r}")


def test_a_dotted_name_is_a_module_outside_cvrl(tmp_path, monkeypatch):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "sampler.py").write_text("def make(spec, t, s, train):\n  return t\n")
  (tmp_path / "mine" / "broken.py").write_text("import no_such_module_here\nmake = 1\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert discovery.find("cvrl.data.samplers", "mine.sampler", "f")({}, 4, 1, True) == 4
  with pytest.raises(ValueError, match="got 'mine.nothing'"):
    discovery.find("cvrl.data.samplers", "mine.nothing", "f")
  # A component whose own imports fail is that failure, not an unknown name.
  with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
    discovery.find("cvrl.data.samplers", "mine.broken", "f")
