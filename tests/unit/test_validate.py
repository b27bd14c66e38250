"""Property-based tests of the validation layer: the CLI's number parsing, the range checks the configs share,
JSON that refuses non-finite numbers, and image names that cannot collide."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffloc.atomic import check_writable_dir, check_writable_file, write_json_atomic
from diffloc.cli.main import build_parser
from diffloc.cli.sweep_args import noise_value
from diffloc.errors import ConfigError, DifflocError, NonFiniteError
from diffloc.output_names import RunFiles, image_name
from diffloc.validate import (
    SEED_LIMIT,
    check_model_steps,
    check_seed,
    check_threshold,
    count_arg,
    generator_seed,
    guidance_arg,
    positive_arg,
    scheduler_train_steps,
    seed_arg,
    steps_arg,
)

PROPERTY = settings(max_examples=200, deadline=None)
# integers around every boundary that matters, and far beyond
INTEGERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-(2**64), -(2**63) - 1, -(2**63), -1, 0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64]),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
TEXT = st.one_of(st.text(max_size=30), INTEGERS.map(str), FLOATS.map(repr), st.sampled_from(["1e400", "-0", " 7 "]))


@PROPERTY
@given(INTEGERS)
def test_seed_parsing_accepts_exactly_the_generator_range(value):
    if 0 <= value < SEED_LIMIT:
        assert seed_arg(str(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(str(value))):
            seed_arg(str(value))


@PROPERTY
@given(TEXT)
def test_number_options_return_a_valid_value_or_refuse_in_one_line(text):
    for parse, valid in (
        (seed_arg, lambda v: 0 <= v < SEED_LIMIT),
        (steps_arg, lambda v: v >= 1),
        (count_arg("max_batch", low=2), lambda v: v >= 2),
        (guidance_arg, lambda v: math.isfinite(v) and v >= 0),
        (positive_arg("lam"), lambda v: math.isfinite(v) and v > 0),
    ):
        try:
            value = parse(text)
        except argparse.ArgumentTypeError as exc:
            assert "\n" not in str(exc)
        else:
            assert valid(value), (text, value)


@PROPERTY
@given(TEXT)
def test_noise_option(text):
    try:
        value = noise_value(text)
    except argparse.ArgumentTypeError as exc:
        assert "\n" not in str(exc)
    else:
        assert value == "auto" or (math.isfinite(value) and value >= 0)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["--seeds", "--seed", "--steps", "--guidance", "--height"]), TEXT)
def test_the_real_parser_refuses_bad_numbers_with_one_line_and_status_2(option, text):
    err = io.StringIO()
    parser = build_parser()
    with contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(["generate", "--prompt", "x", option, text])
        except SystemExit as exit_info:
            assert exit_info.code == 2
            assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("diffloc: error: generate: ")
            return
    value = getattr(args, {"--seed": "seeds"}.get(option, option.removeprefix("--")))  # --seed: --seeds' old name
    value = value[0] if isinstance(value, list) else value
    assert isinstance(value, int | float) and math.isfinite(value) and value >= 0


@PROPERTY
@given(st.integers(min_value=0, max_value=SEED_LIMIT - 1), st.integers(min_value=0, max_value=10**7))
def test_derived_seeds_stay_in_the_generator_range_and_small_ones_do_not_move(seed, salt):
    import torch

    derived = generator_seed(seed * 1000003 + salt)
    torch.Generator().manual_seed(derived)  # never overflows
    if seed * 1000003 + salt < 2**64:
        assert derived == seed * 1000003 + salt


def test_ranges_named_in_messages():
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\], got True"):
        check_seed(True)
    with pytest.raises(ConfigError, match=r"threshold must be a finite number in \[-1, 1\].*got nan"):
        check_threshold(float("nan"))
    assert scheduler_train_steps("tiny-sd1") == scheduler_train_steps("shapesworld") == 1000
    assert check_model_steps("shapesworld", 1000) == 1000
    with pytest.raises(ConfigError, match=r"steps must be an integer in \[1, 1000\].*got 1001"):
        check_model_steps("tiny-if", 1001)
    assert scheduler_train_steps("./no-such-model") is None  # loading it says why


# -- JSON ------------------------------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), FLOATS, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)


def _non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def _strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} written into JSON")

    return json.loads(text, parse_constant=refuse)


@PROPERTY
@given(JSON_VALUES)
def test_json_is_written_only_when_every_number_is_finite(value):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        if _non_finite(value):
            with pytest.raises(NonFiniteError) as info:
                write_json_atomic(path, value)
            assert "\n" not in str(info.value) and "result.json" in str(info.value)
            assert list(Path(tmp).iterdir()) == []  # nothing written, no temporary left
        else:
            write_json_atomic(path, value)
            assert _strict_json(path.read_text()) == value


def test_json_refusal_names_the_key(tmp_path):
    with pytest.raises(NonFiniteError, match=r"at 'cases\.style\.efficacy\.1'"):
        write_json_atomic(tmp_path / "r.json", {"cases": {"style": {"efficacy": [0.5, float("nan")]}}})


# -- image names -----------------------------------------------------------------------------------------------
@PROPERTY
@given(st.text(max_size=200), st.integers(min_value=0, max_value=SEED_LIMIT - 1))
def test_image_names_are_safe_readable_and_determined_by_prompt_and_seed(prompt, seed):
    name = image_name(prompt, seed)
    assert re.fullmatch(rf"[a-z0-9-]+_seed{seed}_[0-9a-f]{{10}}\.png", name), name
    assert len(name) < 120 and name == image_name(prompt, seed)


@PROPERTY
@given(st.lists(st.tuples(st.text(max_size=80), st.integers(min_value=0, max_value=3)), min_size=2, max_size=8))
def test_distinct_inputs_get_distinct_names_and_a_repeat_is_refused(pairs):
    files = RunFiles("out")
    seen = set()
    for prompt, seed in pairs:
        owner = f"prompt {prompt!r} with seed {seed}"
        if (prompt, seed) in seen:
            with pytest.raises(ConfigError, match="given twice"):
                files.claim(image_name(prompt, seed), owner)
        else:
            files.claim(image_name(prompt, seed), owner)
            seen.add((prompt, seed))
    assert len({image_name(p, s) for p, s in seen}) == len(seen)


# -- output paths ----------------------------------------------------------------------------------------------
def test_writability_checks_create_nothing(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    check_writable_file(tmp_path / "c" / "d.json")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    for check in (check_writable_dir, check_writable_file):
        with pytest.raises(DifflocError, match="is a file, not a directory"):
            check(tmp_path / "file" / "below")
    with pytest.raises(DifflocError, match="exists and is not a directory"):
        check_writable_dir(tmp_path / "file")
    with pytest.raises(DifflocError, match="is a directory"):
        check_writable_file(tmp_path)


def test_non_finite_guards_name_their_cause():
    import torch

    from diffloc.engine.finite import check_latents, check_scores
    from diffloc.eval.metrics import retention

    with pytest.raises(NonFiniteError, match=r"guidance 1e\+30 made the latents non-finite.*at step 3 of 20"):
        check_latents(torch.tensor([float("nan")]), step=3, steps=20, guidance=1e30)
    with pytest.raises(NonFiniteError, match=r"at guidance 7\.5"):
        check_latents(torch.tensor([float("inf")]), step=1, steps=20, guidance=7.5)
    check_latents(torch.zeros(2), step=1, steps=20, guidance=1e30)  # finite: nothing to say
    with pytest.raises(NonFiniteError, match=r"score.*for 'b'"):
        check_scores(torch.tensor([0.5, float("nan")]), ["a", "b"], "clip")
    assert retention(0.0, 0.5) == retention(0.0, 0.0) == 1.0  # nothing detected before: nothing lost, not inf
