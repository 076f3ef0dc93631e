"""Loading a run for sampling, the sample and evaluate CLIs, and clear errors for what is wrong."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

import dallex
from conftest import run_python, tiny_config
from experiments.sample import read_prompts


def _copy_run(tiny_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(tiny_run[0], workdir)
  return workdir


def _state_files(workdir, step):
  state = workdir / "checkpoints" / str(step) / "state"
  return [
      os.path.join(root, name)
      for root, _, files in os.walk(state)
      for name in files
      if name != "_METADATA"
  ]


def test_load_generates_images_and_embeddings(tiny_run):
  sampler = dallex.load(str(tiny_run[0]), with_discriminator=True)
  assert sampler.step == 6
  images = sampler.generate(
      ["a small red circle on the left", "x"],
      seed=3,
      num_per_prompt=2,
      batch_size=4,
  )
  assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(
      images,
      sampler.generate(
          ["a small red circle on the left", "x"],
          seed=3,
          num_per_prompt=2,
          batch_size=4,
      ),
  )
  for bad, match in (
      (dict(num_per_prompt=0), "num_per_prompt"),
      (dict(batch_size=0), "batch_size"),
      (dict(truncation=-1.0), "truncation must be > 0"),
  ):
    with pytest.raises(ValueError, match=match):
      sampler.generate(["x"], **bad)
  img_emb, txt_emb = sampler.embed(images, ["a", "b", "c"], batch_size=4)
  assert img_emb.shape == (4, 16) and txt_emb.shape == (3, 16)
  np.testing.assert_allclose(np.linalg.norm(img_emb, axis=1), 1.0, rtol=1e-5)
  # Padding is dropped: in batches of 3 the last batch holds one image and no caption.
  for a, b in zip(
      (img_emb, txt_emb), sampler.embed(images, ["a", "b", "c"], batch_size=3)
  ):
    np.testing.assert_allclose(a, b, atol=1e-5)
  with pytest.raises(ValueError, match="with_discriminator=True"):
    dallex.load(str(tiny_run[0])).embed(images, ["a"])
  assert dallex.load(str(tiny_run[0]), step=4).step == 4
  # The generator being trained.
  online = dallex.load(str(tiny_run[0]), ema=False)
  assert any(
      not np.array_equal(a, b)
      for a, b in zip(
          jax.tree.leaves(online.params), jax.tree.leaves(sampler.params)
      )
  )
  with pytest.raises(
      FileNotFoundError,
      match=r"no checkpoint of step 5 in .* \(it has \[6, 4, 2\]\)",
  ):
    dallex.load(str(tiny_run[0]), step=5)


def test_damaged_newest_checkpoint_falls_back_and_all_damaged_is_an_error(
    tiny_run, tmp_path
):
  workdir = _copy_run(tiny_run, tmp_path)
  for path in _state_files(workdir, 6):
    with open(path, "wb") as f:
      f.write(b"not a checkpoint")
  assert dallex.load(str(workdir)).step == 4
  # Partial: a step without its state.
  shutil.rmtree(workdir / "checkpoints" / "4" / "state")
  for path in _state_files(workdir, 2):
    os.remove(path)
  with pytest.raises(ValueError, match=r"no checkpoint could be restored") as e:
    dallex.load(str(workdir))
  for step in (2, 4, 6):
    assert f"checkpoints/{step}:" in str(e.value)


def test_incompatible_config_and_missing_files_are_named(tiny_run, tmp_path):
  workdir = _copy_run(tiny_run, tmp_path)
  config = json.loads((workdir / "config.json").read_text())
  config["model"]["generator"]["width"] *= 2
  (workdir / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"checkpoints/6: .*shape"):
    dallex.load(str(workdir))
  (workdir / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"config.json is not a readable config"):
    dallex.load(str(workdir))
  with pytest.raises(
      FileNotFoundError,
      match="has no config.json: not a dallex training workdir",
  ):
    dallex.load(str(tmp_path / "elsewhere"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text(
      json.dumps(tiny_config().to_dict())
  )
  (tmp_path / "empty" / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*checkpoints"):
    dallex.load(str(tmp_path / "empty"))


def test_sample_cli_writes_png_and_npz(tiny_run, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text(
      "a large blue square at the top\n\n  \n一个红色的圆\n", encoding="utf-8"
  )
  # fmt: off
  out = run_python("-m", "experiments.sample", f"--workdir={tiny_run[0]}",
                   "--prompt=a small red circle on the left", f"--prompts_file={prompts}",
                   "--seed=1", "--num_per_prompt=2", f"--out={tmp_path / 'grid.png'}",
                   f"--out_npz={tmp_path / 'x.npz'}", check=True)
  # fmt: on
  assert "6 images of step 6 (3 prompts)" in out.stdout
  grid = np.asarray(Image.open(tmp_path / "grid.png"))
  assert grid.shape[0] > 3 * 64 and grid.shape[1] > 2 * 64
  saved = np.load(tmp_path / "x.npz")
  assert saved["images"].dtype == np.uint8 and saved["images"].shape == (
      6,
      32,
      32,
      3,
  )
  assert (
      list(saved["prompts"])
      == ["a small red circle on the left"] * 2
      + ["a large blue square at the top"] * 2
      + ["一个红色的圆"] * 2
  )


def test_bad_prompts_files_are_named(tmp_path):
  with pytest.raises(
      SystemExit, match=r"--prompts_file '.*missing.txt' does not exist"
  ):
    read_prompts(str(tmp_path / "missing.txt"))
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("un cercle rouge à gauche\n".encode("latin-1"))
  with pytest.raises(SystemExit, match=r"latin1.txt' is not UTF-8 text"):
    read_prompts(str(latin1))


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--num_per_prompt=0",
            "--num_per_prompt=0: 0 is not a positive integer",
        ),
        ("--num_per_prompt=-2", "--num_per_prompt=-2: -2 is not a positive"),
        ("--truncation=-1", "--truncation must be > 0"),
        ("--truncation=0", "--truncation must be > 0"),
    ],
)
def test_sample_cli_refuses_meaningless_counts(tmp_path, flag, message):
  out = run_python(
      "-m", "experiments.sample", f"--workdir={tmp_path}", "--prompt=a", flag,
      f"--out={tmp_path / 'grid.png'}",
  )  # fmt: skip
  assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "grid.png").exists()


def test_evaluate_cli_writes_json_table_and_worst_samples(
    tiny_run, full_shapes_r32, tmp_path
):
  # fmt: off
  out = run_python("-m", "experiments.evaluate", f"--workdir={tiny_run[0]}", "--num=12",
                   "--batch_size=12", f"--out={tmp_path / 'eval.json'}",
                   "--diversity_captions=6", "--diversity_seeds=4",
                   f"--data_dir={full_shapes_r32.data_dir_root}", check=True)
  # fmt: on
  report = json.loads((tmp_path / "eval.json").read_text())
  assert report["step"] == 6 and sorted(report["splits"]) == ["heldout", "test"]
  spread = report["diversity"]
  # The real renders' spread is the spec's jitter, whatever the model draws.
  assert spread["real_centre"] > 0.3 and spread["real_colour"] > 3.0
  assert {"centre_ratio", "size_ratio", "colour_ratio"} <= set(spread)
  assert "diversity over 6 test captions x 4 seeds" in out.stdout
  for metrics in report["splits"].values():
    assert metrics["num_images"] == 12
    for name in (
        "colour_accuracy",
        "object_accuracy",
        "no_extra_rate",
        "r_precision",
    ):
      assert 0.0 <= metrics[name] <= 1.0, name
  assert "object_accuracy" in out.stdout and "heldout" in out.stdout
  worst = np.asarray(Image.open(tmp_path / "eval_worst.png"))
  assert worst.shape[0] > 3 * 128


def test_sample_and_load_are_exported_lazily():
  assert callable(dallex.sample) and callable(dallex.load)
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    _ = dallex.nope
