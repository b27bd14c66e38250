"""The shipped ShapesWorld detectors read back the labels of clean renders and return probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffloc.errors import CheckpointError, ConfigError, PromptError
from diffloc.world import captions, detectors, model, vocab
from diffloc.world.render import Scene, render, render_batch


@pytest.fixture(scope="module")
def det():
    return detectors.shipped_detector()


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def test_detectors_agree_with_render_labels(det):
    accuracy = detectors.measure_accuracy(det, n=600, seed=777)
    assert set(accuracy) == set(vocab.ATTRIBUTES)
    for attribute, value in accuracy.items():
        assert value >= 0.99, (attribute, value)


def test_detectors_read_fills_at_every_phase(det):
    # A model may draw a checkerboard (or stripes, dots) one cell off the canvas grid the renders use;
    # the detectors must still read the fill, or a correct image would score as a miss.
    phases = [(a, b) for a in range(8) for b in range(8)]
    for fill in ("striped", "dotted", "checkered"):
        if fill == "checkered":
            scene = Scene(kind="style", shape="circle", colour="blue", style="checkered")
            attribute = "style"
        else:
            scene, attribute = Scene(shape="square", colour="green", texture=fill, background="grey"), "texture"
        images = render_batch([scene] * len(phases), list(range(len(phases))), phases)
        read = [p[attribute] for p in detectors.predicted_labels(detectors.detect(_tensor(images), det))]
        assert read.count(fill) >= len(phases) - 1, (fill, read)


def test_probabilities_have_one_column_per_class(det):
    scenes = [Scene(shape=s, colour="blue", texture="striped", background="grey") for s in vocab.SHAPES]
    probs = detectors.detect(_tensor(render_batch(scenes, list(range(len(scenes))))), det)
    for attribute, classes in vocab.ATTRIBUTES.items():
        assert probs[attribute].shape == (len(scenes), len(classes))
        assert torch.allclose(probs[attribute].sum(-1), torch.ones(len(scenes)), atol=1e-5)
        assert (probs[attribute] >= 0).all()
    assert [p["shape"] for p in detectors.predicted_labels(probs)] == list(vocab.SHAPES)


def test_pil_uint8_and_tensor_inputs_agree(det):
    image = render(Scene(shape="cross", colour="yellow", texture="dotted", background="black"), seed=2)
    from_pil = detectors.detect([Image.fromarray(image)], det)
    from_array = detectors.detect(image, det)
    from_tensor = detectors.detect(_tensor(image[None]), det)
    big = torch.nn.functional.interpolate(_tensor(image[None]), scale_factor=4, mode="nearest")
    from_big = detectors.detect(big, det)
    for attribute in vocab.ATTRIBUTES:
        assert torch.allclose(from_pil[attribute], from_tensor[attribute], atol=1e-5)
        assert torch.allclose(from_array[attribute], from_tensor[attribute], atol=1e-5)
        assert from_big[attribute].argmax() == from_tensor[attribute].argmax()


@pytest.mark.parametrize("name", list(vocab.OBJECTS))
def test_object_probability_separates_objects(det, name):
    shape, colour, texture = vocab.OBJECTS[name]
    own = render(Scene(kind="object", shape=shape, colour=colour, texture=texture), seed=1)
    other_name = next(o for o in vocab.OBJECTS if o != name)
    s2, c2, t2 = vocab.OBJECTS[other_name]
    other = render(Scene(kind="object", shape=s2, colour=c2, texture=t2), seed=1)
    p = detectors.concept_probability(np.stack([own, other]), name, det)
    # > 0.5, not ~1: a dotted shape is drawn by a few dots, so its outline can be genuinely ambiguous
    assert p[0] > 0.5 and p[1] < 0.1


@pytest.mark.parametrize("artist", list(vocab.STYLES))
def test_style_and_fact_probabilities(det, artist):
    styled = render(Scene(kind="style", shape="star", colour="green", style=vocab.STYLES[artist]), seed=0)
    plain = render(Scene(shape="star", colour="green"), seed=0)
    p = detectors.concept_probability(np.stack([styled, plain]), artist, det)
    assert p[0] > 0.9 and p[1] < 0.1
    anchor = detectors.concept_probability(np.stack([styled, plain]), vocab.STYLE_ANCHOR, det)
    assert anchor[1] > 0.9 and anchor[0] < 0.1
    flags = np.stack([render(Scene(kind="fact", fact=c), 0) for c in vocab.FACTS])
    p = detectors.concept_probability(flags, "zorbia", det)
    assert p[0] > 0.9 and (p[1:] < 0.1).all()


def test_scorer_scores_images_against_captions(det):
    examples = captions.training_examples(64, seed=5)
    images = _tensor(render_batch([e.scene for e in examples], [e.seed for e in examples]))
    scorer = detectors.DetectorScorer(det)
    right = scorer.score(images, [e.caption for e in examples])
    wrong = scorer.score(images, [examples[(i + 1) % 64].caption for i in range(64)])
    assert right.shape == (64,)
    assert (right > 0.5).float().mean() >= 0.95
    assert right.mean() > wrong.mean() + 0.4
    with pytest.raises(ConfigError, match="pass one text per image"):
        scorer.score(images, ["a red circle"])
    with pytest.raises(PromptError, match="empty caption"):
        scorer.score(images[:1], [""])


def test_unknown_concept_and_value_name_the_choices():
    with pytest.raises(ConfigError) as info:
        detectors.concept_labels("zorblinn")
    assert "zorblin" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="valid: circle"):
        detectors.class_index("shape", "hexagon")
    with pytest.raises(ConfigError, match="unknown attribute"):
        detectors.class_index("size", "big")


def test_corrupted_detector_weights_are_a_one_line_error(tmp_path):
    data = (model.shipped_model_dir() / detectors.DETECTOR_FILE).read_bytes()
    path = tmp_path / "detectors.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError) as info:
        detectors.load_detector(path)
    assert "\n" not in str(info.value) and "detectors.safetensors" in str(info.value)
    path.write_bytes(b"\xff" * 64 + data[64:])
    with pytest.raises(CheckpointError):
        detectors.load_detector(path)
