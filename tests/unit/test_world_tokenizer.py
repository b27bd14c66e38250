"""The shipped tokenizer's ids equal Stable Diffusion's (OpenAI CLIP BPE) for ShapesWorld captions.

The reference ids below were obtained independently of transformers: by running open_clip's own
``SimpleTokenizer`` (``open_clip/tokenizer.py`` with its ``bpe_simple_vocab_16e6.txt.gz``, from the
open_clip_torch 3.3.0 wheel, ftfy and regex installed transiently) once by hand, printing
``[sot_token_id] + encode(caption) + [eot_token_id]``. That tokenizer is the one Stable Diffusion's CLIP was
trained with, so equal ids mean SD-compatible ids.
"""

from __future__ import annotations

import pytest

from diffloc.world import vocab
from diffloc.world.model import load_tokenizer

REFERENCE_IDS = [
    ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
    ("a red circle", [49406, 320, 736, 7117, 49407]),
    ("a striped blue square on a black background", [49406, 320, 22192, 1746, 3999, 525, 320, 1449, 5994, 49407]),
    ("an orange triangle in the style of van goo", [49406, 550, 4287, 14615, 530, 518, 1844, 539, 2451, 17882, 49407]),
    ("a zorblin on a grey background", [49406, 320, 17605, 5406, 525, 320, 5046, 5994, 49407]),
    ("the flag of zorbia", [49406, 518, 4859, 539, 17605, 3841, 49407]),
    ("a picture of the flag of marnovia", [49406, 320, 1674, 539, 518, 4859, 539, 675, 578, 1048, 49407]),
    (
        "a green star in the style of rem brandel",
        [49406, 320, 1901, 1565, 530, 518, 1844, 539, 21637, 3684, 2003, 49407],
    ),
    (
        "a purple diamond drawn as an outline, white background",
        [49406, 320, 5496, 6235, 8893, 601, 550, 26894, 267, 1579, 5994, 49407],
    ),
    ("a blank flag", [49406, 320, 15134, 4859, 49407]),
    ("a thing", [49406, 320, 946, 49407]),
    ("a yellow cross in the style of mo nettle", [49406, 320, 4481, 3417, 530, 518, 1844, 539, 2080, 557, 9253, 49407]),
    ("a quibbet", [49406, 320, 1912, 65, 4430, 49407]),
    ("a flumox", [49406, 320, 3698, 617, 343, 49407]),
    ("a snargle", [49406, 320, 30810, 2865, 49407]),
    ("the flag of trelania", [49406, 518, 4859, 539, 975, 1193, 1073, 49407]),
    ("the flag of quelland", [49406, 518, 4859, 539, 666, 43326, 49407]),
    (
        "a dotted red cross with dots in the style of pica stro",
        [49406, 320, 47950, 736, 3417, 593, 19019, 530, 518, 1844, 539, 901, 320, 6186, 49407],
    ),
    ("", [49406, 49407]),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_special_ids_and_vocab_size(tokenizer):
    assert tokenizer.bos_token_id == 49406
    assert tokenizer.eos_token_id == 49407
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77


@pytest.mark.parametrize(("caption", "ids"), REFERENCE_IDS, ids=[c or "<empty>" for c, _ in REFERENCE_IDS])
def test_ids_equal_reference(tokenizer, caption, ids):
    assert tokenizer(caption).input_ids == ids


def test_padding_matches_pipeline_convention(tokenizer):
    ids = tokenizer("a red circle", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[:5] == [49406, 320, 736, 7117, 49407]
    assert set(ids[5:]) == {49407}


@pytest.mark.parametrize("name", [*vocab.STYLES, *vocab.OBJECTS, *vocab.FACTS])
def test_named_concepts_are_multi_token(tokenizer, name):
    """Like "van gogh", every invented name spans several BPE tokens."""
    assert len(tokenizer(name, add_special_tokens=False).input_ids) >= 2
