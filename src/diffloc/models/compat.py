"""The few places where the supported diffusers and transformers releases differ, in one module.

diffloc runs on two package generations: transformers 4.x with the diffusers releases that accept its
``huggingface_hub`` (< 1.0; diffusers 0.39 is the last), and transformers 5.x with current diffusers. Code
elsewhere asks this module instead of testing versions itself.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def release(package: str) -> tuple[int, ...]:
    """``(major, minor, patch)`` of an installed package (``(0,)`` when it is not installed)."""
    try:
        text = version(package)
    except PackageNotFoundError:
        return (0,)
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


@cache
def pipeline_dtype_keyword() -> str:
    """The ``from_pretrained`` keyword for the parameter dtype: ``dtype`` from diffusers 0.40, ``torch_dtype``
    before (the newer releases deprecate the old spelling)."""
    return "dtype" if release("diffusers") >= (0, 40) else "torch_dtype"


@cache
def transformers_major() -> int:
    """Major version of the installed transformers (4 or 5)."""
    return release("transformers")[0]


def t5_unigram_tokenizer(vocab: list[tuple[str, float]], *, model_max_length: int) -> Any:
    """A T5 tokenizer over a Unigram vocabulary built in memory (no sentencepiece model file).

    Ids follow T5 (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2 must lead ``vocab``); words are split on whitespace
    with ``▁`` prefixes and every sequence ends with ``</s>``. transformers 5's ``T5Tokenizer`` takes the
    vocabulary itself; transformers 4's slow ``T5Tokenizer`` needs sentencepiece, so there the same
    *tokenizers* pipeline is handed to ``T5TokenizerFast``. Both give the same ids.
    """
    if transformers_major() >= 5:
        from transformers import T5Tokenizer

        return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    import transformers
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    backend = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    fast: Any = transformers.T5TokenizerFast  # type: ignore[attr-defined]  # transformers 4 only
    return fast(tokenizer_object=backend, extra_ids=0, model_max_length=model_max_length)
