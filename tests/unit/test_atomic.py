"""Files and folders diffloc writes get the modes the user's umask gives (0644/0755 under 0022), not 0600/0700."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from diffloc.atomic import current_umask, public_mode, write_json_atomic
from diffloc.images import save_png
from diffloc.tracing.store import ItemStore


def _modes(root):
    """``{relative path: permission bits}`` of everything under ``root``."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_and_folders_follow_the_umask(tmp_path, tiny_sd1, mask):
    from diffloc.editing import EditRequest, compute_edit

    edit = compute_edit(tiny_sd1, EditRequest(concepts=("van gogh",), targets=("a painting",)), method="quickfix")
    old = os.umask(mask)
    try:
        assert current_umask() == mask and public_mode() == 0o666 & ~mask
        write_json_atomic(tmp_path / "out" / "result.json", {"a": 1})
        save_png(torch.rand(3, 8, 8), tmp_path / "out" / "image.png")
        ItemStore(tmp_path / "sweep").put("k", {"score": 1.0})
        edit.save(tmp_path / "edit")
    finally:
        os.umask(old)
    modes = _modes(tmp_path)
    assert set(modes) >= {"out/result.json", "out/image.png", "sweep/items/k.json", "edit", "edit/edit.json",
                          "edit/edit.safetensors"}  # fmt: skip
    for path, mode in modes.items():
        expected = 0o777 & ~mask if (tmp_path / path).is_dir() else 0o666 & ~mask
        assert mode == expected, f"{path}: {oct(mode)} != {oct(expected)}"
