import numpy as np
import pytest

from dallex import text
from dallex.text import ByteTokenizer, TruncationWarning

CAPTIONS = [
    "a small red circle on the left",
    "一只戴着帽子的猫在月球上",
    "🐱🚀 cat + rocket 👩‍🚀",
    "",
]


def test_round_trip_english_chinese_emoji():
  tok = ByteTokenizer(64)
  ids, mask = tok.encode(CAPTIONS)
  assert (
      ids.dtype == np.int32
      and mask.dtype == bool
      and ids.shape == mask.shape == (4, 64)
  )
  assert tok.decode(ids) == CAPTIONS
  assert tok.decode(ids[1]) == [CAPTIONS[1]]


def test_ids_and_mask_layout():
  tok = ByteTokenizer(16)
  ids, mask = tok.encode(["ab", "猫"])
  assert ids[0, :4].tolist() == [
      text.BOS_ID,
      ord("a") + 3,
      ord("b") + 3,
      text.EOS_ID,
  ]
  assert (ids[0, 4:] == text.PAD_ID).all()
  # The mask covers BOS, every UTF-8 byte and EOS, and nothing else.
  assert mask.sum(axis=1).tolist() == [2 + 2, 3 + 2]
  for row in range(2):
    n = mask[row].sum()
    assert mask[row, :n].all() and not mask[row, n:].any()
    assert ids[row, n - 1] == text.EOS_ID
  assert ids.max() < tok.vocab_size


def test_truncation_is_counted_warned_and_keeps_whole_characters():
  tok = ByteTokenizer(10)  # room for 8 bytes
  with pytest.warns(TruncationWarning, match="1 captions truncated"):
    # 12 bytes -> 2 whole characters (6 bytes)
    ids, mask = tok.encode(["猫猫猫猫", "short"])
  assert tok.num_truncated == 1
  assert tok.decode(ids) == ["猫猫", "short"]
  assert mask[0].sum() == 6 + 2
  with pytest.warns(TruncationWarning, match="10 captions truncated"):
    tok.encode(["x" * 50] * 9)
  assert tok.num_truncated == 10


def test_truncation_warnings_do_not_flood():
  tok = ByteTokenizer(4)
  import warnings

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(25):
      tok.encode(["too long"])
  assert tok.num_truncated == 25
  assert len(caught) == 2  # the 1st and the 10th


@pytest.mark.parametrize(
    "bad, match",
    [
        (["ok", 3], r"texts\[1\] must be str, got int"),
        (["ok", b"bytes"], r"texts\[1\] must be str, got bytes"),
        ([None], r"texts\[0\] must be str, got NoneType"),
        ("a single string", r"list of str, got a single str"),
    ],
)
def test_non_str_inputs_raise_type_error_naming_the_item(bad, match):
  with pytest.raises(TypeError, match=match):
    ByteTokenizer(16).encode(bad)


def test_bad_max_length_and_bad_ids():
  with pytest.raises(ValueError, match="max_length"):
    ByteTokenizer(2)
  with pytest.raises(ValueError, match="ids must be <"):
    ByteTokenizer(8).decode(np.array([[1, 400, 2]]))
