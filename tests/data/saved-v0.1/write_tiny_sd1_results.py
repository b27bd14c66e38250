"""Write a UNet trace, a text trace and a LocoGen result on tiny-sd1 with a pixel test scorer into ``argv[1]``."""

import sys
from pathlib import Path

import torch

import diffloc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit"))
from support import PixelScorer  # the deterministic test scorer: the image on a fixed random direction


def main(out: str) -> None:
    """Write the three results under ``out``."""
    torch.set_num_threads(1)
    model = diffloc.load("tiny-sd1")
    prompt = "a house in the style of van gogh"
    trace = diffloc.TraceConfig(seeds=(0, 1, 2), steps=2, guidance=5.0, bootstrap=50)
    scorer = PixelScorer()
    diffloc.causal_trace(model, prompt, "van gogh", "van gogh", scorer=scorer, sites="unet.xattn.*", config=trace).save(
        f"{out}/trace-unet-tiny-sd1"
    )
    diffloc.trace_text(model, prompt, "van gogh", "van gogh", scorer=scorer, config=trace).save(
        f"{out}/trace-text-tiny-sd1"
    )
    windows = diffloc.LocoGenConfig(seeds=(0, 1, 2), steps=2, guidance=5.0, bootstrap=50, window=2)
    diffloc.locogen(model, prompt, "a house", "van gogh", scorer=scorer, config=windows).save(f"{out}/locogen-tiny-sd1")


if __name__ == "__main__":
    main(sys.argv[1])
