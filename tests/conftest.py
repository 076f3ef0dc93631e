"""Shared fixtures: small datasets built once per test session.

`make test` runs the suite in several pytest-xdist workers; the expensive
fixtures are built by the first worker that needs them and reused by the rest.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import filelock
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TRAIN_CONFIG = "tests/helpers/tiny_train_config.py"

# Tests must not touch the user's ~/tensorflow_datasets.
os.environ.setdefault("DALLEX_DATA_DIR", "/nonexistent-dallex-data-dir")
# Tiny models spend their time compiling, not running: XLA's unoptimised CPU
# backend compiles a tiny train step 2x faster, and with its older fusion code
# generator a directly jitted step compiles faster again (RESULTS.md,
# Measured). Set before jax is imported; the subprocesses tests start inherit
# them, and share one compilation cache so a program compiled by one of them
# is not compiled again. pytest-xdist workers inherit both from the controller.


def _xla_accepts(flag: str) -> bool:
  """Whether this jaxlib's XLA takes ``flag``: XLA aborts on a flag it does
  not know, and jaxlib 0.11 no longer has the older fusion emitters."""
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
  probe = [sys.executable, "-c", "import jax; jax.devices()"]
  return subprocess.run(probe, env=env, capture_output=True).returncode == 0


SUITE_XLA_FLAGS = ("--xla_backend_optimization_level=0",)
_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
# xdist workers find it already set by the controller, which probed.
if _EMITTERS in os.environ.get("XLA_FLAGS", "") or _xla_accepts(_EMITTERS):
  SUITE_XLA_FLAGS += (_EMITTERS,)
for _flag in SUITE_XLA_FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " " + _flag
    ).strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="dallex-test-jax-cache-"
  )
  os.environ["DALLEX_TEST_OWNS_JAX_CACHE"] = str(os.getpid())


def pytest_unconfigure(config):
  """The process that made the compilation cache removes it."""
  del config
  if os.environ.get("DALLEX_TEST_OWNS_JAX_CACHE") == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def shared_dir(tmp_path_factory, name: str, build) -> pathlib.Path:
  """A folder that ``build(path)`` fills once per test session, however many
  xdist workers ask for it (they share the parent of their own temp folders)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path = root / name
  with filelock.FileLock(str(path) + ".lock"):
    if not (root / (name + ".done")).exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      build(path)
      (root / (name + ".done")).touch()
  return path


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
  """A small ``dallex_shapes`` build at 32 px: (builder, data_dir)."""
  data_dir = str(tmp_path_factory.mktemp("tiny_shapes"))
  return (
      shapes_build(data_dir, "r32_tiny", 32, 100, 100, num_train=600),
      data_dir,
  )


@pytest.fixture(scope="session")
def full_shapes_r32(tmp_path_factory):
  """The real 32-pixel ``dallex_shapes`` build (about 30 s): the builder."""
  from dallex.data.shapes_builder import DallexShapes

  build = lambda path: DallexShapes(
      config="r32", data_dir=str(path)
  ).download_and_prepare()
  return DallexShapes(
      config="r32",
      data_dir=str(shared_dir(tmp_path_factory, "shapes_r32", build)),
  )


