"""Write ``expected.json``: the digest of every saved result, computed by the version that saved them."""

import json
import sys
from pathlib import Path

import torch

from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
import test_saved_results_load as saved


def main() -> None:
    """Digest every saved item on the model it was written on."""
    torch.set_num_threads(1)
    models = {"tiny-sd1": load(build_tiny_pipeline("sd1", seed=0)), "shapesworld": load("shapesworld")}
    names = sorted(
        p.name for p in saved.SAVED.iterdir() if p.suffix not in (".md", ".py") and p.name != "expected.json"
    )
    items = {name: saved.digest(name, models["shapesworld" if "shapesworld" in name else "tiny-sd1"]) for name in names}
    data = {"models": {name: model.fingerprint() for name, model in models.items()}, "items": items}
    (saved.SAVED / "expected.json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
