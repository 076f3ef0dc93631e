"""The full config schema with defaults. Experiment configs start from
``default_config()`` and change what they need; every field is listed here."""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Defaults: the `shapes32` model at 32 px on the built-in shapes dataset."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      name="dallex_shapes",   # dallex_shapes | caption_folder | any TFDS name
      path="",                # caption_folder: the folder
      resolution=32,
      data_dir="",            # "" -> $DALLEX_DATA_DIR or ~/tensorflow_datasets
      train_split="train",
      image_key="image",      # other TFDS datasets: where image and captions live
      caption_key="captions/text",
      num_threads=2,          # reader threads (per worker)
      prefetch=4,
      num_workers=0,          # reader processes; >0 on many-core hosts (see pipeline.py)
      hard_negatives=False,   # D also rejects real images with a hard negative caption
  ))

  c.model = ml_collections.ConfigDict(dict(
      arch="dallex",          # dallex | seed
      dtype="float32",        # compute dtype; parameters stay float32
      scan=True,
      remat=False,
      z_dim=64,
      ca_dim=64,
      # conv_kernel > 0: conv_layers residual convolutions over bytes before the Transformer
      text=dict(max_length=96, width=128, depth=2, heads=4, mlp_ratio=4, conv_kernel=0,
                conv_layers=2),
      generator=dict(style_dim=128, mapping_depth=2, grid=4, width=128, depth=2, heads=4,
                     mlp_ratio=4, base_channels=128, min_channels=32,
                     conditioning_augmentation=True,  # off: c = mu (set loss.kl=0)
                     local_style=0,       # up blocks (from the coarsest) whose AdaIN reads the grid
                     layout_head=False,   # the grid tokens guess the coarse image (loss.layout)
                     grid_style=True),    # w added to the grid tokens, AdaLN in its Transformer
      discriminator=dict(base_channels=32, max_channels=256, hidden=256, embed_dim=128,
                         text_source="own",
                         word_region=False,  # a word-region matching term in D's logit
                         text=dict(max_length=96, width=64, depth=1, heads=4, mlp_ratio=4,
                                   conv_kernel=0, conv_layers=2)),
      seed=dict(emb_dim=64, hidden_dim=256),
  ))

  c.loss = ml_collections.ConfigDict(dict(
      adversarial="hinge",    # hinge | nonsaturating
      gradient_penalty="r1",  # r1 | magp | none
      r1_gamma=1.0,           # term: gamma / 2 * R1
      magp_weight=2.0,        # term: k * MA-GP^p
      magp_power=6.0,
      mismatch=True,          # D: real image + wrong caption also scored as fake (DF-GAN)
      feature_matching=1.0,
      feature_matching_paired=False,
      feature_net_path="",    # optional frozen perceptual network (.npz)
      feature_net_weight=0.0,
      layout=0.0,             # distance of G's grid layout guess from the real image
                              # pooled per block (needs model.generator.layout_head)
      layout_pool="mean",     # mean | max: how the real image is pooled to the grid
      layout_distance="l1",   # l1 | l2
      contrastive_d=1.0,      # InfoNCE on real pairs, trains D's heads
      contrastive_g=1.0,      # InfoNCE of generated images with their captions, trains G
      contrastive_negatives=False,  # both InfoNCEs also rank the hard-negative captions
                                    # (needs data.hard_negatives)
      learn_temperature=True,
      kl=1.0,
  ))

  c.optim = ml_collections.ConfigDict(dict(
      # Two-time-scale rates (DF-GAN): D learns faster than G.
      g=dict(lr=1e-4, b1=0.0, b2=0.9, eps=1e-8, warmup_steps=0, clip_norm=0.0),
      d=dict(lr=4e-4, b1=0.0, b2=0.9, eps=1e-8, warmup_steps=0, clip_norm=0.0),
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=64,          # global, over all devices and hosts
      d_steps=1,              # D updates per G update
      ema=0.999,
      parallel="jit",         # jit (sharded over a `data` mesh; multi-host) | pmap
      checkpoint_every=500,
      keep_checkpoints=3,     # the newest N; 0 keeps all
      log_every=50,
      sample_every=500,
      max_nonfinite=20,       # stop after this many non-finite steps in a row
      max_minutes=0.0,        # stop (and save) after this wall time per call; 0 = none
  ))

  c.sample = ml_collections.ConfigDict(dict(
      prompts=["a small red circle on the left", "a large blue square at the top",
               "a small yellow triangle in the center",
               "a large green circle in the bottom right and a small white square in the top left"],
      num_per_prompt=4,
      seed=0,
      truncation=1.0,
  ))

  # Evaluation during training (dallex.evaluation.evaluate on the EMA generator),
  # logged as eval/<split>/<metric>; every=0 turns it off.
  c.evals = ml_collections.ConfigDict(dict(
      every=0,
      splits=("test",),
      num=500,                # samples per split (its first examples)
      seed=0,
      batch_size=64,
  ))
  return c