def run_python(*args, devices=None, env=None, timeout=1200, check=False):
  """``python *args`` in the repository root, its output captured as text.

  Args:
    devices: XLA shows this many host-platform devices (the suite's flags kept).
    env: the environment (default: this process's).
    check: assert it exits 0, showing the end of its stderr otherwise.
  """
  env = dict(os.environ if env is None else env)
  if devices:
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={devices}"
    )
  out = subprocess.run(
      [sys.executable, *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  if check:
    assert out.returncode == 0, out.stderr[-4000:]
  return out


def shapes_build(
    data_dir,
    name,
    resolution,
    num_test,
    num_heldout,
    num_train=8,
    language="en",
):
  """A ``dallex_shapes`` build of the given split sizes (its examples are the
  full build's first ones: each is seeded by its split and index)."""
  from dallex.data.shapes_builder import DallexShapes, ShapesConfig

  config = ShapesConfig(
      name=name,
      resolution=resolution,
      num_train=num_train,
      num_test=num_test,
      num_heldout=num_heldout,
      language=language,
  )
  builder = DallexShapes(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def memory_source(n, captions_per_example=1):
  """A ``Source`` of n examples in memory: example i is an 8 px image of
  value i with captions "example i caption j"; ``captions_per_example`` is
  a count, or a function of i giving each example's."""
  import numpy as np

  from dallex.data.sources import Source

  count = (
      captions_per_example
      if callable(captions_per_example)
      else lambda i: captions_per_example
  )
  data = [
      {
          "image": np.full((8, 8, 3), i, np.uint8),
          "caption": [f"example {i} caption {j}" for j in range(count(i))],
      }
      for i in range(n)
  ]
  return Source(data, "image", "caption")


def one_shard_dataset(source, **kwargs):
  """``pipeline.make_dataset`` as one process of one reads it: batches of 4,
  8 px, captions of 32 tokens, seed 0, unless ``kwargs`` say otherwise."""
  from dallex.data import pipeline

  defaults = dict(batch_size=4, resolution=8, max_length=32, seed=0)
  kwargs = defaults | dict(shard_index=0, shard_count=1) | kwargs
  return pipeline.make_dataset(source, **kwargs)


def train_cmd(workdir, data_dir, *overrides, arch="dallex"):
  """`python -m experiments.train` with the tiny config of ``arch`` on the data
  in ``data_dir``."""
  return [
      sys.executable,
      "-m",
      "experiments.train",
      f"--config={TINY_TRAIN_CONFIG}:{arch}",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      *overrides,
  ]


def train_cli(
    workdir, data_dir, *overrides, check=True, devices=None, arch="dallex"
):
  """Runs ``train_cmd`` to the end (on ``devices`` host devices, if given);
  asserts success unless ``check`` is False."""
  return run_python(
      *train_cmd(workdir, data_dir, *overrides, arch=arch)[1:],
      check=check,
      devices=devices,
  )


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory):
  """A caption folder of 40 random images at 32 px, two captions each
  ("image i", "picture i")."""
  import json

  import numpy as np
  from PIL import Image

  folder = tmp_path_factory.mktemp("small_folder")
  rng = np.random.default_rng(0)
  with open(folder / "metadata.jsonl", "w") as f:
    for i in range(40):
      pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(folder / f"{i}.png")
      line = {"file_name": f"{i}.png", "text": [f"image {i}", f"picture {i}"]}
      f.write(json.dumps(line) + "\n")
  return folder


@pytest.fixture(scope="session")
def tiny_run(full_shapes_r32, tmp_path_factory):
  """A finished 6-step CLI run of the tiny config on the real 32-px shapes, with
  samples and evals (8 test captions) at steps 3 and 6: (workdir, stdout).
  Tests must not change it (copy it first)."""

  def build(path):
    out = train_cli(
        path / "run",
        str(full_shapes_r32.data_dir_root),
        "--config.train.steps=6",
        "--config.train.sample_every=3",
        "--config.evals.every=3",
        "--config.evals.num=8",
        "--config.evals.batch_size=8",
    )
    (path / "stdout.txt").write_text(out.stdout)

  path = shared_dir(tmp_path_factory, "tiny_run", build)
  return path / "run", (path / "stdout.txt").read_text()


def tiny_config(arch="dallex", resolution=32):
  """The default config with tiny models, for fast tests."""
  from dallex.config import default_config

  c = default_config()
  c.data.resolution = resolution
  c.model.arch = arch
  c.model.z_dim = 8
  c.model.ca_dim = 8
  c.model.text.update(max_length=48, width=32, depth=2, heads=2)
  c.model.generator.update(
      style_dim=32, width=32, depth=2, heads=2, base_channels=32, min_channels=8
  )
  c.model.discriminator.update(
      base_channels=8, max_channels=32, hidden=32, embed_dim=16
  )
  c.model.discriminator.text.update(max_length=48, width=16, depth=1, heads=2)
  c.model.seed.update(emb_dim=16, hidden_dim=32)
  # Local style on the default's two up blocks, or on the one an 8 px image has.
  c.model.generator.local_style = min(2, (resolution // 4).bit_length() - 1)
  # The default's 4 x 4 layout patches, or the 2 x 2 that fit an 8 px image.
  c.model.generator.layout_patch = min(4, resolution // 4)
  if arch == "seed":
    c.loss.update(
        adversarial="nonsaturating",
        contrastive_d=0.0,
        contrastive_g=0.0,
        gradient_penalty="none",
        layout=0.0,
    )
  return c


def trained_like(params, key=None, scale=0.3):
  """``params`` with every leaf moved by Gaussian noise. At init the style
  projections are zero, so z (and the mapping MLP behind it) cannot change an
  image and gets no gradient; trained parameters are not like that."""
  import jax

  key = jax.random.key(1) if key is None else key
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      tree,
      [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)],
  )


def tiny_batch(config, batch_size=4, seed=0, captions=None):
  """A batch of random images and shapes captions at the config's sizes."""
  import numpy as np
  from dallex.text import ByteTokenizer

  rng = np.random.default_rng(seed)
  res = config.data.resolution
  captions = (
      captions
      or [
          "a small red circle on the left",
          "a large blue square at the top",
          "a small green triangle in the center and a large white circle "
          "in the top right",
          "x",
      ][:batch_size]
  )
  captions = (captions * batch_size)[:batch_size]
  ids, mask = ByteTokenizer(config.model.text.max_length).encode(captions)
  image = rng.uniform(-1, 1, (batch_size, res, res, 3)).astype(np.float32)
  return {"image": image, "ids": ids, "mask": mask}
