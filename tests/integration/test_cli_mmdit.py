"""``diffloc trace`` and ``diffloc locogen`` end to end on a tiny SD3: both streams (screened), one text encoder
(attribution), the text-stream LocoGen window, and the one-line refusal of a cross-attention window."""

from __future__ import annotations

from diffloc.cli.main import main
from diffloc.tracing.results import TraceResult, WindowResult

PROMPT = "a house in the style of van gogh"
FAST = ["--seeds", "0", "--steps", "2", "--guidance", "5", "--max-batch", "12", "--bootstrap", "0"]
COMMON = ["--model", "tiny-sd3", "--prompt", PROMPT, "--attribute", "van gogh style"]


def test_trace_both_streams_and_one_text_encoder(tmp_path, tiny_clip_dir):
    denoiser = tmp_path / "denoiser"
    sites = "transformer.joint.2?,transformer.joint_context.2?,transformer.attn.2?.k"
    assert main(["trace", "unet", *COMMON, "--subject", "van gogh", "--clip", str(tiny_clip_dir), "--sites", sites,
                 "--out", str(denoiser), "--method", "screen", "--top-k", "2", *FAST]) == 0  # fmt: skip
    result = TraceResult.load(denoiser)
    assert result.labels[:2] == ["transformer.joint.20", "transformer.joint.21"] and len(result.labels) == 11
    assert result.controls == [] and (denoiser / "trace.png").stat().st_size > 0
    assert result.method == "screen" and int((result.marks == "exact").sum()) == 2
    assert result.meta["attribution_fixes"] == ["attention-saturation"]
    text = tmp_path / "text"
    assert main(["trace", "text", *COMMON, "--subject", "van gogh", "--clip", str(tiny_clip_dir), "--kinds", "layer",
                 "--encoder", "text3", "--out", str(text), "--method", "attribution", *FAST]) == 0  # fmt: skip
    traced = TraceResult.load(text)
    assert traced.labels == ["text3.layer"] and traced.meta["encoder"] == "text3" and traced.method == "attribution"


def test_locogen_text_stream_and_the_cross_attention_refusal(tmp_path, tiny_clip_dir, capsys):
    args = ["locogen", *COMMON, "--target", "a house", "--clip", str(tiny_clip_dir), "--window", "21", *FAST]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 1
    error = capsys.readouterr().err.strip().split("\r")[-1]  # after the progress bar's cleared line
    assert error.startswith("diffloc: error:") and "'text-stream'" in error and "\n" not in error
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--intervention", "text-stream", "--out", str(tmp_path / "windows")]) == 0
    result = WindowResult.load(tmp_path / "windows")
    assert len(result.windows) == 4 and result.meta["variant"] == "text-stream"
    assert (tmp_path / "windows" / "windows.png").stat().st_size > 0
