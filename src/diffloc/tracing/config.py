"""Configuration of tracing sweeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from diffloc.engine.generate import GenerationConfig
from diffloc.engine.sources import RESTORE_SOURCES
from diffloc.errors import ConfigError
from diffloc.tracing.methods import DIRECTIONS, LOCOGEN_VARIANTS, check_direction
from diffloc.tracing.statistics import IntervalConfig
from diffloc.validate import check_count, check_fraction, check_int, check_noise, check_seed, check_seeds

#: settings that do not change what a (test) item computes, left out of the keys of resumable items: how results
#: are summarized, and which validation items choose the threshold
NON_ITEM_FIELDS = ("bootstrap", "confidence", "validation_seeds")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """Settings shared by every sweep.

    Attributes:
        seeds: seeds per prompt (each seed is one item of the sweep).
        steps: denoising steps per generation.
        guidance: classifier-free guidance scale.
        max_batch: most runs packed into one UNet batch (memory bound; CFG doubles the rows, and a
            ``same-latent`` restore adds one conditional row, so such a run counts 1.5).
        height, width: image size (``None``: the model's default).
        bootstrap: resamples of the bootstrap interval over items (0: no interval).
        confidence: coverage of the interval.
    """

    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int = 20
    guidance: float = 7.5
    max_batch: int = 16
    height: int | None = None
    width: int | None = None
    bootstrap: int = 2000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        check_seeds(self.seeds)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds repeat ({list(self.seeds)}); a repeated seed is the same item twice")
        # Sampling settings are validated where they are defined, with the same messages.
        GenerationConfig(steps=self.steps, guidance=self.guidance, height=self.height, width=self.width)
        check_int("max_batch", self.max_batch, low=2, why="a clean run plus one intervention")
        IntervalConfig(resamples=self.bootstrap, confidence=self.confidence)  # validates both

    @property
    def intervals(self) -> IntervalConfig:
        """How intervals over items are computed."""
        return IntervalConfig(resamples=self.bootstrap, confidence=self.confidence)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def item_dict(self) -> dict[str, Any]:
        """The settings that decide an item's scores (keys of resumable items): :meth:`to_dict` without
        :data:`NON_ITEM_FIELDS`."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_ITEM_FIELDS}


@dataclass(frozen=True, kw_only=True)
class TraceConfig(SweepConfig):
    """Causal tracing settings.

    Attributes:
        noise: std of the Gaussian noise added to the subject's token embeddings; ``None`` means
            ``noise_multiplier`` × the std of the token-embedding matrix (ROME's 3×), recorded in results.
        noise_multiplier: the multiplier used when ``noise`` is ``None``.
        noise_seed: seed of the corruption noise.
        restore_from: where a UNet restore reads its clean value: ``"same-latent"`` (default: the clean-text
            value on the restored run's own latent, mediation in the strict sense) or ``"trajectory"`` (the clean
            run's activation on the clean trajectory; see :class:`~diffloc.engine.interventions.Restore`).
            Text-encoder traces restore during encoding, where both are the same.
        validation_seeds: seeds of the validation items that choose the causal-site threshold (``None``: the
            sweep's ``seeds``).
        substitute: corrupt by *symmetric token replacement* instead of noise: the subject's token embeddings
            become those of this text (the same number of tokens, e.g. ``"blue"`` for ``"red"``), so the corrupted
            run reads the prompt with the substitute in the subject's place, an in-distribution counterfactual
            (noise can also push later layers somewhere no prompt takes them). ``None`` (default): noise.
        direction: ``"restore"`` (default: the corrupted run gets a site's clean value, and the effect is how much
            of the attribute comes back, ``(restored - corrupted) / (clean - corrupted)``: is the site enough?) or
            ``"remove"`` (the clean run gets the site's corrupted value, from the same source ``restore_from``
            names, and the effect is how much of the attribute goes, ``(clean - patched) / (clean - corrupted)``:
            is the site needed?). A concept several layers write jointly, or one that also needs what the other
            layers read, can come back from no site alone and still leave when one site is removed.
        fraction: how much of a site's value a patch moves, in (0, 1]: the patched value is
            ``own + fraction × (source − own)`` (1, default: the whole value). Where a full patch of several sites
            saturates the score (each brings the attribute all the way back, or takes it all away), a partial one
            tells them apart: the site that carries more of it still moves the score at a smaller dose.
    """

    noise: float | None = None
    noise_multiplier: float = 3.0
    noise_seed: int = 0
    restore_from: str = "same-latent"
    validation_seeds: tuple[int, ...] | None = None
    substitute: str | None = None
    direction: str = DIRECTIONS[0]
    fraction: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_direction(self.direction)
        check_fraction(self.fraction)
        if self.noise is not None:
            check_noise(self.noise)
        check_noise(self.noise_multiplier, "noise_multiplier")
        check_seed(self.noise_seed, "noise_seed")
        if self.restore_from not in RESTORE_SOURCES:
            raise ConfigError(f"restore_from must be one of {', '.join(RESTORE_SOURCES)}, got {self.restore_from!r}")
        if self.validation_seeds is not None and not self.validation_seeds:
            raise ConfigError("validation_seeds is empty; give at least one seed, or None for the sweep's seeds")
        if self.validation_seeds is not None:
            check_seeds(self.validation_seeds, "validation_seeds")
        if self.substitute is not None:
            if not isinstance(self.substitute, str) or not self.substitute.strip():
                raise ConfigError(f"substitute must be a non-empty text (the words read in the subject's place), "
                                  f"got {self.substitute!r}")  # fmt: skip
            if self.noise is not None:
                raise ConfigError(f"noise {self.noise!r} and substitute {self.substitute!r} are two corruptions; "
                                  "give one")  # fmt: skip

    def item_dict(self) -> dict[str, Any]:
        """:meth:`SweepConfig.item_dict`; ``substitute`` only when set, ``direction`` and ``fraction`` only when not
        the default, so items corrupted by noise and fully restored keep the keys they were stored under."""
        out = super().item_dict()
        if self.substitute is None:
            out.pop("substitute")
        if self.direction == DIRECTIONS[0]:
            out.pop("direction")
        if self.fraction == 1:
            out.pop("fraction")
        return out

    @property
    def removes(self) -> bool:
        """Whether the trace patches corrupted values into the clean run (``direction="remove"``)."""
        return self.direction == "remove"


@dataclass(frozen=True, kw_only=True)
class LocoGenConfig(SweepConfig):
    """LocoGen settings.

    Attributes:
        window: number of consecutive cross-attention layers fed the target prompt (m).
        mode: ``"remove"`` picks the window with the lowest attribute score (styles, objects);
            ``"update"`` the highest (facts: the attribute is the new fact).
        preset: ``"diffloc"`` (every window of exactly ``window`` layers) or ``"reference"`` (the released
            LocoGen script: windows of 3 that shrink to the single last layers; ``window`` is ignored).
        variant: what a window reads from the target prompt (:data:`LOCOGEN_VARIANTS`):
            ``"cross-attention"`` (LocoGen: the window's cross-attention layers read the target's text states),
            or on a joint-attention family (SD3, FLUX), whose blocks read text through the text stream,
            ``"text-stream"`` (activation patching: the text stream entering each block of the window is the
            one the target prompt has there, on the run's own latent; Staniszewski et al., ICLR 2025) or
            ``"prompt-injection"`` (each block of the window reads the target's context as it enters the
            first block, LocoGen's intervention carried over; that work found it ineffective there).
        fraction: how far a window moves to the target, in (0, 1]: it reads ``own + fraction × (target − own)``
            (1, default: the target's states). Below 1 tells apart windows that a full swap moves equally.
    """

    window: int = 2
    mode: str = "remove"
    preset: str = "diffloc"
    variant: str = "cross-attention"
    fraction: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("window", self.window)
        check_fraction(self.fraction)
        if self.mode not in ("remove", "update"):
            raise ConfigError(f"mode must be 'remove' or 'update', got {self.mode!r}")
        if self.preset not in ("diffloc", "reference"):
            raise ConfigError(f"preset must be 'diffloc' or 'reference', got {self.preset!r}")
        if self.variant not in LOCOGEN_VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(LOCOGEN_VARIANTS)}, got {self.variant!r}")

    def item_dict(self) -> dict[str, Any]:
        """As :meth:`SweepConfig.item_dict`; the default variant and fraction are left out, so items saved before
        they existed keep their keys."""
        items = super().item_dict()
        if items.get("variant") == LOCOGEN_VARIANTS[0]:
            del items["variant"]
        if items.get("fraction") == 1:
            del items["fraction"]
        return items
