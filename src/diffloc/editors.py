"""The table of closed-form editors: what ``compute_edit`` and ``diffloc edit`` know of each method.

An editor is one module under :mod:`diffloc.editing` with a frozen config dataclass and a
``compute(model, request, config) -> Edit`` function (and, when it preserves concepts, a
``statistics(model, request, config)`` function), plus one :class:`EditorSpec` entry in :data:`EDITORS`. The
editing registry (:mod:`diffloc.editing.registry`) resolves the entries to :class:`~diffloc.editing.registry.
EditMethod` objects; the command line builds one ``diffloc edit NAME`` sub-command per entry from its options.
This module imports nothing heavy, so ``diffloc --help`` reads the table without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from diffloc.errors import ConfigError
from diffloc.validate import count_arg, positive_arg

#: LocoEdit: where the values of the mapped keys come from (``bare`` target, or the target in the key's template)
TARGET_MODES = ("bare", "template")
#: LocoEdit: the key positions mapped (the last subject token, or also the EOS/padding positions after it)
POSITIONS = ("subject", "subject+eos")
#: neuron ablation: the value written into ablated channels
ABLATIONS = ("mean", "zero")
#: neuron ablation: ``weights`` (a weight edit) or ``paper`` (an intervention while generating)
NEURON_MODES = ("weights", "paper")


@dataclass(frozen=True, kw_only=True)
class EditorOption:
    """One command-line option of an editor (``diffloc edit NAME``), setting one field of its config.

    Attributes:
        flag: the option, e.g. ``--lam``.
        field: the config field it sets.
        help: the ``--help`` text.
        parse: converts and validates the argument (e.g. :func:`~diffloc.validate.positive_arg`); ``None``: the
            string itself (one of ``choices`` when given).
        default: the value without the option (the config's own default; a test checks they agree).
        choices: the accepted values, if a fixed set.
        switch: a flag without a value, setting the field to ``not default``.
    """

    flag: str
    field: str
    help: str
    parse: Callable[[str], Any] | None = None
    default: Any = None
    choices: tuple[str, ...] | None = None
    switch: bool = False

    def __post_init__(self) -> None:
        if not self.flag.startswith("--") or not self.field.isidentifier():
            raise ConfigError(f"editor option {self.flag!r} -> {self.field!r}: give '--name' and a config field")
        if self.switch and not isinstance(self.default, bool):
            raise ConfigError(f"editor switch {self.flag!r} needs a bool default, got {self.default!r}")


@dataclass(frozen=True, kw_only=True)
class EditorSpec:
    """One closed-form editor.

    Attributes:
        name: the method name (``compute_edit(method=...)``, ``diffloc edit NAME``, an edit's ``method``).
        module: the module defining it, e.g. ``diffloc.editing.quickfix``.
        config: its config class in ``module``.
        compute: its ``compute(model, request, config[, preserved]) -> Edit`` in ``module``.
        statistics: its preservation-statistics function in ``module``, or ``None`` when it preserves nothing.
        summary: one line on what it edits.
        cli_help: the sub-command's help (default: ``summary``).
        takes_sites: the config has ``sites`` (``--sites``/``--window`` on the command line).
        weighs_preservation: the config has ``preserve_weight`` (``--preserve-weight``).
        options: the sub-command's own options.
        families: the model families it is defined for (empty: every family); on another family
            :func:`~diffloc.editing.registry.compute_edit` refuses it in one line.
    """

    name: str
    module: str
    config: str
    compute: str
    summary: str
    statistics: str | None = None
    cli_help: str = ""
    takes_sites: bool = False
    weighs_preservation: bool = False
    options: tuple[EditorOption, ...] = ()
    families: tuple[str, ...] = ()

    def config_kwargs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Config keyword arguments from parsed values by field (``sites``, ``preserve_weight`` where they apply)."""
        kwargs = {option.field: values[option.field] for option in self.options}
        if self.takes_sites:
            kwargs["sites"] = values["sites"]
        if self.weighs_preservation:
            kwargs["preserve_weight"] = values["preserve_weight"]
        return kwargs


EDITORS: dict[str, EditorSpec] = {}


def register_editor(spec: EditorSpec) -> None:
    """Add (or replace) an editor in the table."""
    EDITORS[spec.name] = spec


_RIDGE = "ridge strength"
#: The joint-attention (MMDiT) families, whose text enters through a text stream rather than cross-attention.
JOINT_ATTENTION_FAMILIES = ("sd3", "flux")
register_editor(
    EditorSpec(
        name="quickfix", module="diffloc.editing.quickfix", config="QuickFixConfig", compute="compute_quickfix",
        statistics="quickfix_statistics", summary="Diff-QuickFix: text encoder layer-0 attention output",
        cli_help="Diff-QuickFix: edit the text encoder's layer-0 attention output", weighs_preservation=True,
        options=(
            EditorOption(flag="--lam", field="lam", parse=positive_arg("lam", _RIDGE), default=0.01,
                         help="ridge strength lambda > 0 (default 0.01)"),
            EditorOption(flag="--no-eos", field="use_eos", switch=True, default=True,
                         help="map only the last subject token, not EOS/padding"),
            EditorOption(flag="--faithful", field="faithful", switch=True, default=False,
                         help="reference-notebook mode: out_proj bias inside the targets"),
        ),
    )
)  # fmt: skip
register_editor(
    EditorSpec(
        name="locoedit", module="diffloc.editing.locoedit", config="LocoEditConfig", compute="compute_locoedit",
        statistics="locoedit_statistics", summary="LocoEdit: cross-attention K/V of localized layers",
        cli_help="LocoEdit: edit cross-attention K/V of localized layers", takes_sites=True,
        weighs_preservation=True,
        options=(
            EditorOption(flag="--lam-k", field="lam_k", parse=positive_arg("lam_k", _RIDGE), default=0.01,
                         help="ridge strength for keys (default 0.01)"),
            EditorOption(flag="--lam-v", field="lam_v", parse=positive_arg("lam_v", _RIDGE), default=0.01,
                         help="ridge strength for values (default 0.01)"),
            EditorOption(flag="--target-mode", field="target_mode", choices=TARGET_MODES, default="bare",
                         help="values from the target alone (bare, reference) or the target in the key's template"),
            EditorOption(flag="--positions", field="positions", choices=POSITIONS, default="subject",
                         help="map the last subject token only (reference) or also the EOS/padding positions "
                         "after it"),
        ),
    )
)  # fmt: skip
register_editor(
    EditorSpec(
        name="neurons", module="diffloc.editing.neurons", config="NeuronConfig", compute="compute_neurons",
        summary="neuron ablation in cross-attention K/V",
        cli_help="ablate the K/V channels that best separate concept from target", takes_sites=True,
        options=(
            EditorOption(flag="--top-n", field="top_n", parse=count_arg("top_n"), default=50,
                         help="channels ablated per projection (default 50)"),
            EditorOption(flag="--ablation", field="ablation", choices=ABLATIONS, default="mean",
                         help="replacement value"),
            EditorOption(flag="--mode", field="mode", choices=NEURON_MODES, default="weights",
                         help="weights (default): channels read at the subject token, ablated in the weights (an "
                         "edit directory); paper: read at the last padding slot, ablated in the conditional branch "
                         "while generating (--out is a JSON intervention file for 'diffloc generate/eval "
                         "--ablation')"),
        ),
    )
)  # fmt: skip
register_editor(
    EditorSpec(
        name="joint-kv", module="diffloc.editing.joint_kv", config="JointKVConfig", compute="compute_joint_kv",
        statistics="joint_kv_statistics",
        summary="LocoEdit on joint attention (SD3, FLUX): text-side K/V of chosen blocks",
        cli_help="SD3/FLUX: edit add_k_proj/add_v_proj of joint blocks (e.g. a text-stream LocoGen window)",
        takes_sites=True, weighs_preservation=True, families=JOINT_ATTENTION_FAMILIES,
        options=(
            EditorOption(flag="--lam-k", field="lam_k", parse=positive_arg("lam_k", _RIDGE), default=0.01,
                         help="ridge strength for keys (default 0.01)"),
            EditorOption(flag="--lam-v", field="lam_v", parse=positive_arg("lam_v", _RIDGE), default=0.01,
                         help="ridge strength for values (default 0.01)"),
            EditorOption(flag="--target-mode", field="target_mode", choices=TARGET_MODES, default="bare",
                         help="values from the target alone (bare) or the target in the key's template"),
            EditorOption(flag="--key-steps", field="steps", parse=count_arg("key_steps"), default=10,
                         help="sampling steps whose text-stream keys are recorded (default 10)"),
        ),
    )
)  # fmt: skip
register_editor(
    EditorSpec(
        name="context", module="diffloc.editing.context_edit", config="ContextEditConfig",
        compute="compute_context_edit", statistics="context_statistics",
        summary="SD3/FLUX: context_embedder, the map into the text stream",
        cli_help="SD3/FLUX: edit context_embedder, which feeds the text stream of every block",
        weighs_preservation=True, families=JOINT_ATTENTION_FAMILIES,
        options=(
            EditorOption(flag="--lam", field="lam", parse=positive_arg("lam", _RIDGE), default=0.01,
                         help="ridge strength lambda > 0 (default 0.01)"),
            EditorOption(flag="--target-mode", field="target_mode", choices=TARGET_MODES, default="bare",
                         help="values from the target alone (bare) or the target in the key's template"),
        ),
    )
)  # fmt: skip
