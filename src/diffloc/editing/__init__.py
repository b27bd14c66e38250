"""Model editing: Diff-QuickFix, LocoEdit and neuron ablation as revertible, saveable :class:`Edit` artifacts, and
the paper's neuron ablation as a :class:`NeuronAblation` intervention (``compute_ablation``).

Example::

    from diffloc.editing import EditRequest, LocoEditConfig, compute_edit
    request = EditRequest(concepts=("van gogh",), targets=("a painting",))
    edit = compute_edit(model, request, method="locoedit", config=LocoEditConfig(sites=("unet.xattn.8",)))
    with edit.applied(model):
        images = generate(model, "a house in the style of van gogh")
    edit.save("edits/no-van-gogh")
"""

from diffloc.editing.ablation import NeuronAblation
from diffloc.editing.closed_form import ridge_solve
from diffloc.editing.edit import Edit, tensor_hash
from diffloc.editing.locoedit import LocoEditConfig
from diffloc.editing.neurons import NeuronConfig, compute_ablation
from diffloc.editing.preserved import PreservedStatistics
from diffloc.editing.quickfix import QuickFixConfig
from diffloc.editing.registry import METHODS, compute_edit, get_method, preservation_statistics, register_method
from diffloc.editing.requests import EditRequest

__all__ = [
    "METHODS",
    "Edit",
    "EditRequest",
    "LocoEditConfig",
    "NeuronAblation",
    "NeuronConfig",
    "PreservedStatistics",
    "QuickFixConfig",
    "compute_ablation",
    "compute_edit",
    "get_method",
    "preservation_statistics",
    "register_method",
    "ridge_solve",
    "tensor_hash",
]
