"""The :class:`NeuronAblation` artifact: channels of cross-attention K/V projections set to fixed values while
generating, as an intervention on the conditional branch (the ICML 2024 paper's neuron "dropout").

Unlike an :class:`~diffloc.editing.edit.Edit`, an ablation writes no weights. It is a list of sites, channels and
values that the engine applies with :class:`~diffloc.engine.interventions.SetChannels` to the conditional rows of
the runs that ask for it, at every token position and every denoising step; the unconditional branch and every
other run of a batch are untouched. Use it per run::

    ablation = compute_ablation(model, request, NeuronConfig(sites="unet.xattn.8,unet.xattn.9", mode="paper"))
    ablation.check_model(model)
    images = generate(model, prompts, interventions=ablation.interventions())
    # or, mixed with other runs: generate_runs(model, [Run(prompt, seed, interventions=ablation.interventions())])
    ablation.save("no-pica.json"); same = NeuronAblation.load("no-pica.json")

On disk it is one JSON file (format ``diffloc-ablation``): the channels and values, the request and config that
produced them, and the sha256 of every projection tensor the values were computed from, so it refuses a model
whose projections differ (another checkpoint, or an edit applied to those layers).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffloc.atomic import write_json_atomic
from diffloc.editing.edit import ABSENT, current_tensor, tensor_hash
from diffloc.engine.interventions import SetChannels
from diffloc.errors import DifflocError, EditError
from diffloc.models.base import LoadedModel

FORMAT = "diffloc-ablation"
FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ChannelAblation:
    """Channels of one projection site (``unet.xattn.8.k``) and the values they are set to."""

    site: str
    channels: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.channels:
            raise EditError(f"ablation of {self.site}: no channels")
        if len(self.channels) != len(self.values):
            raise EditError(f"ablation of {self.site}: {len(self.channels)} channels but {len(self.values)} values")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in self.channels):
            raise EditError(f"ablation of {self.site}: channels must be integers >= 0, got {list(self.channels)[:5]}…")
        if len(set(self.channels)) != len(self.channels):
            raise EditError(f"ablation of {self.site}: a channel is listed twice")
        if not all(isinstance(v, float) and math.isfinite(v) for v in self.values):
            raise EditError(f"ablation of {self.site}: values must be finite floats")


@dataclass(frozen=True, kw_only=True)
class NeuronAblation:
    """A neuron ablation: per projection site, channels set to values in the conditional branch.

    Attributes:
        family: model family it was computed on (``sd1``, ``sd2``, ``sdxl``, ``if``).
        sites: one :class:`ChannelAblation` per projection site.
        base: sha256 (:func:`~diffloc.editing.edit.tensor_hash`) of every projection parameter the values were
            computed from, by pipeline-level path (``"absent"`` for a missing bias).
        request: the edit request as a dict.
        config: the :class:`~diffloc.editing.neurons.NeuronConfig` as a dict.
        stats: numbers about the detection (prompts, the chosen channels' z-scores, seconds).
        version: diffloc version that computed it.
    """

    family: str
    sites: tuple[ChannelAblation, ...]
    base: Mapping[str, str]
    request: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    version: str = ""

    def __post_init__(self) -> None:
        if not self.sites:
            raise EditError("a neuron ablation must name at least one projection site")
        names = [s.site for s in self.sites]
        if len(set(names)) != len(names):
            raise EditError(f"a neuron ablation names a site twice: {names}")
        for name in ("request", "config", "stats"):  # plain JSON, so a saved and loaded ablation compare equal
            try:
                object.__setattr__(self, name, json.loads(json.dumps(dict(getattr(self, name)))))
            except (TypeError, ValueError) as exc:
                raise EditError(f"neuron ablation {name} is not plain JSON: {exc}") from None
        if not self.version:
            from diffloc import __version__

            object.__setattr__(self, "version", __version__)

    @property
    def num_channels(self) -> int:
        """Channels ablated, over every site."""
        return sum(len(s.channels) for s in self.sites)

    @property
    def result_hashes(self) -> dict[str, str]:
        """What results computed with this ablation are keyed on (as :attr:`Edit.result_hashes
        <diffloc.editing.edit.Edit.result_hashes>`): a sha256 of its sites, channels and values."""
        sites = [[s.site, list(s.channels), list(s.values)] for s in self.sites]
        return {"neuron_ablation": hashlib.sha256(json.dumps(sites).encode()).hexdigest()}

    def interventions(self) -> tuple[SetChannels, ...]:
        """The engine interventions of this ablation: give them to every :class:`~diffloc.engine.interventions.Run`
        that should be ablated (call :meth:`check_model` first)."""
        return tuple(SetChannels(site=s.site, channels=s.channels, values=s.values) for s in self.sites)

    def check_model(self, model: LoadedModel) -> None:
        """Raise :class:`EditError` unless ``model`` is the one the ablation was computed on.

        Raises:
            EditError: another family, a site the model lacks, a channel beyond a projection's width, or a
                projection tensor that differs from the recorded base (naming it).
        """
        if model.family != self.family:
            raise EditError(f"this neuron ablation was computed for a {self.family} model, not {model.family}")
        for ablation in self.sites:
            try:
                module = model.module(ablation.site)
            except DifflocError as exc:
                raise EditError(f"neuron ablation site {ablation.site!r}: {exc}") from None
            width = getattr(module, "out_features", None)
            if width is not None and max(ablation.channels) >= width:
                raise EditError(
                    f"neuron ablation of {ablation.site}: channel {max(ablation.channels)} is beyond its {width} "
                    "output channels"
                )
        for key, expected in self.base.items():
            found = tensor_hash(current_tensor(model, key))
            if found != expected:
                raise EditError(
                    f"cannot use this neuron ablation: {key} differs from the weights it was computed on (sha256 "
                    f"{expected[:12]}…, model {found[:12]}…); wrong model or an edit is applied to that layer"
                )

    # -- persistence -----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The JSON form (what :meth:`save` writes)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": "neurons",
            "mode": "paper",
            "family": self.family,
            "diffloc_version": self.version,
            "request": dict(self.request),
            "config": dict(self.config),
            "stats": dict(self.stats),
            "base": dict(self.base),
            "sites": [{"site": s.site, "channels": list(s.channels), "values": list(s.values)} for s in self.sites],
        }

    def save(self, path: str | Path) -> Path:
        """Write the ablation as JSON atomically.

        Raises:
            EditError: ``path`` is a directory.
        """
        target = Path(path)
        if target.is_dir():
            raise EditError(f"ablation output {str(target)!r} is a directory; give a file name like no-style.json")
        return write_json_atomic(target, self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> NeuronAblation:
        """Read an ablation written by :meth:`save`.

        Raises:
            EditError: a missing or unreadable file, another format, or malformed sites.
        """
        source = Path(path)
        if not source.is_file():
            raise EditError(f"{str(source)!r} is not a neuron ablation file (from 'diffloc edit neurons --mode paper')")
        try:
            meta = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EditError(f"{source} is unreadable: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise EditError(f"{source} is not a diffloc neuron ablation (format {found!r}, expected {FORMAT!r})")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise EditError(f"{source} has format version {meta['format_version']}; this diffloc reads <= 1")
        try:
            sites = tuple(
                ChannelAblation(
                    site=str(s["site"]),
                    channels=tuple(s["channels"]),
                    values=tuple(float(v) for v in s["values"]),
                )
                for s in meta["sites"]
            )
            base = {str(k): str(v) for k, v in meta["base"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise EditError(f"{source}: malformed ablation ({type(exc).__name__}: {exc})") from None
        return cls(
            family=str(meta.get("family", "")),
            sites=sites,
            base=base,
            request=meta.get("request", {}),
            config=meta.get("config", {}),
            stats=meta.get("stats", {}),
            version=str(meta.get("diffloc_version", "")),
        )

    def summary(self) -> str:
        """Human-readable description: request, sites and channel counts, base."""
        lines = [
            f"neuron ablation (paper mode) for a {self.family} model (diffloc {self.version})",
            f"request: {json.dumps(dict(self.request))}",
            f"ablates {self.num_channels} channel(s) in the conditional branch, at every token position:",
        ]
        for s in self.sites:
            shown = ", ".join(str(c) for c in s.channels[:8]) + (", …" if len(s.channels) > 8 else "")
            lines.append(f"  {s.site}: {len(s.channels)} channel(s) [{shown}]")
        for key, sha in self.base.items():
            lines.append(f"  base {key}: {'absent' if sha == ABSENT else 'sha256 ' + sha[:16]}")
        return "\n".join(lines)
