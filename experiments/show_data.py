"""Builds a dataset if needed and writes a grid of its examples with their captions.

python -m experiments.show_data --dataset dallex_shapes --resolution 32 --out data.png
python -m experiments.show_data --dataset dallex_shapes --language zh --out data_zh.png
python -m experiments.show_data --dataset caption_folder --path DIR --resolution 64 --out data.png
"""

from absl import app, flags
import ml_collections
import numpy as np

from dallex import visualize
from dallex.data import sources
from dallex.data.images import center_crop_resize

flags.DEFINE_string(
    "dataset", "dallex_shapes", "dallex_shapes, caption_folder or a TFDS name"
)
flags.DEFINE_string("path", "", "the folder, for --dataset=caption_folder")
flags.DEFINE_integer("resolution", 32, "image side in pixels", lower_bound=1)
flags.DEFINE_string("language", "en", "dallex_shapes captions: en, zh or mixed")
flags.DEFINE_string("split", "train", "TFDS split")
flags.DEFINE_string("data_dir", None, "where prepared datasets live")
flags.DEFINE_integer("num", 16, "examples to show", lower_bound=1)
flags.DEFINE_string("out", "data.png", "PNG to write")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = ml_collections.ConfigDict(
      dict(
          name=FLAGS.dataset,
          path=FLAGS.path,
          resolution=FLAGS.resolution,
          language=FLAGS.language,
          data_dir=FLAGS.data_dir,
      )
  )
  source = sources.open_source(config, FLAGS.split)
  num = min(FLAGS.num, len(source.data))
  images, captions = [], []
  for i in range(num):
    image, caps = source.extract(source.data[i])
    images.append(center_crop_resize(image, FLAGS.resolution))
    captions.append(caps[0])
  path = visualize.save_png(
      visualize.make_grid(np.stack(images), 4),
      FLAGS.out,
      scale=max(1, 128 // FLAGS.resolution),
  )
  for i, caption in enumerate(captions):
    print(f"{i:3d}  {caption}")
  print(
      f"{len(source.data)} examples in {FLAGS.split}; grid of {num} written to {path}"
  )


if __name__ == "__main__":
  app.run(main)
