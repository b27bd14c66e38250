"""The scoring of ``diffloc world eval``: rates, counts and what misses read as, without a model.

Generation and the detectors are replaced by a scripted reader that gets every label right except the
ones a test chooses to get wrong, so every number the evaluation reports can be checked exactly.
"""

from __future__ import annotations

import math

import torch

from diffloc.world import captions, evaluate


def _scripted(monkeypatch, wrong):
    """Replace generation and detection: image i reads back its prompt's labels, changed by ``wrong``. A
    ``background`` in ``wrong`` changes the pixel reading of the background; a ``detector background`` the
    detectors' head (which otherwise reads what the pixels do)."""
    asked: list[tuple[str, int]] = []
    labels = {p.prompt: p.labels for p in [*captions.heldout_prompts(), *captions.validation_prompts()]}

    def generate(pipe, prompts, seeds, *, steps, guidance):
        start = len(asked)
        asked.extend(zip(prompts, seeds, strict=True))
        return torch.arange(start, len(asked))

    def read(indices):
        out = []
        for i in indices.tolist():
            prompt, seed = asked[i]
            asked_for, changes = {"background": "white", **labels[prompt]}, dict(wrong(prompt, seed))
            head = changes.pop("detector background", asked_for["background"])
            out.append({**asked_for, **changes, "background": head})
        return out

    def pixels(indices):
        return [{"background": "white", **labels[asked[i][0]], **wrong(*asked[i])}["background"]
                for i in indices.tolist()]  # fmt: skip

    monkeypatch.setattr(evaluate, "generate", generate)
    monkeypatch.setattr(evaluate, "detect", lambda images, detector=None: images)
    monkeypatch.setattr(evaluate, "predicted_labels", read)
    monkeypatch.setattr(evaluate, "background_from_pixels", pixels)
    monkeypatch.setattr(evaluate, "time_one_image", lambda pipe, guidance: 0.5)
    return asked


def test_counts_and_misses_name_what_the_wrong_images_were_read_as(monkeypatch):
    def wrong(prompt, seed):  # van goo drawn plain with seed 0; snargle's colour wrong with seed 1
        if "van goo" in prompt and seed == 0:
            return {"style": "plain"}
        if "snargle" in prompt and seed == 1:
            return {"colour": "orange"}
        return {}

    asked = _scripted(monkeypatch, wrong)
    result = evaluate.evaluate_model(None, evaluate.EvalConfig(seeds=2, batch_size=7))
    prompts = captions.heldout_prompts()
    assert len(asked) == result["n_images"] == 2 * len(prompts)
    van_goo, snargle = result["concept_counts"]["style:van goo"], result["concept_counts"]["object:snargle"]
    n_van_goo = 2 * sum(p.group == "style:van goo" for p in prompts)
    assert van_goo == {"right": n_van_goo // 2, "images": n_van_goo, "misses": {"style=plain": n_van_goo // 2},
                       "missed_seeds": {"0": n_van_goo // 2}}  # fmt: skip
    assert snargle["misses"] == {"colour=orange": snargle["images"] // 2}
    assert snargle["missed_seeds"] == {"1": snargle["images"] // 2}
    assert math.isclose(result["concepts"]["style:van goo"], 0.5) and not result["passed"]
    assert result["concept_counts"]["style:pica stro"]["misses"] == {}
    assert result["attributes"]["colour"] < 1.0 == result["attributes"]["shape"]  # snargle's are object prompts
    assert result["seconds_per_image_20_steps"] == 0.5


def test_the_background_is_scored_by_the_pixels_and_the_detectors_head_reported_beside_it(monkeypatch):
    asks = {p.prompt: p.labels.get("background") for p in captions.heldout_prompts()}

    def wrong(prompt, seed):  # the head reads every grey background black; the pixels miss one seed's whites
        if asks[prompt] == "grey":
            return {"detector background": "black"}
        if asks[prompt] == "white" and seed == 0:
            return {"background": "pastel"}
        return {}

    _scripted(monkeypatch, wrong)
    result = evaluate.evaluate_model(None, evaluate.EvalConfig(seeds=2))
    scored = [p for p in captions.heldout_prompts() if evaluate.attributes_scored(p.group)]
    backgrounds = [p.labels["background"] for p in scored]
    assert math.isclose(result["attributes"]["background"], 1 - backgrounds.count("white") / 2 / len(scored))
    assert math.isclose(result["attributes_by_detector"]["background"], 1 - backgrounds.count("grey") / len(scored))
    misses = {m for c in result["concept_counts"].values() for m in c["misses"]}
    assert misses == {"background=pastel"}  # an object's background miss is the pixels', never the head's


def test_a_model_that_gets_everything_right_passes(monkeypatch):
    _scripted(monkeypatch, lambda prompt, seed: {})
    result = evaluate.evaluate_model(None, evaluate.EvalConfig(seeds=1, split="validation"))
    assert result["passed"] and set(result["concepts"].values()) == {1.0}
    assert all(c["right"] == c["images"] and not c["misses"] for c in result["concept_counts"].values())


def test_model_card_status_names_the_misses_and_reads_older_eval_files():
    import importlib.util
    import json
    from pathlib import Path

    from diffloc.world import model

    script = Path(__file__).resolve().parents[2] / "scripts" / "update_model_card.py"
    spec = importlib.util.spec_from_file_location("update_model_card", script)
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    ev = json.loads((model.shipped_model_dir() / "eval.json").read_text(encoding="utf-8"))
    ev["concepts"]["style:van goo"], ev["concept_counts"]["style:van goo"] = 0.5, {
        "right": 12, "images": 24, "misses": {"style=plain": 10, "texture=dotted": 2}}  # fmt: skip
    section = card.status_section(ev)
    assert "| style:van goo | 50.0% | ≥ 90% | style=plain ×10, texture=dotted ×2 of 24 |" in section
    ev["concept_counts"]["style:van goo"]["missed_seeds"] = {"2": 6, "7": 6}
    assert "| style=plain ×10, texture=dotted ×2 of 24 (seeds 2 ×6, 7 ×6) |" in card.status_section(ev)
    ev["attributes_by_detector"] = {"background": 0.9375}
    assert "| background, read by the detectors' head | 93.8% | not scored |" in card.status_section(ev)
    del ev["concept_counts"], ev["attributes_by_detector"]  # eval.json files written before these existed
    assert "| style:van goo | 50.0% | ≥ 90% | — |" in card.status_section(ev)
    assert "detectors' head" not in card.status_section(ev)
