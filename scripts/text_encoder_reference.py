"""Write the shipped ShapesWorld text encoder's outputs for two prompts, the reference the package-compatibility
test compares every supported transformers release against.

Run: ``python scripts/text_encoder_reference.py tests/data/shapesworld_text_encoder.safetensors``
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

#: The prompts of the reference: a plain caption and one with a trained style word.
PROMPTS = ("a red circle with stripes on a white background", "a blue square in the style of van goo")


def text_encoder_outputs() -> dict[str, torch.Tensor]:
    """``last_hidden_state`` and ``pooler_output`` of the shipped text encoder for :data:`PROMPTS` (float32, CPU)."""
    from diffloc.world.model import load_pipeline

    pipe = load_pipeline(device="cpu", dtype="float32")
    ids = pipe.tokenizer(list(PROMPTS), padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder(ids)
    return {"input_ids": ids, "last_hidden_state": out.last_hidden_state.contiguous(),
            "pooler_output": out.pooler_output.contiguous()}  # fmt: skip


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    save_file(text_encoder_outputs(), sys.argv[1], metadata={"prompts": "\n".join(PROMPTS)})
    print(f"wrote {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
