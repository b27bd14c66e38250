"""Erasure audits on the shipped ShapesWorld model: every attack runs, leaves no trace, and repeats exactly."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from diffloc.audit import AuditConfig, AuditReport, audit
from diffloc.editing.registry import compute_edit
from diffloc.editing.requests import EditRequest
from diffloc.eval.scorers import DetectorScorer
from diffloc.models.registry import load

FAST = AuditConfig(seeds=(0,), steps=6, guidance=4.0, prompts=2, budget=2, finetune_batch=4, learned_steps=2,
                   learned_batch=2)  # fmt: skip


@pytest.fixture(scope="module")
def world():
    return load("shapesworld"), DetectorScorer()


def _files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _unsaved(attack: dict) -> dict:
    """An attack's result without the files it names (an audit writes them only where it has an out folder)."""
    return {**attack, "details": {k: v for k, v in attack["details"].items() if k != "embeddings"}}


def test_an_audit_runs_every_attack_and_leaves_model_and_edit_as_they_were(world, tmp_path, weights_digest):
    model, scorer = world
    request = EditRequest(concepts=("flumox",), targets=("thing",), templates=("{}", "a picture of a {}"),
                          default_templates=False)  # fmt: skip
    compute_edit(model, request, method="quickfix").save(tmp_path / "edit")
    from diffloc.editing.edit import Edit

    edit = Edit.load(tmp_path / "edit")
    weights, files = weights_digest(model), _files(tmp_path / "edit")
    grads = {n: p.requires_grad for n, p in model.pipe.unet.named_parameters()}
    first = audit(model, edit, scorer=scorer, config=FAST, out=tmp_path / "a")
    assert weights_digest(model) == weights and _files(tmp_path / "edit") == files
    assert {n: p.requires_grad for n, p in model.pipe.unet.named_parameters()} == grads
    assert not model.pipe.unet._forward_hooks and not model.pipe.unet._forward_pre_hooks
    assert [a.name for a in first.attacks] == ["paraphrase", "spelling", "description", "learned", "revert", "finetune"]
    for attack in first.attacks:
        entries = [attack.edited, attack.unedited, *attack.rows]
        for entry in (e for e in entries if e is not None):
            low, high = entry["interval"]
            assert entry["n"] == len(attack.prompts) * len(FAST.seeds) and low <= entry["asr"] <= high
    # the edit's own phrasings are not among the attack's
    assert not {"flumox", "a picture of a flumox"} & set(first.attack("paraphrase").prompts)
    # taking the whole edit back is the unedited model: the same images, the same hits
    revert, paraphrase = first.attack("revert"), first.attack("paraphrase")
    assert revert.rows[-1]["fraction"] == 1.0 and revert.rows[-1]["hits"] == paraphrase.unedited["hits"]
    assert [row["steps"] for row in first.attack("finetune").rows] == [1, 2]
    # the learned-prompt attack asks the same phrasings with free tokens in the name's place, and keeps them
    learned = first.attack("learned")
    assert [p.replace("sks sks sks", "flumox") for p in learned.prompts] == list(paraphrase.prompts)
    assert len(learned.details["loss"]["edited"]) == 2 and learned.details["objective"] == "denoising"
    saved = load_file(str(tmp_path / "a" / learned.details["embeddings"]))
    assert set(saved) == {"edited", "unedited"} and saved["edited"].shape == (3, 96)
    # a fixed seed gives the same audit twice, and the saved report reads back
    again = ("spelling", "learned", "finetune")
    second = audit(model, edit, scorer=scorer, config=replace(FAST, attacks=again))
    assert [_unsaved(second.attack(a).to_dict()) for a in again] == [_unsaved(first.attack(a).to_dict()) for a in again]
    loaded = AuditReport.load(tmp_path / "a")
    assert loaded.to_dict() == first.to_dict()
    # the page beside the JSON shows the JSON's numbers and the attacked images
    page = (tmp_path / "a" / "audit.html").read_text()
    shown = dict(re.findall(r'data-key="([^"]+)">([^<]+)<', page))
    data = first.to_dict()
    for key, text in shown.items():
        value: object = data
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]  # type: ignore[index]
        assert float(text) == pytest.approx(float(value), abs=0.5 if key == "meta.seconds" else 0.006), key  # type: ignore[arg-type]
    assert len(shown) > 20 and (tmp_path / "a" / "attacks" / "paraphrase.png").is_file()
    assert all(f'src="attacks/{name}.png"' in page for name in ("paraphrase", "spelling", "learned", "revert-0.5",
                                                                "finetune"))  # fmt: skip


def test_the_learned_prompt_attack_finds_a_concept_the_model_still_knows(world):
    """The check that the attack works: from the words the edit maps the style to, the free tokens find the style
    on the unedited model (held-out phrasings and seeds); on the edited one it reports whatever it finds."""
    model, scorer = world
    request = EditRequest(concepts=("pica stro",), targets=("a plain style",),
                          templates=("a circle in the style of {}",), default_templates=False)  # fmt: skip
    edit = compute_edit(model, request, method="quickfix")
    config = AuditConfig(attacks=("learned",), seeds=(0, 1), steps=20, guidance=4.0, prompts=4, learned_steps=40)
    learned = audit(model, edit, scorer=scorer, config=config).attack("learned")
    assert learned.unedited is not None and learned.unedited["n"] == 8 and learned.unedited["asr"] >= 0.9
    assert learned.details["start"] == "a plain style" and learned.details["unseen_prompts"] == 4
    assert learned.edited is not None and learned.edited["n"] == 8
