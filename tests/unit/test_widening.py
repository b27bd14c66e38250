"""LocoEdit window widening (``diffloc.workflows.widening``): window geometry and the stopping rule."""

from __future__ import annotations

import pytest
import torch

from diffloc.editing import EditRequest, LocoEditConfig, preservation_statistics
from diffloc.editing.locoedit import projection_linear, projection_sites
from diffloc.engine.generate import GenerationConfig
from diffloc.errors import ConfigError, EditError, UnknownSiteError
from diffloc.workflows.widening import WidenConfig, folds, locoedit_search, widen_window, xattn_layers

LAYERS = [f"unet.xattn.{i}" for i in range(16)]


def test_widen_window_centres_and_clips():
    assert widen_window(LAYERS[10:14], 8, LAYERS) == tuple(LAYERS[8:16])
    assert widen_window(LAYERS[6:8], 4, LAYERS) == tuple(LAYERS[5:9])
    assert widen_window(LAYERS[0:2], 4, LAYERS) == tuple(LAYERS[0:4])
    assert widen_window(LAYERS[14:16], 8, LAYERS) == tuple(LAYERS[8:16])
    assert widen_window(LAYERS[3:7], 2, LAYERS) == tuple(LAYERS[3:7])  # never narrower than the start
    assert widen_window(LAYERS[3:5], 99, LAYERS) == tuple(LAYERS)


def test_widen_window_rejects_gaps_and_unknown_names():
    with pytest.raises(ConfigError, match="not consecutive"):
        widen_window([LAYERS[2], LAYERS[5]], 4, LAYERS)
    with pytest.raises(UnknownSiteError, match=r"unet\.sattn\.1"):
        widen_window(["unet.sattn.1"], 4, LAYERS)


class EditedLayersScorer:
    """Scores 1 while fewer than ``needed`` cross-attention layers differ from the base weights, else 0."""

    name = "edited-layers"

    def __init__(self, model, needed: int) -> None:
        self.model, self.needed = model, needed
        sites = projection_sites(model, ("unet.xattn.*",))
        self.base = {s.name: projection_linear(model, s).weight.clone() for s in sites}
        self.calls = 0

    def edited(self) -> int:
        changed = {
            name.rsplit(".", 1)[0]
            for name, w0 in self.base.items()
            if not torch.equal(projection_linear(self.model, self.model.sites.select(name)[0]).weight, w0)
        }
        return len(changed)

    def score(self, images, texts):
        self.calls += 1
        return torch.full((len(images),), 1.0 if self.edited() < self.needed else 0.0)

    def check(self, text):
        if not text:
            raise ConfigError("empty attribute")


def test_search_stops_at_the_first_window_that_works(tiny_sd1):
    request = EditRequest(concepts=("cat",), targets=("dog",))
    scorer = EditedLayersScorer(tiny_sd1, needed=8)
    search = WidenConfig(seeds=(0,), max_folds=2, generation=GenerationConfig(steps=2))
    before = {n: w.clone() for n, w in scorer.base.items()}
    done = []
    edit = locoedit_search(
        tiny_sd1, request, LocoEditConfig(sites=("unet.xattn.6", "unet.xattn.7")), attribute="a cat", mode="remove",
        scorer=scorer, search=search, progress=lambda i, n: done.append((i, n)),
    )  # fmt: skip
    found = edit.stats["window_search"]
    assert [len(row["window"]) for row in found["tried"]] == [2, 4, 8]
    assert [row["works"] for row in found["tried"]] == [False, False, True]
    assert found["unedited_score"] == 1.0 and found["tried"][-1]["window"] == LAYERS[3:11]
    assert set(edit.parameters) == {f"{s.full_path}.weight" for s in projection_sites(tiny_sd1, tuple(LAYERS[3:11]))}
    assert done[-1] == (3, 4) and scorer.calls == 1 + 3 * 2  # unedited, then 2 folds per window
    assert scorer.edited() == 0  # every candidate was reverted
    assert all(
        torch.equal(projection_linear(tiny_sd1, tiny_sd1.sites.select(n)[0]).weight, w) for n, w in before.items()
    )


