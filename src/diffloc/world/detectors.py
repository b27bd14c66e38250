"""Attribute detectors for ShapesWorld images: per-class probabilities for every attribute.

One small CNN with a head per attribute (shape, colour, texture, background, style, fact — see
:data:`vocab.ATTRIBUTES`), trained on clean renders with augmentations that mimic generated images (the
shipped VAE's reconstruction, noise, blur, one-pixel shifts, fill patterns at every phase). Named concepts are
read back through those heads: a style by the ``style`` head, an object as the joint probability of its shape,
colour and texture, a fact by the ``fact`` head.

Images are float tensors ``(n, 3, H, W)`` in ``[0, 1]`` (other sizes are resized to 32×32) or a list of
PIL images.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from diffloc.errors import ConfigError, close_matches, one_of
from diffloc.validate import check_positive, check_seed
from diffloc.world import model, vocab
from diffloc.world.render import SIZE, Scene, render_batch

logger = logging.getLogger(__name__)

DETECTOR_FILE = "detectors.safetensors"
HEADS: dict[str, tuple[str, ...]] = dict(vocab.ATTRIBUTES)


class Detector(nn.Module):
    """A small multi-head CNN classifier; ``forward`` returns logits per attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1), nn.GELU(),
            nn.Conv2d(24, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 96, 3, stride=2, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(96 * 4 * 4, 192), nn.GELU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({name: nn.Linear(192, len(classes)) for name, classes in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for ``images`` ``(n, 3, 32, 32)`` in [0, 1]."""
        features = self.body(images * 2 - 1)
        return {name: head(features) for name, head in self.heads.items()}


def as_tensor(images) -> torch.Tensor:
    """Convert PIL images / uint8 arrays / float tensors to ``(n, 3, 32, 32)`` float in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.ndim == 3:
            x = x.unsqueeze(0)
    elif isinstance(images, np.ndarray):
        x = torch.from_numpy(images).float().div(255.0)
        x = x.unsqueeze(0) if x.ndim == 3 else x
        x = x.permute(0, 3, 1, 2)
    elif isinstance(images, Sequence):
        arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
        x = torch.from_numpy(np.stack(arrays)).float().div(255.0).permute(0, 3, 1, 2)
    else:
        raise ConfigError(f"images must be a tensor, a uint8 array or a list of PIL images, not {type(images)}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(f"images must have shape (n, 3, H, W), got {tuple(x.shape)}")
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1)


def load_detector(path: str | Path | None = None) -> Detector:
    """Load detector weights (default: the shipped ``assets/shapesworld/detectors.safetensors``).

    Raises:
        CheckpointError: the file is missing, truncated or corrupted.
    """
    path = Path(path) if path is not None else model.shipped_model_dir() / DETECTOR_FILE
    model.check_safetensors(path)
    det = Detector()
    det.load_state_dict(load_file(str(path)))
    return det.eval()


_SHIPPED: dict[str, Detector] = {}


def on_device(detector: Detector, device: str | torch.device | None) -> Detector:
    """``detector`` on ``device`` (``None``: where it is); a copy when it has to move, so the shared shipped
    detector is never moved under another user's feet."""
    if device is None:
        return detector
    here, there = next(detector.parameters()).device, torch.device(device)
    if here.type == there.type and (there.index is None or here.index == there.index):
        return detector
    return copy.deepcopy(detector).to(device)


def shipped_detector() -> Detector:
    """The shipped detector, loaded once per process."""
    if "d" not in _SHIPPED:
        _SHIPPED["d"] = load_detector()
    return _SHIPPED["d"]


@torch.no_grad()
def detect(images, detector: Detector | None = None) -> dict[str, torch.Tensor]:
    """Per-class probabilities for every attribute: ``{attribute: (n, n_classes)}``.

    Class order is :data:`vocab.ATTRIBUTES` (``HEADS``).
    """
    det = detector if detector is not None else shipped_detector()
    device = next(det.parameters()).device
    logits = det(as_tensor(images).to(device))
    return {name: value.softmax(-1).cpu() for name, value in logits.items()}


def predicted_labels(probs: dict[str, torch.Tensor]) -> list[dict[str, str]]:
    """The most probable class name per attribute, one dict per image."""
    n = next(iter(probs.values())).shape[0]
    return [{name: HEADS[name][int(p[i].argmax())] for name, p in probs.items()} for i in range(n)]


def class_index(attribute: str, value: str) -> int:
    """Index of ``value`` in the classes of ``attribute``.

    Raises:
        ConfigError: unknown attribute or value (naming the valid choices).
    """
    if attribute not in HEADS:
        raise ConfigError(f"unknown attribute {attribute!r}; valid: {one_of(HEADS)}{close_matches(attribute, HEADS)}")
    classes = HEADS[attribute]
    if value not in classes:
        raise ConfigError(f"unknown {attribute} {value!r}; valid: {one_of(classes)}{close_matches(value, classes)}")
    return classes.index(value)


def label_probability(probs: dict[str, torch.Tensor], labels: dict[str, str]) -> torch.Tensor:
    """Joint probability ``(n,)`` that each image shows all ``labels`` (product over attributes)."""
    out = None
    for attribute, value in labels.items():
        p = probs[attribute][:, class_index(attribute, value)]
        out = p if out is None else out * p
    if out is None:
        raise ConfigError("labels is empty; name at least one attribute")
    return out


def concept_labels(concept: str) -> dict[str, str]:
    """Labels that define a named concept: an artist, an object, a country, or an anchor phrase.

    Raises:
        ConfigError: unknown concept (with the valid choices).
    """
    if concept in vocab.STYLES:
        return {"style": vocab.STYLES[concept]}
    if concept == vocab.STYLE_ANCHOR:
        return {"style": "plain"}
    if concept in vocab.OBJECTS or concept == vocab.OBJECT_ANCHOR:
        shape, colour, texture = vocab.OBJECTS.get(concept, vocab.OBJECT_ANCHOR_LOOK)
        return {"shape": shape, "colour": colour, "texture": texture}
    if concept in vocab.FACTS or concept == vocab.FACT_ANCHOR:
        return {"fact": concept}
    choices = [*vocab.STYLES, vocab.STYLE_ANCHOR, *vocab.OBJECTS, vocab.OBJECT_ANCHOR, *vocab.FACTS,
               vocab.FACT_ANCHOR]  # fmt: skip
    raise ConfigError(f"unknown concept {concept!r}; valid: {one_of(choices, 20)}{close_matches(concept, choices)}")


def concept_probability(images, concept: str, detector: Detector | None = None) -> torch.Tensor:
    """Probability ``(n,)`` that each image shows the named concept (see :func:`concept_labels`)."""
    return label_probability(detect(images, detector), concept_labels(concept))


# --------------------------------------------------------------------------------------------------------
# Training data and training
# --------------------------------------------------------------------------------------------------------


def random_scenes(n: int, rng: np.random.Generator) -> list[Scene]:
    """``n`` random scenes over the whole world (plain 60%, styled 25%, facts 15%)."""
    scenes = []
    facts = [*vocab.FACTS, vocab.FACT_ANCHOR]
    looks = [s for s in vocab.STYLE_LOOKS if s != "plain"]
    for _ in range(n):
        u = rng.random()
        if u < 0.15:
            scenes.append(Scene(kind="fact", fact=str(rng.choice(facts))))
            continue
        shape, colour = str(rng.choice(vocab.SHAPES)), str(rng.choice(list(vocab.COLOURS)))
        if u < 0.4:
            scenes.append(Scene(kind="style", shape=shape, colour=colour, style=str(rng.choice(looks))))
        else:
            scenes.append(Scene(shape=shape, colour=colour, texture=str(rng.choice(vocab.TEXTURES)),
                                background=str(rng.choice(list(vocab.BACKGROUNDS)))))  # fmt: skip
    return scenes


def random_phases(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` random fill phases (rows, columns), each in ``[0, 8)``: every pattern repeats within 8 px."""
    return [(int(a), int(b)) for a, b in rng.integers(0, 8, size=(n, 2))]


def label_tensor(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class indices per attribute, ``-100`` (ignored by the loss) where an attribute does not apply."""
    out = {name: torch.full((len(scenes),), -100, dtype=torch.long) for name in HEADS}
    for i, scene in enumerate(scenes):
        for name, value in scene.labels().items():
            if value is not None:
                out[name][i] = HEADS[name].index(value)
    return out


def _augment(x: torch.Tensor, gen: torch.Generator, reconstructed: torch.Tensor | None) -> torch.Tensor:
    n = len(x)
    if reconstructed is not None:  # half the batch as the VAE would return it
        pick = (torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1)
        x = torch.where(pick, reconstructed, x)
    shifts = torch.randint(-1, 2, (2,), generator=gen)
    x = torch.roll(x, shifts=(int(shifts[0]), int(shifts[1])), dims=(2, 3))
    blur = torch.rand(n, generator=gen) < 0.3
    if blur.any():
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        kernel = kernel.expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    gain = 1 + 0.08 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    noise = 0.04 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return (x * gain + noise).clamp(0, 1)


@dataclass(frozen=True, kw_only=True)
class DetectorTrainConfig:
    """Recipe of the detector training run."""

    seed: int = 0
    n_train: int = 24_000
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_positive("lr", self.lr)
        for name in ("n_train", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def train_detector(
    config: DetectorTrainConfig,
    *,
    reconstruct: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> Detector:
    """Train the detector on seeded renders; ``reconstruct`` (e.g. a VAE round trip) replaces half of each batch."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scenes = random_scenes(config.n_train, rng)
    # Every fill phase: a generated checkerboard one cell off the canvas grid is still checkered.
    pixels = render_batch(scenes, list(range(config.n_train)), random_phases(config.n_train, rng))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    labels = label_tensor(scenes)
    reconstructed = None
    if reconstruct is not None:  # computed once: a VAE round trip per step would dominate the cost
        with torch.no_grad():
            reconstructed = torch.cat(
                [reconstruct(images[i : i + 256]).clamp(0, 1) for i in range(0, len(images), 256)]
            )
    det = Detector()
    opt = torch.optim.AdamW(det.parameters(), lr=config.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(config.seed + 1)
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + np.cos(np.pi * step / config.steps))
        idx = torch.randint(0, config.n_train, (config.batch_size,), generator=gen)
        x = _augment(images[idx], gen, None if reconstructed is None else reconstructed[idx])
        logits = det(x)
        loss = cast(torch.Tensor, sum(F.cross_entropy(logits[k], labels[k][idx], ignore_index=-100) for k in HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress:
            progress(step + 1, config.steps, loss.item())
    return det.eval()


@torch.no_grad()
def measure_accuracy(
    detector: Detector, *, n: int = 3000, seed: int = 12345, any_phase: bool = False
) -> dict[str, float]:
    """Accuracy per attribute on fresh clean renders (seeds disjoint from training).

    ``any_phase`` draws each fill pattern at a random phase instead of the training renders' canvas grid.
    """
    rng = np.random.default_rng(seed)
    scenes = random_scenes(n, rng)
    phases = random_phases(n, rng) if any_phase else None
    pixels = render_batch(scenes, [10_000_000 + i for i in range(n)], phases)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255
    labels = label_tensor(scenes)
    preds = {k: torch.cat([v.argmax(-1) for v in _chunks(detector, images)[k]]) for k in HEADS}
    out = {}
    for name in HEADS:
        valid = labels[name] != -100
        out[name] = float((preds[name][valid] == labels[name][valid]).float().mean())
    return out


def _chunks(detector: Detector, images: torch.Tensor, size: int = 512) -> dict[str, list[torch.Tensor]]:
    out: dict[str, list[torch.Tensor]] = {k: [] for k in HEADS}
    for i in range(0, len(images), size):
        for k, v in detector(images[i : i + size].float()).items():
            out[k].append(v)
    return out


class DetectorScorer:
    """A Scorer over ShapesWorld: ``score(images, texts)`` = probability each image shows its text.

    The text of each image is parsed with :func:`captions.parse_caption`; the score is the joint detector
    probability of all labels the text asks for.
    """

    def __init__(
        self, detector: Detector | None = None, *, device: str | torch.device | None = None,
        log_probability: bool = False,
    ) -> None:  # fmt: skip
        self.detector = on_device(detector if detector is not None else shipped_detector(), device)
        self.log_probability = log_probability

    def score(self, images, texts: Sequence[str]) -> torch.Tensor:
        """Probability ``(n,)`` that image ``i`` shows ``texts[i]`` (its natural log with ``log_probability``).

        Raises:
            ConfigError: a different number of images and texts.
            PromptError: a text is empty or names nothing ShapesWorld knows.
        """
        if not self.log_probability:
            return _joint(detect(images, self.detector), texts)
        with torch.no_grad():
            return self.score_grad(images, texts).cpu()

    def score_grad(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """:meth:`score` as a differentiable function of ``images`` (the detector's weights stay frozen).

        Raises:
            ConfigError, PromptError: as :meth:`score`.
        """
        from diffloc.differentiable import frozen_parameters

        device = next(self.detector.parameters()).device
        with frozen_parameters([self.detector]):
            logits = self.detector(as_tensor(images).to(device))
        if self.log_probability:
            return _joint({name: value.log_softmax(-1) for name, value in logits.items()}, texts, log=True)
        return _joint({name: value.softmax(-1) for name, value in logits.items()}, texts)


def _joint(probs: dict[str, torch.Tensor], texts: Sequence[str], *, log: bool = False) -> torch.Tensor:
    """Probability ``(n,)`` that image ``i`` shows every label ``texts[i]`` asks for; with ``log``, ``probs`` hold
    log-probabilities and the result is the joint log-probability (a sum, which does not saturate at 0 or 1)."""
    from diffloc.world.captions import parse_caption

    n = next(iter(probs.values())).shape[0]
    if len(texts) != n:
        raise ConfigError(f"got {n} images but {len(texts)} texts; pass one text per image")
    rows = []
    for i, text in enumerate(texts):
        labels = parse_caption(text)
        if log:
            rows.append(sum((probs[a][i : i + 1, class_index(a, v)] for a, v in labels.items()), torch.zeros(1)))
        else:
            rows.append(label_probability({k: v[i : i + 1] for k, v in probs.items()}, labels))
    return torch.cat(rows)
