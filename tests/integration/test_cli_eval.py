"""``diffloc eval`` and ``diffloc reproduce`` on tiny models (random weights, tiny random CLIP: mechanics)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from diffloc.cli.main import main
from diffloc.eval.suite import load_suite, shipped_suite_path
from diffloc.world.model import GUIDANCE

SUITE = """
seeds: [0]
steps: 2
guidance: 5.0
max_batch: 16
unrelated: [a red circle]
cases:
  - name: style-vg
    kind: style
    concept: van gogh
    target: painting
    locoedit_target: a painting
    mode: remove
    attribute: a painting in the style of van gogh
    prompts: [a house in the style of van gogh]
    heldout: [van gogh painting of a boat]
    neighbours:
      - {prompt: a house in the style of monet, attribute: monet style}
"""


def test_shipped_suites_load():
    for name in ("shapesworld", "van-gogh"):
        suite = load_suite(shipped_suite_path(name))
        assert suite.cases and suite.unrelated
    # the ShapesWorld suite samples as the model is evaluated (world eval, the edit benchmarks)
    assert load_suite(shipped_suite_path("shapesworld")).guidance == GUIDANCE


def test_eval_cli_and_wrong_model_refusal(tmp_path, tiny_clip_dir, capsys):
    (tmp_path / "suite.yaml").write_text(SUITE)
    assert main(["edit", "quickfix", "--model", "tiny-sd1", "--concept", "van gogh", "--target", "painting",
                 "--out", str(tmp_path / "edit")]) == 0  # fmt: skip
    suite = str(tmp_path / "suite.yaml")
    assert main(["eval", "--model", "tiny-sd1", "--edit", str(tmp_path / "edit"), "--suite", suite,
                 "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert set(report["cases"]["style-vg"]) >= {"efficacy", "generalization", "specificity"}
    assert report["fidelity"] >= 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    other = subprocess.run(
        [sys.executable, "-m", "diffloc.cli.main", "eval", "--model", "tiny-sd2", "--edit", str(tmp_path / "edit"),
         "--suite", str(tmp_path / "suite.yaml"), "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "ev2")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert [line for line in other.stderr.splitlines() if line.startswith("diffloc: error:")]
    assert (tmp_path / "ev" / "report.json").is_file()  # earlier results intact


def test_eval_cli_takes_a_neuron_ablation(tmp_path, tiny_clip_dir):
    (tmp_path / "suite.yaml").write_text(SUITE)
    ablation = tmp_path / "abl.json"
    assert main(["edit", "neurons", "--model", "tiny-sd1", "--concept", "van gogh", "--target", "painting", "--sites",
                 "unet.xattn.*", "--top-n", "4", "--mode", "paper", "--out", str(ablation)]) == 0  # fmt: skip
    assert main(["eval", "--model", "tiny-sd1", "--ablation", str(ablation), "--suite", str(tmp_path / "suite.yaml"),
                 "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["meta"]["edit"]["format"] == "diffloc-ablation" and report["fidelity"] > 0


def test_reproduce_on_a_tiny_model(tmp_path, tiny_clip_dir):
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = str(tmp_path / "suite.yaml")
    code = main(["reproduce", "--model", "tiny-sd1", "--clip", str(tiny_clip_dir), "--suite", suite,
                 "--steps", "2", "--trace-seeds", "0", "--max-batch", "24", "--bootstrap", "0",
                 "--out", str(tmp_path / "r")])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(summary["cases"]["style-vg"]["locogen"]["best_sites"]) == 2
    config = summary["demo_config"]  # the papers' protocol, not the demo's ShapesWorld choices
    assert config["noise"] is None and not config["locogen_widen"] and config["locoedit_positions"] == "subject"
    assert config["edit_templates"] == "reference"  # the Diff-QuickFix notebook's four templates, loco_edit.py's
    requests = {m: json.loads((tmp_path / "r" / "edits" / "style-vg" / m / "edit.json").read_text())["request"]
                for m in ("quickfix", "locoedit")}  # fmt: skip
    assert requests["quickfix"]["targets"] == ["painting"] and requests["locoedit"]["targets"] == ["a painting"]
    assert all(r["default_templates"] and r["templates"] == [] for r in requests.values())
    assert (tmp_path / "r" / "report.html").is_file()
