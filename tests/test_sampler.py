"""Loading a run for sampling: clear errors for what is missing."""

import json

import pytest

import dallex
from conftest import tiny_config


def test_load_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no config.json: not a dallex training workdir"):
    dallex.load(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*checkpoints"):
    dallex.load(str(tmp_path))


def test_sample_and_load_are_exported_lazily():
  assert callable(dallex.sample) and callable(dallex.load)
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    dallex.nope  # pylint: disable=pointless-statement
