"""What an audit looks for: the concept an edit erased, and the text the scorer reads it by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffloc.errors import ConfigError
from diffloc.world import vocab
from diffloc.world.phrasings import kind_of

#: per ShapesWorld kind: what a removal edit maps the concept to, and how the detector names the concept
_ANCHORS = {
    "style": (vocab.STYLE_ANCHOR,),
    "object": (vocab.OBJECT_ANCHOR, f"a {vocab.OBJECT_ANCHOR}"),
    "fact": (vocab.FACT_ANCHOR, f"a {vocab.FACT_ANCHOR} flag"),
}
_ATTRIBUTES = {"style": "in the style of {}", "object": "a {}", "fact": "the flag of {}"}


@dataclass(frozen=True)
class AuditTarget:
    """The erased concept.

    Attributes:
        concept: its name as the edit's request writes it (``pica stro``).
        attribute: what the scorer reads to say it is shown (``in the style of pica stro``).
        kind: its ShapesWorld kind (``style``, ``object``, ``fact``), or ``None`` outside ShapesWorld.
        target: what the edit maps it to (``a plain style``).
    """

    concept: str
    attribute: str
    kind: str | None
    target: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dict(self.__dict__)


def audit_target(
    request: dict[str, Any], *, world: bool, concept: str | None = None, attribute: str | None = None
) -> AuditTarget:
    """The concept an edit with ``request`` (:attr:`Edit.request`) erased.

    ``world``: the scorer is ShapesWorld's detectors, which name a removed style, object or flag by itself; an
    edit that maps a concept to another concept (an update) and any edit scored by CLIP need ``attribute``.

    Raises:
        ConfigError: the edit names no concept, several without ``concept``, ``concept`` is not one of them,
            or the attribute cannot be known without ``attribute``.
    """
    concepts = [str(c) for c in request.get("concepts", ())]
    targets = [str(t) for t in request.get("targets", ())]
    if not concepts:
        raise ConfigError("this edit names no concept it erased; audit edits made from a concept (quickfix, locoedit)")
    if concept is None:
        if len(concepts) > 1:
            raise ConfigError(f"this edit changes {len(concepts)} concepts ({', '.join(concepts)}); name one with "
                              "--concept")  # fmt: skip
        concept = concepts[0]
    if concept not in concepts:
        raise ConfigError(f"concept {concept!r} is not one this edit changes ({', '.join(concepts)})")
    target = targets[concepts.index(concept)] if len(targets) == len(concepts) else (targets or [""])[0]
    kind = kind_of(concept) if world else None
    if attribute is not None:
        if not attribute.strip():
            raise ConfigError("--attribute is empty; name what shows the erased concept, e.g. 'a flumox'")
        return AuditTarget(concept, attribute, kind, target)
    if not world:
        raise ConfigError(f"name what the scorer should look for with --attribute (e.g. {concept!r} or 'in the "
                          f"style of {concept}'): only ShapesWorld's detectors name a concept by itself")  # fmt: skip
    if kind is None:
        raise ConfigError(f"{concept!r} is not a ShapesWorld style, object or flag; name what shows it with "
                          "--attribute")  # fmt: skip
    if target not in _ANCHORS[kind]:
        raise ConfigError(f"this edit updates {concept!r} to {target!r} rather than removing it: name the erased "
                          f"concept with --attribute, e.g. {_ATTRIBUTES[kind].format(concept)!r}")  # fmt: skip
    return AuditTarget(concept, _ATTRIBUTES[kind].format(concept), kind, target)
