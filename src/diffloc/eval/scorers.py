"""Scorers: ``score(images, texts) -> (n,)`` — how much each image shows its text.

Tracing and evaluation only see the :class:`~diffloc.scoring.Scorer` protocol (re-exported here), so
ShapesWorld's exact detectors and a CLIP score are interchangeable. :func:`scorer_for` picks the default for a
model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from diffloc.engine.finite import check_scores
from diffloc.errors import ConfigError, ModelLoadError
from diffloc.models.weight_files import check_clip_weights
from diffloc.scoring import Scorer

__all__ = ["ClipScorer", "DetectorScorer", "Scorer", "scorer_for"]


class DetectorScorer:
    """ShapesWorld detectors: probability that the image shows every label the text asks for.

    Texts are parsed as ShapesWorld captions or fragments ("in the style of van goo", "a zorblin",
    "the flag of zorbia", "a red circle"). With ``log_probability`` the score is the joint log-probability, which
    does not saturate where the probability reads exactly 0 or 1 in float32 (attribution's gradients need that).
    """

    name = "shapesworld-detectors"

    def __init__(
        self, detector: Any | None = None, *, device: str | torch.device | None = None, log_probability: bool = False
    ) -> None:
        from diffloc.world.detectors import DetectorScorer as _Impl

        self._impl = _Impl(detector, device=device, log_probability=log_probability)
        self._shipped = detector is None
        self.log_probability = log_probability
        if log_probability:
            self.name = "shapesworld-detectors-logp"

    def reference(self) -> Callable[[], DetectorScorer] | None:
        """How another process rebuilds this scorer (the shipped detectors, on that process's CPU), or ``None``
        for detectors given as an object."""
        if not self._shipped:
            return None
        return partial(DetectorScorer, log_probability=True) if self.log_probability else DetectorScorer

    def with_log_probability(self) -> DetectorScorer:
        """The same detectors scoring the log-probability (what attribution differentiates: a probability
        saturates at 0 and 1, where its gradient vanishes)."""
        if self.log_probability:
            return self
        other = DetectorScorer(self._impl.detector, log_probability=True)
        other._shipped = self._shipped
        return other

    def score(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return check_scores(self._impl.score(images, list(texts)).float(), texts, self.name)

    def score_grad(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """:meth:`score` as a differentiable function of ``images`` (for attribution patching)."""
        return check_scores(self._impl.score_grad(images, list(texts)).float(), texts, self.name)

    def check(self, text: str) -> None:
        from diffloc.world.captions import parse_caption

        parse_caption(text)


class ClipScorer:
    """CLIP score: cosine similarity of L2-normalised image and text features (``transformers`` CLIPModel).

    Loads from a local directory only (no downloads). Images are resized with bicubic interpolation to the
    model's input size and normalised with the checkpoint's mean/std when a preprocessor config exists,
    CLIP's published defaults otherwise. Scoring runs on the CLIP model's device, in float32.
    """

    name = "clip"
    _MEAN = (0.48145466, 0.4578275, 0.40821073)
    _STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(
        self, model: Any, tokenizer: Any, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mean = torch.tensor(mean or self._MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(std or self._STD).view(1, 3, 1, 1)
        self.size = int(model.config.vision_config.image_size)
        self.directory: Path | None = None  # set by from_dir
        self.allow_pickle = False  # set by from_dir: workers rebuilding it read the same weight files

    def reference(self) -> Callable[[], ClipScorer] | None:
        """How another process rebuilds this scorer (:meth:`from_dir` of its directory), or ``None`` when it
        was built from objects in memory."""
        if self.directory is None:
            return None
        return partial(ClipScorer.from_dir, self.directory, allow_pickle=self.allow_pickle)

    @classmethod
    def from_dir(
        cls, path: str | Path, *, allow_pickle: bool = False, device: str | torch.device | None = None
    ) -> ClipScorer:
        """Load a CLIPModel + tokenizer saved with ``save_pretrained`` (safetensors; pickled ``.bin`` weights only
        with ``allow_pickle``), onto ``device`` (default: the CPU; give the diffusion model's device to score
        where the images are made).

        Raises:
            ModelLoadError: the directory is missing or not a CLIP checkpoint.
            CheckpointError: it holds only pickled weights and ``allow_pickle`` is off.
        """
        from transformers import AutoTokenizer, CLIPModel

        directory = Path(path)
        if not (directory / "config.json").is_file():
            raise ModelLoadError(f"CLIP directory {str(directory)!r} has no config.json; save a CLIPModel there first")
        safe_only = check_clip_weights(directory, allow_pickle=allow_pickle)
        try:
            model = CLIPModel.from_pretrained(directory, local_files_only=True, use_safetensors=safe_only or None)
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"could not load CLIP from {str(directory)!r}: {type(exc).__name__}") from None
        placed: Any = model
        scorer = cls(placed.to(device or "cpu"), tokenizer)
        scorer.directory = directory.resolve()
        scorer.allow_pickle = allow_pickle
        return scorer

    @torch.no_grad()
    def score(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self._similarity(images, texts)

    def score_grad(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """:meth:`score` as a differentiable function of ``images`` (CLIP's weights stay frozen)."""
        from diffloc.differentiable import frozen_parameters

        with frozen_parameters([self.model]):
            return self._similarity(images, texts)

    def _similarity(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        if len(texts) != images.shape[0]:
            raise ConfigError(f"got {images.shape[0]} images but {len(texts)} texts; pass one text per image")
        device = next(self.model.parameters()).device
        x = torch.nn.functional.interpolate(
            images.to(device=device, dtype=torch.float32),
            size=(self.size, self.size),
            mode="bicubic",
            align_corners=False,
        )
        x = (x.clamp(0, 1) - self.mean.to(device)) / self.std.to(device)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
        image_features = self.model.get_image_features(pixel_values=x)
        text_features = self.model.get_text_features(**tokens)
        image_features = getattr(image_features, "pooler_output", image_features)
        text_features = getattr(text_features, "pooler_output", text_features)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return check_scores((image_features * text_features).sum(-1).float().cpu(), texts, self.name)

    def check(self, text: str) -> None:
        if not text.strip():
            raise ConfigError("empty attribute text; give the text to score images against, e.g. 'van gogh style'")


def scorer_for(
    model_source: str,
    clip_dir: str | Path | None = None,
    *,
    detectors: bool = False,
    allow_pickle: bool = False,
    device: str | torch.device | None = None,
) -> Scorer:
    """Default scorer: a local CLIP when ``clip_dir`` is given, ShapesWorld detectors for a shipped model or
    when ``detectors`` is set (a ShapesWorld model trained and exported elsewhere); on ``device`` (the
    diffusion model's, so images are scored where they are made; default the CPU). ``allow_pickle``: see
    :meth:`ClipScorer.from_dir`.

    Raises:
        ConfigError: no scorer applies (a real model needs ``clip_dir``).
    """
    from diffloc.models.registry import SHIPPED_MODELS

    if clip_dir is not None:
        return ClipScorer.from_dir(clip_dir, allow_pickle=allow_pickle, device=device)
    if detectors or str(model_source) in SHIPPED_MODELS:
        return DetectorScorer(device=device)
    raise ConfigError(
        f"no default scorer for model {str(model_source)!r}: pass a local CLIP directory (--clip DIR), or "
        "--detectors for a ShapesWorld model you trained"
    )
