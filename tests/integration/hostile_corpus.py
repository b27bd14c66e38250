"""A corpus of hostile inputs to the ``diffloc`` command, one entry per refusal; docs/refusals.md names them.

Each :class:`Case` is a command line (``{tmp}`` is the test's empty directory, ``{edit}`` a valid saved edit,
``{bin_model}`` / ``{bin_clip}`` directories holding only pickled ``.bin`` weights) plus the words its one-line
error must contain, and optionally a ``setup`` that writes the hostile file into ``{tmp}`` first (a suite, a
tampered ``edit.json``, a file in the way of an output directory).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hostile_families import family_cases

LEGACY_EDIT = Path(__file__).resolve().parent.parent / "data" / "edit-v1-quickfix-tiny-sd1"
SW_PROMPT = "a red circle in the style of van goo"
SW_TRACE = ["--model", "shapesworld", "--prompt", SW_PROMPT, "--attribute", "in the style of van goo"]
# one traced item: no bootstrap interval (it needs 3), so each case meets the refusal it is about
TRACE = [
    "trace",
    "unet",
    *SW_TRACE,
    "--subject",
    "van goo",
    "--seeds",
    "0",
    "--steps",
    "2",
    "--sites",
    "unet.xattn.1",
    "--bootstrap",
    "0",
]
LOCOGEN = ["locogen", *SW_TRACE, "--target", "a red circle", "--seeds", "0", "--steps", "2", "--bootstrap", "0"]
GEN = ["generate", "--model", "tiny-sd1", "--prompt", "a cat", "--steps", "2"]
QUICKFIX = ["edit", "quickfix", "--model", "tiny-sd1", "--concept", "cat", "--target", "dog"]
LOCOEDIT = ["edit", "locoedit", "--model", "tiny-sd1", "--concept", "cat", "--target", "dog", "--sites", "unet.xattn.1"]
WIDEN = [
    "edit",
    "locoedit",
    "--concept",
    "pica stro",
    "--target",
    "a plain style",
    "--sites",
    "unet.xattn.4",
    "--widen",
    "in the style of pica stro",
]
EVAL = ["eval", "--edit", "{edit}", "--suite", "{tmp}/suite.yaml", "--out", "{tmp}/ev"]
BIG = str(2**63)

#: a valid one-case suite; suite cases replace one field of it
SUITE: dict[str, Any] = {
    "seeds": [0],
    "steps": 2,
    "guidance": 4.0,
    "max_batch": 8,
    "threshold": 0.5,
    "unrelated": ["a red circle"],
    "cases": [
        {
            "name": "style",
            "kind": "style",
            "concept": "van goo",
            "target": "a plain style",
            "mode": "remove",
            "attribute": "in the style of van goo",
            "prompts": ["a red circle in the style of van goo"],
            "heldout": ["in the style of van goo, a blue square"],
            "neighbours": [
                {"prompt": "in the style of mo nettle, a red circle", "attribute": "in the style of mo nettle"}
            ],
        }
    ],
}


@dataclass(frozen=True)
class Case:
    """One hostile command line and the words its error line must contain."""

    id: str
    argv: tuple[str, ...]
    words: tuple[str, ...]
    setup: Callable[[Path], None] | None = None


def _suite(**changes: Any) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        data = json.loads(json.dumps(SUITE))
        for key, value in changes.items():
            if key.startswith("case_"):
                data["cases"][0][key.removeprefix("case_")] = value
            elif value is _DROP:
                del data[key]
            else:
                data[key] = value
        (tmp / "suite.yaml").write_text(yaml.safe_dump(data))

    return write


def _suite_text(text: str) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / "suite.yaml").write_text(text)

    return write


_DROP = object()


def _edit_json(change: Callable[[dict[str, Any]], Any], *, version2: bool = False) -> Callable[[Path], None]:
    """Copy the saved edit (format 1, or re-saved as format 2) into ``{tmp}/bad`` and tamper with its edit.json."""

    def write(tmp: Path) -> None:
        target = tmp / "bad"
        if version2:
            from diffloc.editing.edit import Edit

            Edit.load(LEGACY_EDIT).save(target)
        else:
            shutil.copytree(LEGACY_EDIT, target)
        meta = json.loads((target / "edit.json").read_text())
        result = change(meta)
        (target / "edit.json").write_text(json.dumps(meta if result is None else result))

    return write


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        if value is _DROP:
            del meta[key]
        else:
            meta[key] = value

    return change


def _first_parameter(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        entry = next(iter(meta["parameters"].values()))
        if value is _DROP:
            del entry[key]
        else:
            entry[key] = value

    return change


def _blocker(tmp: Path) -> None:
    (tmp / "blocker").write_text("a file where a directory is expected")


def _nonempty_dir(tmp: Path) -> None:
    (tmp / "taken").mkdir()
    (tmp / "taken" / "notes.txt").write_text("not an edit")


def _run_dir(tmp: Path) -> None:
    _blocker(tmp)
    (tmp / "run").mkdir()


def _edit_cases() -> list[Case]:
    show = ("edit", "show", "{tmp}/bad")
    specs: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
        ("edit-json-list", _edit_json(lambda meta: [meta]), ("edit.json", "list")),
        (
            "edit-json-not-json",
            lambda tmp: (_edit_json(lambda m: None)(tmp), (tmp / "bad" / "edit.json").write_text("{oops")),
            ("edit.json",),
        ),
        ("edit-no-method", _edit_json(_set("method", _DROP)), ("edit.json", "missing", "method")),
        ("edit-unknown-method", _edit_json(_set("method", "quickfax")), ("edit.json", "quickfax")),
        ("edit-unknown-family", _edit_json(_set("family", "sd9")), ("edit.json", "sd9")),
        ("edit-version-text", _edit_json(_set("format_version", "1")), ("edit.json", "format_version")),
        ("edit-version-fraction", _edit_json(_set("format_version", 1.5)), ("edit.json", "format_version")),
        ("edit-version-bool", _edit_json(_set("format_version", True)), ("edit.json", "format_version")),
        ("edit-version-future", _edit_json(_set("format_version", 99)), ("edit.json", "99")),
        ("edit-no-version", _edit_json(_set("format_version", _DROP)), ("edit.json", "missing", "format_version")),
        ("edit-parameters-list", _edit_json(_set("parameters", ["x"])), ("edit.json", "parameters")),
        ("edit-parameters-empty", _edit_json(_set("parameters", {})), ("edit.json", "parameters")),
        ("edit-parameter-no-hash", _edit_json(_first_parameter("new_sha256", _DROP)), ("edit.json", "new_sha256")),
        ("edit-parameter-shape", _edit_json(_first_parameter("shape", "big")), ("edit.json", "shape")),
        ("edit-parameter-dtype", _edit_json(_first_parameter("dtype", "float64")), ("edit.json", "dtype")),
        ("edit-request-list", _edit_json(_set("request", ["cat"])), ("edit.json", "request")),
        (
            "edit-request-string-concepts",
            _edit_json(lambda m: m["request"].update(concepts="cat")),
            ("edit.json", "concepts"),
        ),
        ("edit-request-unknown-key", _edit_json(lambda m: m["request"].update(colour="red")), ("edit.json", "colour")),
        ("edit-config-list", _edit_json(_set("config", [1])), ("edit.json", "config")),
        ("edit-config-wrong-type", _edit_json(lambda m: m["config"].update(lam="small")), ("edit.json", "lam")),
        ("edit-notes-not-list", _edit_json(_set("notes", 5)), ("edit.json", "notes")),
        ("edit-relabelled-v1", _edit_json(_set("method", "locoedit")), ("edit.json", "locoedit")),
        ("edit-relabelled-v2", _edit_json(_set("method", "locoedit"), version2=True), ("edit.json", "sha256")),
        (
            "edit-request-changed-v2",
            _edit_json(lambda m: m["request"].update(concepts=["dog"]), version2=True),
            ("edit.json", "sha256"),
        ),
        (
            "edit-config-changed-v2",
            _edit_json(lambda m: m["config"].update(lam=1.0), version2=True),
            ("edit.json", "sha256"),
        ),
        ("edit-no-hash-v2", _edit_json(_set("sha256", _DROP), version2=True), ("edit.json", "missing", "sha256")),
    ]
    cases = [Case(name, show, words, setup) for name, setup, words in specs]
    # the same loader refuses before a model loads in every command that takes --edit
    cases.append(
        Case(
            "generate-edit-relabelled",
            (*GEN, "--edit", "{tmp}/bad", "--out", "{tmp}/o"),
            ("edit.json", "locoedit"),
            _edit_json(_set("method", "locoedit")),
        )
    )
    cases.append(
        Case(
            "eval-edit-no-method",
            ("eval", "--edit", "{tmp}/bad", "--out", "{tmp}/ev"),
            ("edit.json", "method"),
            _edit_json(_set("method", _DROP)),
        )
    )
    return cases


def _suite_cases() -> list[Case]:
    specs: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
        ("suite-seed-range", _suite(seeds=[2**63]), ("suite.yaml", BIG)),
        ("suite-seed-negative", _suite(seeds=[-1]), ("suite.yaml", "-1")),
        ("suite-seeds-words", _suite(seeds=["zero"]), ("suite.yaml", "seeds", "zero")),
        ("suite-seeds-string", _suite(seeds="0 1"), ("suite.yaml", "seeds")),
        ("suite-seeds-empty", _suite(seeds=[]), ("suite.yaml", "seeds")),
        ("suite-steps-range", _suite(steps=1001), ("suite.yaml", "1001", "1000")),
        ("suite-steps-words", _suite(steps="lots"), ("suite.yaml", "steps", "lots")),
        ("suite-guidance-nan", _suite(guidance=float("nan")), ("suite.yaml", "guidance", "nan")),
        ("suite-guidance-negative", _suite(guidance=-2), ("suite.yaml", "guidance", "-2")),
        ("suite-threshold-nan", _suite(threshold=float("nan")), ("suite.yaml", "threshold", "nan")),
        ("suite-threshold-range", _suite(threshold=5), ("suite.yaml", "threshold", "5")),
        ("suite-threshold-words", _suite(threshold="high"), ("suite.yaml", "threshold", "high")),
        ("suite-max-batch-words", _suite(max_batch="lots"), ("suite.yaml", "max_batch", "lots")),
        ("suite-max-batch-zero", _suite(max_batch=0), ("suite.yaml", "max_batch", "0")),
        ("suite-max-batch-bool", _suite(max_batch=True), ("suite.yaml", "max_batch", "True")),
        ("suite-cases-number", _suite(cases=5), ("suite.yaml", "cases", "5")),
        ("suite-cases-numbers", _suite(cases=[5]), ("suite.yaml", "cases[0]", "5")),
        ("suite-cases-missing", _suite(cases=_DROP), ("suite.yaml", "cases")),
        ("suite-concept-number", _suite(case_concept=5), ("suite.yaml", "concept", "5")),
        (
            "suite-prompts-string",
            _suite(case_prompts="a red circle in the style of van goo"),
            ("suite.yaml", "prompts"),
        ),
        ("suite-neighbours-number", _suite(case_neighbours=5), ("suite.yaml", "neighbours", "5")),
        (
            "suite-neighbour-prompt-number",
            _suite(case_neighbours=[{"prompt": 5, "attribute": "x"}]),
            ("suite.yaml", "prompt", "5"),
        ),
        ("suite-unrelated-number", _suite(unrelated=5), ("suite.yaml", "unrelated", "5")),
        ("suite-unknown-key", _suite(seeeds=[0]), ("suite.yaml", "seeeds")),
        ("suite-top-level-list", _suite_text("- 1\n- 2\n"), ("suite.yaml", "list")),
        ("suite-not-yaml", _suite_text("seeds: [0\n"), ("suite.yaml", "YAML")),
    ]
    return [Case(name, tuple(EVAL), words, setup) for name, setup, words in specs]


def _number_cases() -> list[Case]:
    out = ["--out", "{tmp}/o"]
    specs: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
        # seeds
        ("generate-seed-2**63", (*GEN, "--seed", BIG, *out), ("--seed", BIG)),
        ("generate-seed-negative", (*GEN, "--seed", "-1", *out), ("--seed", "-1")),
        ("generate-seed-below-generator", (*GEN, "--seed", str(-(2**63) - 1), *out), ("--seed", str(-(2**63) - 1))),
        ("generate-seed-huge", (*GEN, "--seed", "9" * 30, *out), ("--seed", "9" * 30)),
        ("generate-seed-words", (*GEN, "--seed", "zero", *out), ("--seed", "zero")),
        ("generate-seeds-2**63", (*GEN, "--seeds", "0", BIG, *out), ("--seeds", BIG)),
        ("trace-seed-2**64", (*TRACE, "--seeds", "0", str(2**64), *out), ("--seeds", str(2**64))),
        ("locogen-seed-negative", (*LOCOGEN, "--seeds", str(-(2**63)), *out), ("--seeds", str(-(2**63)))),
        ("demo-seed-2**63", ("demo", "--trace-seeds", BIG, *out), ("--trace-seeds", BIG)),
        ("demo-text-seed-negative", ("demo", "--text-seeds", "-1", *out), ("--text-seeds", "-1")),
        ("trace-validation-seed-2**63", (*TRACE, "--validation-seeds", BIG, *out), ("--validation-seeds", BIG)),
        (
            "reproduce-seed-negative",
            ("reproduce", "--model", "tiny-sd1", "--clip", "{tmp}/clip", "--trace-seeds", "-5", *out),
            ("--trace-seeds", "-5"),
        ),
        (
            "reproduce-seeds-2**63",
            ("reproduce", "--model", "tiny-sd1", "--clip", "{tmp}/clip", "--seeds", BIG, *out),
            ("--seeds", BIG),
        ),
        ("world-train-seed-negative", ("world", "train", "--seed", "-1", *out), ("--seed", "-1")),
        ("world-render-seed-2**63", ("world", "render", "--seed", BIG, "--out", "{tmp}/r.png"), ("--seed", BIG)),
        (
            "world-render-seeds-negative",
            ("world", "render", "--seeds", "-1", "--out", "{tmp}/r.png"),
            ("--seeds", "-1"),
        ),
        # steps
        ("generate-steps-above-schedule", (*GEN[:-2], "--steps", "1001", *out), ("1001", "1000")),
        (
            "generate-steps-above-shapesworld",
            ("generate", "--prompt", "a red circle", "--steps", "1001", *out),
            ("1001", "1000"),
        ),
        ("generate-steps-zero", (*GEN[:-2], "--steps", "0", *out), ("--steps", "0")),
        ("generate-steps-fraction", (*GEN[:-2], "--steps", "2.5", *out), ("--steps", "2.5")),
        ("trace-steps-above-schedule", (*TRACE, "--steps", "1001", *out), ("1001", "1000")),
        ("locogen-steps-above-schedule", (*LOCOGEN, "--steps", "5000", *out), ("5000", "1000")),
        ("demo-steps-above-schedule", ("demo", "--steps", "1001", *out), ("1001", "1000")),
        (
            "reproduce-steps-above-schedule",
            ("reproduce", "--model", "tiny-sd1", "--clip", "{tmp}/clip", "--steps", "1001", *out),
            ("1001", "1000"),
        ),
        ("edit-widen-steps-above-schedule", (*WIDEN, "--widen-steps", "1001", "--out", "{tmp}/e"), ("1001", "1000")),
        (
            "world-eval-steps-above-schedule",
            ("world", "eval", "--steps", "1001", "--out", "{tmp}/e.json"),
            ("1001", "1000"),
        ),
        ("world-eval-steps-zero", ("world", "eval", "--steps", "0"), ("--steps", "0")),
        # guidance
        ("generate-guidance-nan", (*GEN, "--guidance", "nan", *out), ("--guidance", "nan")),
        ("generate-guidance-inf", (*GEN, "--guidance", "inf", *out), ("--guidance", "inf")),
        ("generate-guidance-overflow", (*GEN, "--guidance", "1e400", *out), ("--guidance", "inf")),
        ("generate-guidance-negative", (*GEN, "--guidance", "-1", *out), ("--guidance", "-1")),
        ("generate-guidance-non-finite-result", (*GEN, "--guidance", "1e30", *out), ("guidance", "1e+30")),
        (
            "world-eval-guidance-non-finite-result",
            ("world", "eval", "--guidance", "1e30", "--steps", "1", "--seeds", "1", "--out", "{tmp}/e.json"),
            ("guidance", "1e+30"),
        ),
        ("trace-guidance-inf", (*TRACE, "--guidance", "inf", *out), ("--guidance", "inf")),
        (
            "edit-widen-guidance-nan",
            (*WIDEN, "--widen-guidance", "nan", "--out", "{tmp}/e"),
            ("--widen-guidance", "nan"),
        ),
        ("world-eval-guidance-negative", ("world", "eval", "--guidance", "-1"), ("--guidance", "-1")),
        (
            "world-samples-guidance-nan",
            ("world", "samples", "--guidance", "nan", "--out", "{tmp}/s.png"),
            ("--guidance", "nan"),
        ),
        # noise
        ("trace-noise-nan", (*TRACE, "--noise", "nan", *out), ("--noise", "nan")),
        ("trace-noise-negative", (*TRACE, "--noise", "-1", *out), ("--noise", "-1")),
        ("trace-noise-inf", (*TRACE, "--noise", "inf", *out), ("--noise", "inf")),
        ("trace-noise-words", (*TRACE, "--noise", "loud", *out), ("--noise", "loud")),
        ("trace-noise-non-finite-result", (*TRACE, "--noise", "1e300", *out), ("noise", "1e+300")),
        ("demo-noise-negative", ("demo", "--noise", "-3", *out), ("--noise", "-3")),
        # ridge strengths and weights
        ("quickfix-lam-nan", (*QUICKFIX, "--lam", "nan", "--out", "{tmp}/e"), ("--lam", "nan")),
        ("quickfix-lam-zero", (*QUICKFIX, "--lam", "0", "--out", "{tmp}/e"), ("--lam", "0")),
        ("quickfix-lam-negative", (*QUICKFIX, "--lam", "-1", "--out", "{tmp}/e"), ("--lam", "-1")),
        ("quickfix-lam-inf", (*QUICKFIX, "--lam", "inf", "--out", "{tmp}/e"), ("--lam", "inf")),
        ("locoedit-lam-k-inf", (*LOCOEDIT, "--lam-k", "inf", "--out", "{tmp}/e"), ("--lam-k", "inf")),
        ("locoedit-lam-v-zero", (*LOCOEDIT, "--lam-v", "0", "--out", "{tmp}/e"), ("--lam-v", "0")),
        (
            "quickfix-preserve-weight-nan",
            (*QUICKFIX, "--preserve-weight", "nan", "--out", "{tmp}/e"),
            ("--preserve-weight", "nan"),
        ),
        # batch sizes, windows, counts, sizes
        ("trace-bootstrap-negative", (*TRACE, "--bootstrap", "-1", *out), ("--bootstrap", "-1")),
        ("trace-max-batch-one", (*TRACE, "--max-batch", "1", *out), ("--max-batch", "1")),
        ("trace-max-batch-words", (*TRACE, "--max-batch", "lots", *out), ("--max-batch", "lots")),
        ("demo-max-batch-zero", ("demo", "--max-batch", "0", *out), ("--max-batch", "0")),
        (
            "reproduce-max-batch-zero",
            ("reproduce", "--model", "tiny-sd1", "--clip", "{tmp}/clip", "--max-batch", "0", *out),
            ("--max-batch", "0"),
        ),
        ("locogen-window-zero", (*LOCOGEN, "--window", "0", *out), ("--window", "0")),
        ("locogen-window-too-wide", (*LOCOGEN, "--window", "1000000", *out), ("window", "1000000")),
        (
            "neurons-top-n-zero",
            (
                "edit",
                "neurons",
                "--model",
                "tiny-sd1",
                "--concept",
                "cat",
                "--target",
                "dog",
                "--sites",
                "unet.xattn.1",
                "--top-n",
                "0",
                "--out",
                "{tmp}/e",
            ),
            ("--top-n", "0"),
        ),
        ("generate-height-not-multiple", (*GEN, "--height", "7", *out), ("--height", "7")),
        ("generate-width-too-large", (*GEN, "--width", "100000", *out), ("--width", "100000")),
        ("world-render-n-zero", ("world", "render", "--n", "0", "--out", "{tmp}/r.png"), ("--n", "0")),
        ("world-detectors-n-zero", ("world", "detectors", "--n", "0"), ("--n", "0")),
        ("world-eval-seeds-zero", ("world", "eval", "--seeds", "0"), ("--seeds", "0")),
        ("world-eval-threads-zero", ("world", "eval", "--threads", "0"), ("--threads", "0")),
        ("world-train-steps-zero", ("world", "train", "--steps", "0", *out), ("--steps", "0")),
        ("world-train-lr-nan", ("world", "train", "--lr", "nan", *out), ("--lr", "nan")),
        ("world-train-lr-inf", ("world", "train", "--lr", "inf", *out), ("--lr", "inf")),
        ("world-train-warmup-negative", ("world", "train", "--warmup", "-1", *out), ("--warmup", "-1")),
        ("world-train-examples-zero", ("world", "train", "--examples", "0", *out), ("--examples", "0")),
        ("world-train-threads-zero", ("world", "train", "--threads", "0", *out), ("--threads", "0")),
        ("world-train-max-minutes-nan", ("world", "train", "--max-minutes", "nan", *out), ("--max-minutes", "nan")),
        ("world-train-mix-nan", ("world", "train", "--mix", "nan,1,1,1", *out), ("--mix", "nan")),
    ]
    return [Case(name, argv, words) for name, argv, words in specs]


def _sweep_cases() -> list[Case]:
    """Who computes a sweep (``--shard``, ``--ray``) and how a trace is designed (restore source, validation
    items, intervals): refused before any model loads."""
    out = ["--out", "{tmp}/o"]
    specs: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
        ("trace-shard-out-of-range", (*TRACE, "--shard", "2/2", *out), ("--shard", "2/2", "0 to 1")),
        ("locogen-shard-not-i-of-n", (*LOCOGEN, "--shard", "half", *out), ("--shard", "half", "I/N")),
        (
            "eval-shard-count-zero",
            ("eval", "--edit", "{edit}", "--shard", "0/0", "--out", "{tmp}/ev"),
            ("--shard", ">= 1", "got 0"),
        ),
        ("demo-shard-and-ray", ("demo", "--ray", "--shard", "0/2", *out), ("--shard", "--ray")),
        ("demo-ray-workers-zero", ("demo", "--ray", "--ray-workers", "0", *out), ("--ray-workers", "0")),
        ("trace-ray-workers-without-ray", (*TRACE, "--ray-workers", "2", *out), ("--ray-workers", "--ray")),
        (
            "trace-restore-from-unknown",
            (*TRACE, "--restore-from", "nowhere", *out),
            ("--restore-from", "nowhere", "same-latent"),
        ),
        (
            "trace-validation-overlaps-traced",
            (*TRACE, "--validation-prompt", SW_PROMPT, *out),
            ("validation", "overlap", SW_PROMPT),
        ),
        ("trace-bootstrap-too-few-items", (*TRACE, "--bootstrap", "100", *out), ("1 items", "at least 3")),
        (
            "trace-substitute-with-noise-auto",
            (*TRACE, "--substitute", "pica stro", "--noise", "auto", *out),
            ("--noise auto", "--substitute"),
        ),
        (
            "trace-substitute-with-noise",
            (*TRACE, "--substitute", "pica stro", "--noise", "0.5", *out),
            ("noise 0.5", "substitute 'pica stro'"),
        ),
        ("trace-substitute-empty", (*TRACE, "--substitute", " ", *out), ("substitute", "' '")),
        (
            "trace-substitute-misaligned",
            (*TRACE, "--substitute", "blue", *out),
            ("substitute 'blue'", "van goo", "2 tokens"),
        ),
        (
            "trace-remove-with-attribution",
            (*TRACE, "--direction", "remove", "--method", "attribution", *out),
            ("direction 'remove'", "'exact' only", "'attribution'"),
        ),
        ("trace-direction-unknown", (*TRACE, "--direction", "sideways", *out), ("--direction", "sideways", "remove")),
        ("trace-fraction-zero", (*TRACE, "--fraction", "0", *out), ("--fraction", "(0, 1]", "got 0")),
        ("locogen-fraction-above-one", (*LOCOGEN, "--fraction", "1.5", *out), ("--fraction", "(0, 1]", "1.5")),
        (
            "trace-fraction-with-screen",
            (*TRACE, "--fraction", "0.5", "--method", "screen", *out),
            ("fraction 0.5", "'exact' only", "'screen'"),
        ),
    ]
    return [Case(name, argv, words) for name, argv, words in specs]


def _output_cases() -> list[Case]:
    blocked = "{tmp}/blocker/sub"
    specs: list[tuple[str, tuple[str, ...], tuple[str, ...], Callable[[Path], None]]] = [
        ("generate-out-under-a-file", (*GEN, "--out", blocked), (blocked,), _blocker),
        ("generate-out-is-a-file", (*GEN, "--out", "{tmp}/blocker"), ("{tmp}/blocker",), _blocker),
        ("trace-out-under-a-file", (*TRACE, "--out", blocked), (blocked,), _blocker),
        ("locogen-out-under-a-file", (*LOCOGEN, "--out", blocked), (blocked,), _blocker),
        ("eval-out-under-a-file", ("eval", "--edit", "{edit}", "--out", blocked), (blocked,), _blocker),
        ("demo-out-under-a-file", ("demo", "--out", blocked), (blocked,), _blocker),
        (
            "reproduce-out-under-a-file",
            ("reproduce", "--model", "tiny-sd1", "--clip", "{tmp}/clip", "--out", blocked),
            (blocked,),
            _blocker,
        ),
        ("edit-out-under-a-file", (*QUICKFIX, "--out", blocked), (blocked,), _blocker),
        ("edit-out-holds-other-files", (*QUICKFIX, "--out", "{tmp}/taken"), ("{tmp}/taken",), _nonempty_dir),
        (
            "edit-stats-under-a-file",
            (*QUICKFIX, "--preserve", "house", "--stats", f"{blocked}/s.safetensors", "--out", "{tmp}/e"),
            (blocked,),
            _blocker,
        ),
        (
            "world-render-out-under-a-file",
            ("world", "render", "--n", "1", "--out", f"{blocked}/r.png"),
            (blocked,),
            _blocker,
        ),
        ("world-samples-out-under-a-file", ("world", "samples", "--out", f"{blocked}/s.png"), (blocked,), _blocker),
        ("world-eval-out-under-a-file", ("world", "eval", "--out", f"{blocked}/e.json"), (blocked,), _blocker),
        (
            "world-detectors-out-under-a-file",
            ("world", "detectors", "--out", f"{blocked}/d.json"),
            (blocked,),
            _blocker,
        ),
        ("world-train-out-under-a-file", ("world", "train", "--out", blocked), (blocked,), _blocker),
        (
            "world-train-export-under-a-file",
            ("world", "train", "--out", "{tmp}/run", "--export", blocked),
            (blocked,),
            _run_dir,
        ),
        (
            "world-export-out-under-a-file",
            ("world", "export", "--run", "{tmp}/run", "--out", blocked),
            (blocked,),
            _run_dir,
        ),
    ]
    return [Case(name, argv, words, setup) for name, argv, words, setup in specs]


def _shapesworld_update(tmp: Path) -> None:
    """A saved Diff-QuickFix edit of the shipped model that updates trelania's flag to quelland's."""
    from diffloc.editing.registry import compute_edit
    from diffloc.editing.requests import EditRequest
    from diffloc.models.registry import load

    request = EditRequest(concepts=("trelania",), targets=("quelland",))
    compute_edit(load("shapesworld"), request, method="quickfix").save(tmp / "update")


def _audit_cases() -> list[Case]:
    audit = ("audit", "{edit}", "--out", "{tmp}/a")
    return [
        Case("audit-budget-zero", (*audit, "--budget", "0"), ("--budget", "0")),
        Case("audit-learned-steps-zero", (*audit, "--learned-steps", "0"), ("--learned-steps", "0")),
        Case("audit-learned-objective-unknown", (*audit, "--learned-objective", "clip"), ("clip", "denoising")),
        Case("audit-attack-unknown", (*audit, "--attacks", "paraphrase,revive"), ("revive", "paraphrase")),
        Case("audit-edit-of-another-model", (*audit, "--model", "shapesworld"), ("differs from the base",)),
        Case(
            "audit-update-without-attribute",
            ("audit", "{tmp}/update", "--out", "{tmp}/a"),
            ("updates", "trelania", "--attribute"),
            _shapesworld_update,
        ),
    ]


def _other_cases() -> list[Case]:
    return [
        Case(
            "generate-same-prompt-and-seed-twice",
            (
                "generate",
                "--model",
                "tiny-sd1",
                "--prompt",
                "a cat",
                "--prompt",
                "a cat",
                "--steps",
                "2",
                "--out",
                "{tmp}/o",
            ),
            ("a cat", "twice"),
        ),
        Case("generate-bin-weights", (*GEN, "--model", "{bin_model}", "--out", "{tmp}/o"), (".bin", "--allow-bin")),
        Case("sites-bin-weights", ("sites", "{bin_model}"), (".bin", "--allow-bin")),
        Case(
            "trace-clip-bin-weights",
            (
                "trace",
                "unet",
                "--model",
                "tiny-sd1",
                "--prompt",
                "a cat",
                "--subject",
                "cat",
                "--attribute",
                "cat",
                "--clip",
                "{bin_clip}",
                "--out",
                "{tmp}/o",
            ),
            (".bin", "--allow-bin"),
        ),
    ]


CASES: list[Case] = [
    *_number_cases(),
    *_sweep_cases(),
    *_suite_cases(),
    *_edit_cases(),
    *_output_cases(),
    *_audit_cases(),
    *_other_cases(),
    *family_cases(Case),
]