def test_search_returns_the_widest_when_none_works(tiny_sd1):
    request = EditRequest(concepts=("cat",), targets=("dog",))
    scorer = EditedLayersScorer(tiny_sd1, needed=99)
    search = WidenConfig(sizes=(4, 16), seeds=(0,), max_folds=1, generation=GenerationConfig(steps=2))
    edit = locoedit_search(
        tiny_sd1, request, LocoEditConfig(sites=("unet.xattn.8",)), attribute="a cat", mode="remove", scorer=scorer,
        search=search,
    )  # fmt: skip
    assert [row["works"] for row in edit.stats["window_search"]["tried"]] == [False, False]
    assert len(edit.parameters) == 32  # 16 layers x (to_k, to_v)


def test_search_final_edit_takes_the_whole_requests_statistics(tiny_sd1):
    request = EditRequest(concepts=("cat",), targets=("dog",), preserve=("house",))
    config = LocoEditConfig(sites=("unet.xattn.8",))
    search = WidenConfig(sizes=(2,), seeds=(0,), max_folds=1, generation=GenerationConfig(steps=2))

    scorer = EditedLayersScorer(tiny_sd1, needed=1)  # every window works: the first is returned

    def widen(preserved):
        return locoedit_search(tiny_sd1, request, config, attribute="a cat", mode="remove", scorer=scorer,
                               search=search, preserved=preserved)  # fmt: skip

    plain = widen(None)
    stats = preservation_statistics(tiny_sd1, request, method="locoedit", config=config)
    reused = widen(stats)
    assert reused.config["sites"] == plain.config["sites"] and set(reused.parameters) == set(plain.parameters)
    for name in plain.parameters:
        torch.testing.assert_close(reused.weights[name], plain.weights[name], rtol=1e-5, atol=1e-6)
    other = preservation_statistics(
        tiny_sd1, EditRequest(concepts=("cat",), targets=("dog",), preserve=("tree",)), method="locoedit",
        config=config,
    )  # fmt: skip
    calls = scorer.calls
    with pytest.raises(EditError, match="preserved concepts"):
        widen(other)
    assert scorer.calls == calls  # refused before generating anything


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"sizes": ()}, "window sizes"),
        ({"sizes": (0,)}, "window sizes"),
        ({"min_effect": 1.5}, "min_effect"),
        ({"seeds": ()}, "seeds"),
        ({"max_folds": 0}, "max_folds"),
    ],
)
def test_widen_config_rejects_bad_values(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        WidenConfig(**kwargs)


def test_search_rejects_a_bad_mode_before_generating(tiny_sd1):
    scorer = EditedLayersScorer(tiny_sd1, needed=1)
    with pytest.raises(ConfigError, match="mode must be one of remove, update"):
        locoedit_search(
            tiny_sd1, EditRequest(concepts=("cat",), targets=("dog",)), LocoEditConfig(sites=("unet.xattn.8",)),
            attribute="a cat", mode="erase", scorer=scorer,
        )  # fmt: skip
    assert scorer.calls == 0
    assert xattn_layers(tiny_sd1) == LAYERS


def test_folds_leave_each_template_out_once():
    request = EditRequest(
        concepts=("cat", "fox"), targets=("dog",), templates=("{}", "a photo of {}", "a {} in a field"),
        default_templates=False, preserve=("house",),
    )  # fmt: skip
    got = folds(request, limit=8)
    assert [prompts for _, prompts in got] == [["cat", "fox"], ["a photo of cat", "a photo of fox"],
                                               ["a cat in a field", "a fox in a field"]]  # fmt: skip
    for (fold, _), left_out in zip(got, request.templates, strict=True):
        assert left_out not in fold.all_templates(()) and len(fold.all_templates(())) == 2
        assert fold.preserve == ("house",) and fold.concepts == request.concepts
    assert len(folds(request, limit=2)) == 2
    single = EditRequest(concepts=("cat",), targets=("dog",), templates=("a {}",), default_templates=False)
    assert folds(single, limit=8) == [(single, ["a cat"])]
