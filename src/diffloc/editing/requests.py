"""What an edit should do: concepts, their targets, prompt templates and concepts to preserve.

An :class:`EditRequest` is method-independent. Every method turns it into prompt pairs the same way:
each concept is filled into every template (``"{}"`` marks the slot) and paired with its target filled into
the same template, so the key and value of one pair differ only in the concept. Concepts to *preserve* are
filled into the same templates and paired with themselves (UCE-style preservation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from diffloc.errors import ConfigError, PromptError

#: Diff-QuickFix's prompt templates (ICLR 2024 reference notebook): the concept alone and three captions.
QUICKFIX_TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}", "an image of {}", "a picture of {}")
#: LocoEdit's key prompts (ICML 2024 reference ``loco_edit.py``): the concept alone and three style captions.
LOCOEDIT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a painting in the style of {}",
    "a photo in the style of {}",
    "a picture in the style of {}",
)


@dataclass(frozen=True, kw_only=True)
class PromptPair:
    """One key/value prompt pair.

    Attributes:
        key_prompt: prompt containing ``key_subject`` (the concept or a preserved concept).
        key_subject: the words whose last token is the key position.
        value_prompt: prompt containing ``value_subject`` (the target, or the key itself for preservation).
        value_subject: the words whose last token is the value position.
        preserve: whether this pair preserves a concept (maps it to itself).
    """

    key_prompt: str
    key_subject: str
    value_prompt: str
    value_subject: str
    preserve: bool = False


def _clean_strings(label: str, values: Any) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    out = tuple(values)
    for value in out:
        if not isinstance(value, str):
            raise PromptError(f"{label} must be strings, got {type(value).__name__} {value!r}")
    return tuple(" ".join(v.split()) for v in out)


@dataclass(frozen=True, kw_only=True)
class EditRequest:
    """Concepts to change, what each becomes, the prompts that carry them, and what to keep.

    Attributes:
        concepts: the concepts to edit, e.g. ``("van gogh",)``.
        targets: one target per concept (a single target is used for every concept), e.g. ``("a painting",)``.
            For a style or object removal the target is a generic anchor; for a fact update it is the new fact.
        templates: extra prompt templates with one ``"{}"`` slot, used in addition to the method's defaults.
        default_templates: whether to use the method's default templates (Diff-QuickFix: the reference
            notebook's 4; LocoEdit and neurons: the reference ``loco_edit.py`` 4).
        preserve: concepts that must keep their meaning; each is mapped to itself in the same solve.
        preserve_prompts: whole prompts whose text states must not change (e.g. plain captions the edit must
            leave alone): every token position after BOS, EOS and padding included, maps to itself.
            Diff-QuickFix and LocoEdit only (neuron edits refuse them).

    Raises:
        PromptError: no concept, an empty concept or target, a template without exactly one ``{}``, or no
            template at all.
        ConfigError: the number of targets matches neither 1 nor the number of concepts.

    Example:
        >>> EditRequest(concepts=("van gogh",), targets=("a painting",), preserve=("monet",))
    """

    concepts: tuple[str, ...]
    targets: tuple[str, ...]
    templates: tuple[str, ...] = ()
    default_templates: bool = True
    preserve: tuple[str, ...] = field(default_factory=tuple)
    preserve_prompts: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        concepts = _clean_strings("concepts", self.concepts)
        targets = _clean_strings("targets", self.targets)
        templates = _clean_strings("templates", self.templates)
        preserve = _clean_strings("preserve", self.preserve)
        preserve_prompts = _clean_strings("preserve_prompts", self.preserve_prompts)
        if not concepts:
            raise PromptError("no concept to edit; give at least one concept, e.g. 'van gogh'")
        for label, items in (
            ("concept", concepts), ("target", targets), ("preserved concept", preserve),
            ("preserved prompt", preserve_prompts),
        ):  # fmt: skip
            for item in items:
                if not item:
                    raise PromptError(f"empty {label}; every {label} must contain words")
        if len(targets) == 1 and len(concepts) > 1:
            targets = targets * len(concepts)
        if len(targets) != len(concepts):
            raise ConfigError(
                f"{len(targets)} targets for {len(concepts)} concepts; give one target, or one per concept"
            )
        for template in templates:
            if template.count("{}") != 1 or "{" in template.replace("{}", ""):
                raise PromptError(f"template {template!r} must contain exactly one '{{}}' slot for the concept")
        if not templates and not self.default_templates:
            raise PromptError("no prompt templates: give templates or keep the default templates")
        overlap = set(concepts) & set(preserve)
        if overlap:
            raise ConfigError(f"concept(s) {sorted(overlap)} are both edited and preserved")
        object.__setattr__(self, "concepts", concepts)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "templates", templates)
        object.__setattr__(self, "preserve", preserve)
        object.__setattr__(self, "preserve_prompts", tuple(dict.fromkeys(preserve_prompts)))

    def all_templates(self, defaults: tuple[str, ...]) -> tuple[str, ...]:
        """The templates a method uses: its defaults (if enabled) then the user's, without repeats."""
        chosen = (defaults if self.default_templates else ()) + self.templates
        return tuple(dict.fromkeys(chosen))

    def pairs(self, defaults: tuple[str, ...]) -> list[PromptPair]:
        """Key/value prompt pairs: every concept (then every preserved concept) in every template."""
        templates = self.all_templates(defaults)
        out = [
            PromptPair(
                key_prompt=template.format(concept),
                key_subject=concept,
                value_prompt=template.format(target),
                value_subject=target,
            )
            for concept, target in zip(self.concepts, self.targets, strict=True)
            for template in templates
        ]
        out += [
            PromptPair(
                key_prompt=template.format(kept),
                key_subject=kept,
                value_prompt=template.format(kept),
                value_subject=kept,
                preserve=True,
            )
            for kept in self.preserve
            for template in templates
        ]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (inverse of :meth:`from_dict`)."""
        return {
            "concepts": list(self.concepts),
            "targets": list(self.targets),
            "templates": list(self.templates),
            "default_templates": self.default_templates,
            "preserve": list(self.preserve),
            "preserve_prompts": list(self.preserve_prompts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditRequest:
        """Rebuild a request from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        known = {"concepts", "targets", "templates", "default_templates", "preserve", "preserve_prompts"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown edit request key(s) {sorted(unknown)}; valid: {sorted(known)}")
        return cls(
            concepts=tuple(data.get("concepts", ())),
            targets=tuple(data.get("targets", ())),
            templates=tuple(data.get("templates", ())),
            default_templates=bool(data.get("default_templates", True)),
            preserve=tuple(data.get("preserve", ())),
            preserve_prompts=tuple(data.get("preserve_prompts", ())),
        )
