"""UTF-8 byte-level tokenizer: no vocabulary file, so every language and emoji works.

Ids: 0 = PAD, 1 = BOS, 2 = EOS, and byte ``b`` -> ``b + 3`` (vocabulary of 259).
A caption becomes ``[BOS, bytes..., EOS, PAD...]``; the mask is True from BOS to EOS.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET


class TruncationWarning(UserWarning):
  """A caption was longer than the tokenizer's ``max_length`` and was cut."""


def _check_texts(texts: Sequence[str]) -> None:
  if isinstance(texts, (str, bytes)):
    raise TypeError(
        f"texts must be a list of str, got a single {type(texts).__name__}: "
        f"{texts[:40]!r}; wrap it in a list"
    )
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(
          f"texts[{i}] must be str, got {type(text).__name__}: {text!r:.60}"
      )


def _truncate_utf8(data: bytes, limit: int) -> bytes:
  """Cuts ``data`` to at most ``limit`` bytes without splitting a character."""
  if len(data) <= limit:
    return data
  cut = limit
  # UTF-8 continuation bytes look like 0b10xxxxxx; back up to a character start.
  while cut > 0 and (data[cut] & 0xC0) == 0x80:
    cut -= 1
  return data[:cut]


class ByteTokenizer:
  """Turns captions into fixed-length byte-id arrays and back.

  Attributes:
    max_length: L, the length of every encoded row, BOS and EOS included.
    num_truncated: how many captions this tokenizer has cut so far.
  """

  vocab_size = VOCAB_SIZE
  pad_id = PAD_ID
  bos_id = BOS_ID
  eos_id = EOS_ID

  def __init__(self, max_length: int):
    if not isinstance(max_length, int) or max_length < 3:
      raise ValueError(
          f"max_length must be an int >= 3 (BOS, one byte, EOS), got {max_length!r}"
      )
    self.max_length = max_length
    self.num_truncated = 0

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encodes captions.

    Captions longer than ``max_length - 2`` bytes are cut at a character
    boundary, counted in ``num_truncated`` and reported with a
    ``TruncationWarning`` (on the 1st, 10th, 100th, ... cut caption).

    Args:
      texts: B captions.

    Returns:
      ids: int32 [B, L] token ids.
      mask: bool [B, L], True on BOS, the caption's bytes and EOS.
    """
    _check_texts(texts)
    limit = self.max_length - 2
    ids = np.full((len(texts), self.max_length), PAD_ID, np.int32)
    lengths = np.zeros(len(texts), np.int32)
    cut = []
    for row, text in enumerate(texts):
      data = text.encode("utf-8")
      if len(data) > limit:
        cut.append(row)
        data = _truncate_utf8(data, limit)
      n = len(data)
      ids[row, 0] = BOS_ID
      ids[row, 1 : n + 1] = (
          np.frombuffer(data, np.uint8).astype(np.int32) + BYTE_OFFSET
      )
      ids[row, n + 1] = EOS_ID
      lengths[row] = n + 2
    if cut:
      before, self.num_truncated = self.num_truncated, self.num_truncated + len(
          cut
      )
      # Warn on the 1st, 10th, 100th, ... truncation: never silent, never a flood
      # (the input pipeline encodes one caption at a time).
      if len(str(self.num_truncated)) > len(str(before)) or before == 0:
        warnings.warn(
            f"{self.num_truncated} captions truncated to {limit} bytes so far by this "
            f"tokenizer (latest: {texts[cut[0]][:60]!r}...); raise max_length to keep "
            "them whole",
            TruncationWarning,
            stacklevel=2,
        )
    mask = np.arange(self.max_length)[None, :] < lengths[:, None]
    return ids, mask

  def decode(self, ids: np.ndarray) -> list[str]:
    """Decodes int ids [B, L] (or one row [L]) back to strings.

    Reading stops at the first EOS; PAD and BOS are dropped; invalid UTF-8
    (only possible for ids not made by ``encode``) becomes U+FFFD.
    """
    ids = np.asarray(ids)
    if ids.ndim == 1:
      ids = ids[None]
    if ids.ndim != 2:
      raise ValueError(f"ids must have shape [B, L] or [L], got {ids.shape}")
    out = []
    for row in ids:
      end = np.flatnonzero(row == EOS_ID)
      row = row[: end[0]] if end.size else row
      row = row[row >= BYTE_OFFSET]
      if np.any(row >= VOCAB_SIZE):
        raise ValueError(f"ids must be < {VOCAB_SIZE}, got {row.max()}")
      out.append(
          bytes((row - BYTE_OFFSET).astype(np.uint8)).decode("utf-8", "replace")
      )
    return out
