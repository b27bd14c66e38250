"""The demo pipeline end to end on a tiny model (random weights, tiny random CLIP scorer: mechanics only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffloc.errors import ConfigError
from diffloc.eval.scorers import ClipScorer
from diffloc.eval.suite import load_suite
from diffloc.tracing.results import TraceResult
from diffloc.workflows.demo import DemoConfig, run_demo

SUITE = """
seeds: [0]
steps: 2
guidance: 5.0
max_batch: 16
unrelated: [a red circle]
cases:
  - name: style-vg
    kind: style
    concept: van gogh
    target: a painting
    mode: remove
    attribute: van gogh style
    prompts: [a house in the style of van gogh, a tree in the style of van gogh]
    heldout: [van gogh painting of a boat]
    neighbours:
      - {prompt: a house in the style of monet, attribute: monet style}
    preserve: [monet]
    preserve_prompts: [a red house]
"""


def _lookup(summary, key):
    node = summary
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_clip_dir):
    from diffloc.models.registry import load

    out = tmp_path_factory.mktemp("demo")
    (out / "suite.yaml").write_text(SUITE)
    suite = load_suite(out / "suite.yaml")
    model = load("tiny-sd1")
    scorer = ClipScorer.from_dir(tiny_clip_dir)
    config = DemoConfig(trace_seeds=(0, 1, 2), steps=2, guidance=5.0, max_batch=24, trace_prompts=1)
    summary = run_demo(model, suite, scorer, out / "run", config=config)
    return model, suite, scorer, config, out / "run", summary


def test_report_has_every_section_and_matches_the_json(demo_run):
    _, _, _, _, out, summary = demo_run
    page = (out / "report.html").read_text()
    for needle in ("UNet causal trace", "text-encoder causal trace", "LocoGen window", "quickfix", "locoedit",
                   "specificity", "Timings", "95% interval", "control: unet.res.0", "control: unet.sattn.0",
                   "same-latent", "Causal sites", "site × step map", "Does the removed concept come back"):  # fmt: skip
        assert needle in page
    case = summary["cases"]["style-vg"]
    assert case["unet_items"] == 3 and case["restore_from"] == "same-latent"
    assert [c["site"] for c in case["controls"]] == ["unet.res.0", "unet.sattn.0"]
    assert all(abs(c["effect"]) < 1e-4 for c in case["controls"]) and not case["controls_flagged"]
    assert all(len(ci) == 2 and ci[0] <= ci[1] for ci in case["unet_top_interval"])
    # the held-out prompt × the trace seeds choose τ, unless the corruption does not lower the tiny random CLIP's
    # score on them (package versions initialise it differently): then no sites are called causal, and the
    # report says why instead of the demo failing
    validation = json.loads((out / "trace" / "style-vg" / "unet" / "result.json").read_text())
    if case["selection"] is None:
        assert "corruption did not lower the attribute" in page
        assert validation["meta"]["validation_prompts"]
    else:
        assert case["selection"]["validation_items"] == 3
    audits = case["audit"]
    assert set(audits) == {"quickfix", "locoedit"}
    assert {a for a in audits["quickfix"]} == {"paraphrase", "spelling", "description", "revert"}
    paraphrase = audits["quickfix"]["paraphrase"]
    assert paraphrase["edited"]["n"] == paraphrase["unedited"]["n"] > 0
    assert [row["fraction"] for row in audits["locoedit"]["revert"]["rows"]] == [0.5, 1.0]
    assert (out / "audit" / "style-vg" / "quickfix" / "audit.html").is_file()
    steps = case["step_map"]
    assert steps["items"] == 3 and steps["restore_from"] == "same-latent" and 0 <= steps["top_recall"] <= 1
    mapped = TraceResult.load(out / "trace" / "style-vg" / "attribution")
    exact = TraceResult.load(out / "trace" / "style-vg" / "unet")
    assert mapped.method == "attribution" and mapped.labels == exact.labels
    assert mapped.step_effects.shape[0] == len(mapped.labels) and mapped.step_effects.shape[1] >= 2  # calls ≥ steps
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    spans = re.findall(r'<span data-key="([^"]+)">([^<]+)</span>', page)
    assert len(spans) > 20
    for key, shown in spans:
        value = _lookup(on_disk, key)
        if shown == "—":
            assert value is None
        else:
            assert float(shown) == pytest.approx(float(value), abs=0.5 * 10 ** -len(shown.split(".")[-1]))
    for img in re.findall(r'<img src="([^"]+)"', page):
        assert (out / img).is_file(), img
    eval_json = json.loads((out / "eval" / "style-vg" / "quickfix.json").read_text())
    edit = json.loads((out / "edits" / "style-vg" / "locoedit" / "edit.json").read_text())
    assert edit["request"]["preserve"] == ["monet"] and edit["request"]["preserve_prompts"] == ["a red house"]
    assert edit["config"]["positions"] == "subject+eos"
    assert eval_json["cases"]["style-vg"] == {
        k: v for k, v in summary["cases"]["style-vg"]["eval"]["quickfix"].items() if k != "fidelity"
    }


def test_report_opens_with_a_summary_and_the_metrics_definitions(demo_run):
    _, _, _, _, out, summary = demo_run
    page = (out / "report.html").read_text()
    assert page.index("<h2 id=summary>") < page.index("<h2 id='style-vg'>")
    head = page[page.index("<h2 id=summary>") : page.index("<h2 id='style-vg'>")]
    entry = summary["cases"]["style-vg"]
    assert "<a href='#style-vg'>style-vg</a>" in head
    assert ", ".join(s.removeprefix("unet.") for s in entry["locogen"]["best_sites"]) in head
    assert entry["unet_top"][0][0].removeprefix("unet.") in head
    assert head.count("<th>efficacy</th>") == head.count("<th>specificity</th>") == len(entry["eval"])
    for term in ("indirect effect", "LocoGen window", "efficacy", "generalization", "specificity", "fidelity"):
        assert f"<b>{term}</b>: " in head


def test_rerun_skips_finished_stages(demo_run):
    model, suite, scorer, config, out, _ = demo_run
    stamps = {
        p: p.stat().st_mtime_ns for p in out.rglob("*.json") if "items" not in p.parts and p.name != "summary.json"
    }
    summary = run_demo(model, suite, scorer, out, config=config)
    assert all(v == 0.0 for v in summary["timings_seconds"].values())
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_text_trace_uses_its_own_calibrated_noise(demo_run):
    """The text trace reads one prompt: its noise is calibrated on that prompt, kept beside the UNet trace's."""
    _, _, _, _, out, summary = demo_run
    case = summary["cases"]["style-vg"]
    stored = json.loads((out / "trace" / "style-vg" / "text-noise.json").read_text())
    assert stored == case["text_noise"]
    text = json.loads((out / "trace" / "style-vg" / "text" / "result.json").read_text())
    assert text["noise"] == pytest.approx(case["text_noise"]["noise"])
    assert "text-encoder trace corruption calibrated" in (out / "report.html").read_text()


