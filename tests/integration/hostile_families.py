"""Hostile inputs that only the diffusion-transformer families meet (SD3, FLUX.1, PixArt): an algorithm or editor
that is not defined for the family, a text encoder the model lacks, an image size its patches do not tile.

Each case loads its tiny model and is refused before any generation; hostile_corpus.py adds them to the corpus.
"""

from __future__ import annotations

from typing import Any

PROMPT = "a red circle in the style of van gogh"
SCORED = ["--prompt", PROMPT, "--attribute", "a red circle", "--detectors", "--seeds", "0", "--steps", "1"]
SWEEP = [*SCORED, "--bootstrap", "0", "--out", "{tmp}/o"]
CAT = ["--concept", "cat", "--target", "dog", "--out", "{tmp}/e"]


def _locogen(model: str, *flags: str) -> tuple[str, ...]:
    return ("locogen", "--model", model, "--target", "a house", *SWEEP, *flags)


def _trace_text(model: str, *flags: str) -> tuple[str, ...]:
    return ("trace", "text", "--model", model, "--subject", "van gogh", *SWEEP, *flags)


def _edit(method: str, model: str, *flags: str) -> tuple[str, ...]:
    return ("edit", method, "--model", model, *CAT, *flags)


def _generate(model: str, height: str) -> tuple[str, ...]:
    return ("generate", "--model", model, "--prompt", "a cat", "--steps", "1", "--height", height, "--width", "32",
            "--out", "{tmp}/o")  # fmt: skip


#: (id, argv, words of the one-line error); hostile_corpus.Case is built from each
FAMILY_CASES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("locogen-cross-attention-on-joint-attention", _locogen("tiny-sd3"), ("no cross-attention", "'text-stream'")),
    (
        "locogen-text-stream-on-unet",
        _locogen("tiny-sd1", "--intervention", "text-stream"),
        ("'text-stream'", "sd1", "'cross-attention'"),
    ),
    (
        "locogen-window-wider-than-the-joint-blocks",
        _locogen("tiny-sd3", "--intervention", "text-stream", "--window", "25"),
        ("window 25", "24 blocks"),
    ),
    (
        "edit-locoedit-on-joint-attention",
        _edit("locoedit", "tiny-sd3", "--sites", "transformer.joint.1"),
        ("transformer.joint.1", "'joint-kv'"),
    ),
    (
        "edit-joint-kv-single-stream-block",
        _edit("joint-kv", "tiny-flux", "--sites", "transformer.single.0"),
        ("transformer.single.0", "single-stream"),
    ),
    (
        "edit-joint-kv-not-a-joint-site",
        _edit("joint-kv", "tiny-sd3", "--sites", "transformer.ff.3"),
        ("transformer.ff.3", "transformer.joint.3"),
    ),
    (
        "edit-joint-kv-on-pixart",
        _edit("joint-kv", "tiny-pixart", "--sites", "transformer.xattn.1"),
        ("'joint-kv'", "not pixart", "locoedit"),
    ),
    ("edit-context-on-unet", _edit("context", "tiny-sd1"), ("'context'", "not sd1", "quickfix")),
    ("edit-quickfix-on-joint-attention", _edit("quickfix", "tiny-sd3"), ("tokenize 'cat' differently",)),
    ("trace-text-unknown-encoder", _trace_text("tiny-sd3", "--encoder", "text4"), ("'text4'", "text, text2, text3")),
    ("trace-text-encoder-on-pixart", _trace_text("tiny-pixart", "--encoder", "text2"), ("'text2'", "valid: text")),
    ("trace-text-encoders-tokenize-differently", _trace_text("tiny-flux"), ("tokenize differently", "text, text2")),
    ("generate-size-not-whole-sd3-patches", _generate("tiny-sd3", "24"), ("24x32", "multiple of 16")),
    ("generate-size-not-whole-pixart-patches", _generate("tiny-pixart", "40"), ("40x32", "multiple of 16")),
    ("generate-size-below-one-flux-token", _generate("tiny-flux", "8"), ("8x32", ">= 16")),
]


def family_cases(case: Any) -> list[Any]:
    """The cases above as ``case`` (hostile_corpus.Case) objects."""
    return [case(name, argv, words) for name, argv, words in FAMILY_CASES]
