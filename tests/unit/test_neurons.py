"""Neuron edits: the weight edit (subject token) and the paper's ablation (last padding slot, applied to the
conditional branch only).

Expectations are computed here from the raw tokenizer, text encoder and projection weights with plain numpy
(no diffloc encoding helper and no ``z_scores``), so they check the code rather than repeat it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffloc.editing import EditRequest, NeuronAblation, NeuronConfig, compute_ablation, compute_edit
from diffloc.editing.edit import parameter_hashes
from diffloc.engine.generate import GenerationConfig, generate, generate_runs
from diffloc.engine.hooks import record
from diffloc.engine.interventions import Restore, Run
from diffloc.errors import ConfigError, EditError

REQUEST = EditRequest(concepts=("cat",), targets=("dog",))
XATTN = "unet.xattn.1"
#: ``loco_edit.py``'s four templates (the neuron editor's defaults), written out
TEMPLATES = ("{}", "a painting in the style of {}", "a photo in the style of {}", "a picture in the style of {}")
CFG = GenerationConfig(steps=2, guidance=5.0)


def _paper(model, top_n: int = 3, ablation: str = "mean") -> NeuronAblation:
    return compute_ablation(model, REQUEST, NeuronConfig(sites=(XATTN,), top_n=top_n, ablation=ablation, mode="paper"))


def _final_states(model, prompts: list[str]) -> np.ndarray:
    """The SD-1 text encoder's final output for prompts padded to the tokenizer's full length, float64."""
    pipe = model.pipe
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state.double().numpy()


def _z_by_hand(concept: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """Welch-style z per channel with population variances, one channel at a time."""
    z = np.empty(concept.shape[1])
    for u in range(concept.shape[1]):
        s, n = concept[:, u], neutral[:, u]
        var_s = sum((x - s.mean()) ** 2 for x in s) / len(s)
        var_n = sum((x - n.mean()) ** 2 for x in n) / len(n)
        z[u] = (s.mean() - n.mean()) / np.sqrt(var_s / len(s) + var_n / len(n))
    return z


def _top(z: np.ndarray, k: int) -> list[int]:
    order = sorted(range(len(z)), key=lambda u: -abs(z[u]))
    assert abs(z[order[k - 1]]) - abs(z[order[k]]) > 1e-3, "tie at the cut: the expectation would be ambiguous"
    return order[:k]


def _subject_end(model, prompt: str, subject: str) -> int:
    """Index of the subject's last token in the prompt's token ids (BOS counted), by subsequence search."""
    tok = model.pipe.tokenizer
    ids, sub = tok(prompt).input_ids, tok(subject, add_special_tokens=False).input_ids
    starts = [i for i in range(len(ids) - len(sub) + 1) if ids[i : i + len(sub)] == sub]
    return starts[-1] + len(sub) - 1


def test_neurons_pick_the_largest_z_scores(tiny_sd1):
    edit = compute_edit(tiny_sd1, REQUEST, method="neurons", config=NeuronConfig(sites=(XATTN,), top_n=3))
    k_site, _ = tiny_sd1.kv_sites(XATTN)
    w = tiny_sd1.module(k_site).weight.detach().double().numpy()

    def subject_acts(word: str) -> np.ndarray:
        prompts = [t.format(word) for t in TEMPLATES]
        states = _final_states(tiny_sd1, prompts)
        return np.stack([states[i, _subject_end(tiny_sd1, p, word)] for i, p in enumerate(prompts)]) @ w.T

    concept, neutral = subject_acts("cat"), subject_acts("dog")
    expected = _top(_z_by_hand(concept, neutral), 3)
    assert edit.stats["channels"][k_site.name] == sorted(expected)
    key = f"{k_site.full_path}.bias"  # SD's to_k has none: the edit adds one holding the neutral means
    np.testing.assert_allclose(edit.weights[key][expected].double().numpy(), neutral.mean(0)[expected], rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    assert torch.count_nonzero(edit.weights[f"{k_site.full_path}.weight"][expected]) == 0
    zero = compute_edit(
        tiny_sd1, REQUEST, method="neurons", config=NeuronConfig(sites=(XATTN,), top_n=3, ablation="zero")
    )
    assert not any(k.endswith(".bias") for k in zero.parameters)  # bias-free rows zeroed output 0 already


def test_paper_mode_reads_the_last_padding_slot(tiny_sd1):
    ablation = _paper(tiny_sd1)
    k_site, v_site = tiny_sd1.kv_sites(XATTN)
    assert [s.site for s in ablation.sites] == [k_site.name, v_site.name]
    concept = _final_states(tiny_sd1, [t.format("cat") for t in TEMPLATES])[:, 76]  # slot 76: last of 77
    neutral = _final_states(tiny_sd1, [t.format("dog") for t in TEMPLATES])[:, 76]
    for site, chosen in zip((k_site, v_site), ablation.sites, strict=True):
        w = tiny_sd1.module(site).weight.detach().double().numpy()
        a_concept, a_neutral = concept @ w.T, neutral @ w.T  # SD's to_k/to_v have no bias
        expected = _top(_z_by_hand(a_concept, a_neutral), 3)
        assert list(chosen.channels) == expected
        np.testing.assert_allclose(chosen.values, a_neutral.mean(0)[expected], rtol=1e-5, atol=1e-6)
    zero = _paper(tiny_sd1, ablation="zero")
    assert all(v == 0.0 for s in zero.sites for v in s.values)
    assert [s.channels for s in zero.sites] == [s.channels for s in ablation.sites]


def test_paper_ablation_sets_only_the_conditional_rows_at_every_position(tiny_sd1):
    ablation = _paper(tiny_sd1)
    k_site = tiny_sd1.kv_sites(XATTN)[0]
    chosen = ablation.sites[0]
    idx = list(chosen.channels)
    others = [u for u in range(tiny_sd1.module(k_site).out_features) if u not in idx]
    runs = [Run(prompt="a photo of a cat", seed=0), Run(prompt="a photo of a cat", seed=0)]
    with record(tiny_sd1, [k_site]) as plain:
        generate_runs(tiny_sd1, runs, config=CFG)
    ablated_runs = [runs[0], Run(prompt=runs[1].prompt, seed=0, interventions=ablation.interventions())]
    with record(tiny_sd1, [k_site]) as seen:
        generate_runs(tiny_sd1, ablated_runs, config=CFG)
    before, after = plain[k_site.name][0], seen[k_site.name][0]  # step 0: both batches on the same latents
    # rows: [uncond run 0, uncond run 1, cond run 0, cond run 1]
    torch.testing.assert_close(after[[0, 1, 2]], before[[0, 1, 2]], rtol=0, atol=0)
    values = torch.tensor(chosen.values, dtype=after.dtype).expand(after.shape[1], -1)
    torch.testing.assert_close(after[3][:, idx], values, rtol=0, atol=0)  # every token position
    torch.testing.assert_close(after[3][:, others], before[3][:, others], rtol=0, atol=0)
    assert not torch.equal(before[3][:, idx], after[3][:, idx])


def test_generate_takes_the_ablation_and_leaves_the_model_as_it_was(tiny_sd1):
    ablation = _paper(tiny_sd1, top_n=8)
    hashes = parameter_hashes(tiny_sd1)
    ablation.check_model(tiny_sd1)
    plain = generate(tiny_sd1, "a cat", config=CFG)
    ablated = generate(tiny_sd1, "a cat", config=CFG, interventions=ablation.interventions())
    assert not torch.equal(plain, ablated)
    assert parameter_hashes(tiny_sd1) == hashes
    with pytest.raises(ConfigError, match="generate_runs"):
        generate(tiny_sd1, "a cat", config=CFG, interventions=(Restore(sites=(XATTN,), source=0),))


def test_ablation_file_round_trip_and_model_check(tiny_sd1, tiny_sd2, tmp_path):
    ablation = _paper(tiny_sd1)
    path = ablation.save(tmp_path / "abl.json")
    loaded = NeuronAblation.load(path)
    assert loaded == ablation and loaded.interventions() == ablation.interventions()
    assert json.loads(path.read_text())["format"] == "diffloc-ablation"
    loaded.check_model(tiny_sd1)
    with pytest.raises(EditError, match="computed for a sd1 model, not sd2"):
        loaded.check_model(tiny_sd2)
    weights_edit = compute_edit(tiny_sd1, REQUEST, method="neurons", config=NeuronConfig(sites=(XATTN,), top_n=3))
    with weights_edit.applied(tiny_sd1), pytest.raises(EditError, match="differs from the weights it was computed"):
        loaded.check_model(tiny_sd1)
    with pytest.raises(EditError, match="is a directory"):
        ablation.save(tmp_path)


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "unreadable"),
        ('{"format": "diffloc-edit"}', "not a diffloc neuron ablation"),
        ('{"format": "diffloc-ablation", "sites": [{"site": "unet.xattn.1.k"}], "base": {}}', "malformed"),
        (
            '{"format": "diffloc-ablation", "base": {}, "sites": [{"site": "s", "channels": [1, 2], "values": [0.0]}]}',
            "2 channels but 1 values",
        ),
    ],
)
def test_bad_ablation_files_are_one_line_errors(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(EditError, match=words) as info:
        NeuronAblation.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda m: NeuronConfig(sites=(XATTN,), mode="reference"),
            "mode must be one of weights, paper, got 'reference'",
        ),
        (
            lambda m: _paper(m, top_n=100_000),
            "top_n=100000 exceeds the 16 output channels of unet.xattn.1.k; use 1..16",
        ),
        (
            lambda m: compute_edit(m, REQUEST, method="neurons", config=NeuronConfig(sites=(XATTN,), mode="paper")),
            "use diffloc.editing.compute_ablation",
        ),
        (lambda m: compute_ablation(m, REQUEST, NeuronConfig(sites=(XATTN,))), "needs NeuronConfig(mode='paper')"),
    ],
)
def test_bad_neuron_inputs_are_one_line_errors(tiny_sd1, make, words):
    with pytest.raises(ConfigError) as info:
        make(tiny_sd1)
    assert words in str(info.value) and "\n" not in str(info.value)