def test_report_flags_a_trace_whose_corruption_did_nothing(demo_run):
    from diffloc.report.html import _case_section

    _, _, _, _, out, summary = demo_run
    entry = dict(summary["cases"]["style-vg"])
    entry["unet_corrupted"] = entry["unet_clean"] - 0.5
    entry["text_corrupted"] = entry["text_clean"]
    page = _case_section(out, "style-vg", entry)
    assert "barely changed the text-encoder trace" in page and "barely changed the UNet trace" not in page


def test_edit_templates_are_the_concept_alone_then_the_case_prompts(demo_run):
    from diffloc.workflows.demo import edit_templates

    _, suite, _, _, out, _ = demo_run
    (case,) = suite.cases
    assert edit_templates(case) == ("{}", "a house in the style of {}", "a tree in the style of {}")
    edit = json.loads((out / "edits" / "style-vg" / "quickfix" / "edit.json").read_text())
    assert edit["request"]["templates"] == ["{}", "a house in the style of {}", "a tree in the style of {}"]


def test_suite_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SUITE.replace("steps: 2", "stepz: 2"))
    with pytest.raises(ConfigError, match="unknown key 'stepz'; did you mean steps"):
        load_suite(bad)
    bad.write_text(SUITE.replace("    attribute: van gogh style\n", ""))
    with pytest.raises(ConfigError, match="missing required field 'attribute'"):
        load_suite(bad)
    bad.write_text(SUITE.replace("[a house in the style of van gogh, ", "[a house, "))
    with pytest.raises(ConfigError, match="does not contain the concept"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")
    bad.write_text(
        SUITE.replace("preserve_prompts: [a red house]", "preserve_prompts: [a house in the style of monet]")
    )
    with pytest.raises(ConfigError, match="is also a held-out or neighbour prompt"):
        load_suite(bad)
    Path(bad).write_text("cases: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite(bad)


CHECKER = """
<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target && e.target.src)), true);
const origError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const marker = document.createElement('pre');
  marker.id = 'diffloc-check';
  marker.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__errors});
  document.body.appendChild(marker);
});
</script>
"""


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_in_a_real_headless_browser(demo_run, tmp_path):
    import os
    import subprocess

    import numpy as np
    from PIL import Image

    browser = _chromium()
    if browser is None:
        if os.environ.get("DIFFLOC_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (DIFFLOC_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("chromium not installed")
    out = demo_run[4]
    check = out / "browser-check.html"
    check.write_text((out / "report.html").read_text().replace("</body>", CHECKER + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files"]  # fmt: skip
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    found = re.search(r'<pre id="diffloc-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] >= 5 and result["broken"] == [] and result["errors"] == []
    assert 'src="trace/style-vg/attribution/steps.png"' in (out / "report.html").read_text()  # the timestep map
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1200,2400", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # text and figures, not a blank page


def test_demo_killed_mid_way_resumes_without_recomputing(tmp_path, tiny_clip_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "suite.yaml").write_text(SUITE)
    out = tmp_path / "run"
    suite = str(tmp_path / "suite.yaml")
    # the step map and the audit come after the stage this test kills, and one seed per trace is enough (no
    # intervals): the resume is the point
    cmd = [sys.executable, "-m", "diffloc.cli.main", "demo", "--model", "tiny-sd1", "--suite", suite,
           "--clip", str(tiny_clip_dir), "--steps", "2", "--max-batch", "24", "--out", str(out),
           "--no-step-map", "--no-audit", "--seeds", "0", "--text-seeds", "0", "--bootstrap", "0"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "trace" / "style-vg" / "unet" / "result.json"
    deadline = time.time() + 300
    while time.time() < deadline and not first.is_file():
        assert proc.poll() is None, "the demo finished before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.is_file() and not (out / "report.html").exists()
    stamp = first.stat().st_mtime_ns
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first.stat().st_mtime_ns == stamp
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timings_seconds"]["style-vg/trace-unet"] == 0.0  # reused, not recomputed
    assert (out / "report.html").is_file()


def test_outputs_of_another_run_are_not_reused(demo_run, caplog):
    from dataclasses import replace

    from diffloc.workflows.demo import _same_run, run_key

    model, suite, scorer, config, out, _ = demo_run
    key = run_key(model, suite, scorer, config)
    assert json.loads((out / "run-key.json").read_text()) == key
    assert _same_run(out, key)
    changed = run_key(model, suite, scorer, replace(config, locoedit_target_mode="bare"))
    assert changed != key
    with caplog.at_level("WARNING"):
        assert not _same_run(out, changed)
    assert "recomputing every stage" in caplog.text and "config" in caplog.text
    assert _same_run(out, changed)  # the new key is recorded
    _same_run(out, key)  # leave the directory as the fixture made it
    with pytest.raises(ConfigError, match="locoedit_positions must be one of"):
        DemoConfig(locoedit_positions="eos")
