"""Exact readings of a ShapesWorld image's pixels, where the render fixes the answer.

A plain or object scene paints everything outside its shape in the caption's background colour, and its shape
(centred within ±1 px, at most about 10 px from the centre along either axis) never reaches the image's corners.
So the background of such an image is read from its corners, without a learned detector: the world colour nearest
to the mean colour of the four ``CORNER`` × ``CORNER`` corner patches, or ``"none"`` when no world colour is
within ``TOLERANCE``. The candidates are every background the world renders: the three a caption can name and
the backgrounds of the style looks, so a model that paints a style's pink when asked for white is read as
``"pastel"``, not as the nearest caption colour.

Only plain and object images have a caption background; a style may set its own and a flag fills the canvas, so
:func:`background_from_pixels` answers for any image but is meaningful for those two kinds only.
"""

from __future__ import annotations

import torch

from diffloc.world import vocab
from diffloc.world.detectors import as_tensor

#: Side of each corner patch, in pixels of the 32 × 32 image.
CORNER = 3
#: Largest Euclidean RGB distance (0-255 scale) from the nearest world colour that still counts as that colour;
#: about 35 levels per channel, a third of the gap between grey and black or white.
TOLERANCE = 60.0
#: Read where no world background colour is within ``TOLERANCE``.
UNCLEAR = "none"


def world_backgrounds() -> dict[str, tuple[int, int, int]]:
    """Every background colour the world renders: the caption backgrounds, then the style looks' own, by name."""
    colours = dict(vocab.BACKGROUNDS)
    for look, spec in vocab.STYLE_LOOKS.items():
        if spec["background"] is not None:
            colours[look] = spec["background"]  # type: ignore[assignment]
    return colours


def corner_colour(images) -> torch.Tensor:
    """Mean RGB (0-255) of the four corner patches of each image: ``(n, 3)``.

    ``images`` as :func:`diffloc.world.detectors.as_tensor` accepts (other sizes are resized to 32 × 32 first).
    """
    x = as_tensor(images)
    c = CORNER
    patches = [x[:, :, :c, :c], x[:, :, :c, -c:], x[:, :, -c:, :c], x[:, :, -c:, -c:]]
    return torch.cat([p.flatten(2) for p in patches], dim=2).mean(dim=2) * 255


def background_from_pixels(images) -> list[str]:
    """The background each image shows, read from its corners (see the module docstring): a name of
    :func:`world_backgrounds`, or :data:`UNCLEAR`."""
    colours = world_backgrounds()
    names = list(colours)
    table = torch.tensor([colours[n] for n in names], dtype=torch.float32)
    distance = torch.cdist(corner_colour(images), table)
    nearest = distance.min(dim=1)
    return [
        names[int(i)] if float(d) <= TOLERANCE else UNCLEAR
        for d, i in zip(nearest.values, nearest.indices, strict=True)
    ]
