"""AtP*'s gradient dropout: each dropped layer's estimate equals the estimate of a model whose layer passes no
gradient at all, the plain estimates are untouched, the screen confirms the dropout ranking, and the refusals."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from test_attribution import ATTRIBUTE, LINEAR, PROMPT, SUBJECT

from diffloc.cli.main import main
from diffloc.engine.hooks import installed_hook_count
from diffloc.errors import ConfigError
from diffloc.eval.scorers import DetectorScorer
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.grad_drop import GRADIENT_DROPOUT, branch_modules, dropout_layers

SITES = ["unet.xattn.*", "unet.res.*", "unet.ff.*"]


@pytest.fixture(scope="module")
def logp():
    return DetectorScorer(log_probability=True)


@contextmanager
def _no_gradient_through(modules):
    """Every output of ``modules`` detached: the paths through them carry no gradient (forward unchanged)."""

    def detach(module, args, output):
        return tuple(o.detach() for o in output) if isinstance(output, tuple) else output.detach()

    handles = [m.register_forward_hook(detach) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _changes(result):
    return np.asarray(result.scores, float).ravel() - result.corrupt_score


def test_the_layers_are_the_residual_branches_in_order_split_evenly(tiny_sd1):
    branches = branch_modules(tiny_sd1)
    layers = dropout_layers(tiny_sd1, 3)
    assert [m for layer in layers for m in layer] == branches  # every branch once, execution order kept
    assert max(map(len, layers)) - min(map(len, layers)) <= 1
    res = [tiny_sd1.module(s).conv2 for s in tiny_sd1.sites if s.name.startswith("unet.res.")]
    assert set(res) <= set(branches) and tiny_sd1.module("unet.xattn.0") in branches
    assert tiny_sd1.module("unet.res.0") not in branches  # a ResNet's output holds its skip: not a branch
    assert len(dropout_layers(tiny_sd1, 10_000)) == len(branches)


def test_each_dropped_layer_estimates_as_a_model_without_that_layer_s_gradient(tiny_sd1, logp):
    kwargs = dict(scorer=logp, sites=SITES, config=LINEAR)
    hooks = installed_hook_count(tiny_sd1)
    plain = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="attribution", **kwargs)
    screen = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="screen", top_k=3, gradient_dropout=2,
                          **kwargs)  # fmt: skip
    assert installed_hook_count(tiny_sd1) == hooks  # the gates are gone
    # the gates change no value and no plain gradient: the estimated scores are attribution's
    estimated = screen.marks.ravel() == "estimate"
    np.testing.assert_allclose(np.ravel(screen.scores)[estimated], np.ravel(plain.scores)[estimated], rtol=1e-6)
    assert screen.meta["attribution_fixes"] == [GRADIENT_DROPOUT] and screen.meta["gradient_dropout"]["layers"] == 2
    per_layer = []
    for modules in dropout_layers(tiny_sd1, 2):
        with _no_gradient_through(modules):
            per_layer.append(_changes(causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="attribution",
                                                   **kwargs)))  # fmt: skip
    assert not np.allclose(per_layer[0], per_layer[1])  # the two layers carry different paths
    want = np.abs(per_layer[0]) + np.abs(per_layer[1])  # AtP*: sum of |estimate_l| / (L - 1), L = 2
    ranking = screen.meta["gradient_dropout"]["ranking"]
    np.testing.assert_allclose([ranking[label] for label in screen.labels], want, rtol=1e-4, atol=1e-6 * want.max())
    # the screen confirms the top of the dropout ranking, not of the plain estimates
    assert screen.meta["confirmed"] == sorted(ranking, key=lambda label: -ranking[label])[:3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "attribution", "gradient_dropout": 1}, "gradient dropout needs at least 2 layers, got 1"),
        ({"method": "exact", "gradient_dropout": 4}, "use it with method 'attribution' or 'screen'"),
    ],
)
def test_bad_dropout_settings_are_refused_in_one_line(tiny_sd1, logp, kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, sites="unet.xattn.*", config=LINEAR, **kwargs)
    assert "\n" not in str(info.value)


def test_cli_refuses_a_negative_layer_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT, "--subject", SUBJECT, "--attribute", "x",
              "--out", str(tmp_path), "--gradient-dropout", "-1"])  # fmt: skip
    assert info.value.code == 2 and "--gradient-dropout" in capsys.readouterr().err


def test_gates_pass_values_through_unchanged():
    from diffloc.tracing.grad_drop import DropState, _Gate

    x = torch.randn(3, 4, requires_grad=True)
    state = DropState()
    y = _Gate.apply(x, state, 0)
    assert torch.equal(y, x)
    (y * 2).sum().backward(retain_graph=True)
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    x.grad, state.blocked = None, 0
    (y * 2).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
