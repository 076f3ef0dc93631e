"""The config schema and its defaults, written once.

``default_config()`` is the model the project recommends, with every field;
experiment configs (``experiments/configs``) start from it and change data,
resolution and size. Modules are built from their sections as they stand
(``dallex.models.build_models``), so a default lives here and nowhere else.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The recommended model, for any captioned images, with the training
  budget of the built-in shapes at 32 px.

  RESULTS.md says why each value is what it is (the section named beside it).
  The shapes' configs change the parts measured to pay on them alone: the
  layout target of each block's brightest colour, the layout weight 50
  instead of 200 and the L1 toward the real images at 10 instead of 200
  (``shapes32``).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The byte-level text encoder (G's; D's is narrower, below), with
  # conv_layers residual convolutions of width conv_kernel over the bytes
  # before the Transformer (0: none; section 14).
  text = dict(max_length=96, width=64, depth=2, heads=4, mlp_ratio=4)
  text.update(conv_kernel=11, conv_layers=2)
  generator = dict(style_dim=128, mapping_depth=2, grid=4, width=64, depth=2)
  # min_channels: 32 channels at 32 px rather than 16 (section 9).
  generator.update(heads=4, mlp_ratio=4, base_channels=64, min_channels=32)

  c.data = ml_collections.ConfigDict(
      dict(
          name="dallex_shapes",  # dallex_shapes | caption_folder | any TFDS name
          path="",  # caption_folder: the folder
          resolution=32,
          # dallex_shapes: its captions in en, zh (the seed article's Chinese)
          # or mixed (each scene in either at random).
          language="en",
          data_dir="",  # "" -> $DALLEX_DATA_DIR or ~/tensorflow_datasets
          train_split="train",
          image_key="image",  # other TFDS datasets: where image and captions live
          caption_key="captions/text",
          num_threads=2,  # reader threads (per worker)
          prefetch=4,
          num_workers=0,  # reader processes; >0 on many-core hosts (see pipeline.py)
          # device: the training set held on the devices and each batch gathered
          # in the compiled step, when it fits (data/device_cache.py); none: the
          # Grain pipeline above reads every batch.
          cache="device",
      )
  )

  c.model = ml_collections.ConfigDict(
      dict(
          arch="dallex",  # dallex | seed
          dtype="float32",  # compute dtype; parameters stay float32
          scan=True,
          remat=False,
          z_dim=64,
          ca_dim=64,
          text=text,
          generator=dict(
              generator,
              conditioning_augmentation=False,  # the article's VAE latent; on: set loss.kl (8, 19)
              local_style=2,  # up blocks (from the coarsest) whose AdaIN reads the grid (17)
              layout_head=True,  # the grid tokens guess the coarse image (loss.layout; 16)
              layout_patch=4,  # each guesses a P x P patch of it: [G*P, G*P] (27)
              grid_style=False,  # w added to the grid tokens, AdaLN in its Transformer (16)
              colour_jitter=0.0,  # s.d. of the sampler's random colour gain (61)
              colour_jitter_nodes=2,  # its node grid's side
          ),
          discriminator=dict(
              base_channels=16,
              max_channels=128,
              hidden=128,
              embed_dim=64,
              # D's own text encoder, trained on real pairs through its heads.
              text=dict(text, width=32, depth=1, heads=2),
          ),
          # arch="seed": the article's GRU/MLP sizes.
          seed=dict(emb_dim=64, hidden_dim=256),
      )
  )

  c.loss = ml_collections.ConfigDict(
      dict(
          adversarial="hinge",  # hinge | nonsaturating
          gradient_penalty="r1",  # r1 | magp | none
          r1_gamma=1.0,  # term: gamma / 2 * R1
          magp_weight=2.0,  # term: k * MA-GP^p
          magp_power=6.0,
          mismatch=True,  # D: real image + wrong caption also scored as fake (DF-GAN)
          feature_matching=1.0,
          feature_net_path="",  # optional frozen perceptual network (.npz)
          feature_net_weight=0.0,
          # Distance of G's grid layout guess from the real image pooled per block
          # (needs model.generator.layout_head; section 16). On real images
          # 200 learns the caption's picture twice as fast as 50 did (38).
          layout=200.0,
          # mean | max: how the real image is pooled to the grid. mean: a
          # low-resolution copy, for any data (27); max: the shapes' (16, 27).
          layout_pool="mean",
          layout_distance="l2",  # l1 | l2
          contrastive_d=1.0,  # InfoNCE on real pairs, trains D's heads
          contrastive_g=1.0,  # InfoNCE of generated images with their captions, trains G
          learn_temperature=True,
          kl=0.0,  # conditioning augmentation's KL (with it on: 1)
          # G drawn again for the batch's first diversity_pairs captions with
          # other noise, and the pairs pushed apart until their mean |difference|
          # (images in [-1, 1]) reaches diversity_target: a caption's noise
          # seeds otherwise draw nearly the same image (losses.diversity_shortfall).
          diversity=0.0,
          diversity_target=0.0,
          diversity_pairs=4,
          # G's images of the batch's first reconstruction_rows (a fraction)
          # pulled toward their captions' real images: mean |G(c, z) - x|
          # (images in [-1, 1]) with this weight. On OpenMoji 50 lifted
          # retrieval and the group classifier on three seeds, 200 again, and
          # 200 at the rates below more (55, 56, 59); shapes32 takes 10 (52,
          # 53; half the rows did less).
          reconstruction=200.0,
          reconstruction_rows=1.0,
      )
  )

  c.optim = ml_collections.ConfigDict(
      dict(
          # Each player's Adam state as one vector over all its parameters:
          # one fused update rather than one per leaf (a faster compile for
          # models of many small leaves), at the cost of concatenating every
          # gradient each step, which models of a few large matrices do not
          # repay (arch="seed": its step 17% slower flattened).
          flatten=True,
          # Two time scales, D's rate 2x G's: on OpenMoji with the L1 above,
          # retrieval and the group classifier up on three seeds against G
          # 4e-4 with D 1.6e-3 (59); on the shapes, the worst of three seeds
          # at the goals by 5,000 steps where G 8e-4 needed 5,250 (46); 1.2x
          # both broke the game there (36).
          g=dict(
              lr=1e-3, b1=0.0, b2=0.99, eps=1e-8, warmup_steps=0, clip_norm=0.0
          ),
          d=dict(
              lr=2e-3,
              b1=0.0,
              b2=0.99,
              eps=1e-8,
              warmup_steps=0,
              clip_norm=0.0,
          ),
      )
  )

  c.train = ml_collections.ConfigDict(
      dict(
          steps=4000,
          batch_size=32,  # global, over all devices and hosts
          d_steps=1,  # D updates per G update
          # The EMA's decay ceiling. Its warm-up, (1 + t) / (10 + t), stays below
          # 0.999 until step 8,990, so shorter runs never reach it (RESULTS.md 34).
          ema=0.999,
          parallel="jit",  # jit (sharded over a `data` mesh; multi-host) | pmap
          # Devices each parameter and optimiser state is split over (the mesh's
          # `fsdp` axis; `data` gets the rest; jit only). 1: data parallelism.
          fsdp=1,
          checkpoint_every=800,
          keep_checkpoints=3,  # the newest N; 0 keeps all
          log_every=50,
          sample_every=800,
          max_nonfinite=20,  # stop after this many non-finite steps in a row
          max_minutes=0.0,  # stop (and save) after this wall time per call; 0 = none
      )
  )

  c.sample = ml_collections.ConfigDict(
      dict(
          prompts=[
              "a small red circle on the left",
              "a large blue square at the top",
              "a small yellow triangle in the center",
              "a large green circle in the bottom right and a small white square in the top left",
          ],
          num_per_prompt=6,
          seed=0,
          truncation=1.0,
      )
  )

  # Evaluation during training (dallex.evaluation.report on the EMA generator),
  # logged as eval/<split>/<metric>; every=0 turns it off.
  c.evals = ml_collections.ConfigDict(
      dict(
          every=0,
          splits=("test",),
          num=500,  # samples per split (its first examples)
          seed=0,
          batch_size=64,
      )
  )
  return c


def accelerator_sizes(
    c: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """``c`` with the default model widened for a GPU or TPU: bfloat16 compute,
  Transformers 256-512 wide (64-wide heads, which fused attention kernels
  take), 8x8 grid tokens, 512 channels at the generator's coarsest block, and
  batch 256, so the step is made of large matrix products rather than many
  small kernels. The model family of ``shapes64_accel``, ``coco64`` and
  ``coco256``; data, resolution and training length are theirs.
  """
  c.model.dtype = "bfloat16"
  c.model.z_dim = c.model.ca_dim = 128
  c.model.text.update(width=256, depth=4, heads=4)
  c.model.generator.update(style_dim=256, grid=8, width=512, depth=4, heads=8)
  c.model.generator.update(base_channels=512, min_channels=128)
  c.model.discriminator.update(
      base_channels=64, max_channels=512, hidden=512, embed_dim=256
  )
  c.model.discriminator.text.update(width=256, depth=2, heads=4)
  c.train.batch_size = 256
  return c


def _differences(
    schema: Any, given: Any, prefix: str = ""
) -> tuple[list[str], list[str]]:
  """(missing, unknown) dotted keys of ``given`` against ``schema`` (nested mappings)."""
  missing, unknown = [], []
  for key in schema:
    if key not in given:
      missing.append(prefix + key)
    elif hasattr(schema[key], "keys") and hasattr(given[key], "keys"):
      m, u = _differences(schema[key], given[key], f"{prefix}{key}.")
      missing += m
      unknown += u
  unknown += [prefix + key for key in given if key not in schema]
  return missing, unknown


# Fields added since runs were first saved, with the value that gives what
# older versions did: a saved config without one reads as having that value.
_ADDED_FIELDS = {
    "data.language": "en",
    "model.generator.layout_patch": 1,
    "optim.flatten": True,
    "loss.diversity": 0.0,
    "loss.diversity_target": 0.0,
    "loss.diversity_pairs": 4,
    "loss.reconstruction": 0.0,
    "loss.reconstruction_rows": 1.0,
    "model.generator.colour_jitter": 0.0,
    "model.generator.colour_jitter_nodes": 2,
}


def from_json(path: str) -> ml_collections.ConfigDict:
  """The config a run saved (``workdir/config.json``), checked against the schema.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: it is not JSON, or its keys are not the schema's (each one named:
      a workdir written by another version of dallex). A field of
      ``_ADDED_FIELDS`` that is missing takes the value older versions had.
  """
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not a readable config ({e})") from None
  if not isinstance(saved, dict):
    raise ValueError(
        f"{path} holds a JSON {type(saved).__name__}, not a config object"
    )
  defaults = default_config()
  missing, unknown = _differences(defaults, saved)
  for key in set(missing) & set(_ADDED_FIELDS):
    *parents, leaf = key.split(".")
    section = saved
    for parent in parents:
      section = section[parent]
    section[leaf] = _ADDED_FIELDS[key]
    missing.remove(key)
  if missing or unknown:
    raise ValueError(
        f"{path} does not match this version's config schema (dallex/config.py): "
        + "; ".join(
            part
            for part in (
                "missing " + ", ".join(missing) if missing else "",
                "unknown " + ", ".join(unknown) if unknown else "",
            )
            if part
        )
        + ". It was written by another version of dallex."
    )
  return ml_collections.ConfigDict(saved)
