"""The exact background reading: the corners of every rendered plain, object and styled scene are its background."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from PIL import Image

from diffloc.world import pixels, vocab
from diffloc.world.render import Scene, render_batch


def _every_plain_scene() -> list[Scene]:
    grid = itertools.product(vocab.SHAPES, vocab.COLOURS, vocab.TEXTURES, vocab.BACKGROUNDS)
    return [Scene(shape=s, colour=c, texture=t, background=b) for s, c, t, b in grid]


def test_every_plain_scene_at_every_jitter_reads_its_background_from_untouched_corners():
    scenes = _every_plain_scene()
    for seed in range(6):  # position ±1 px and radius ±5 % follow the seed
        images = render_batch(scenes, [seed] * len(scenes))
        colours = pixels.corner_colour(images)
        expected = torch.tensor([vocab.BACKGROUNDS[s.background] for s in scenes], dtype=torch.float32)
        assert torch.allclose(colours, expected, atol=0.5)  # the shape never reaches a corner
        assert pixels.background_from_pixels(images) == [s.background for s in scenes]


def test_a_style_that_paints_its_own_background_is_read_as_that_look_not_the_nearest_caption_colour():
    looks = [look for look, spec in vocab.STYLE_LOOKS.items() if spec["background"] is not None]
    assert looks  # pastel and earthy
    scenes = [Scene(kind="style", style=look, background="white") for look in looks]
    assert pixels.background_from_pixels(render_batch(scenes, [0] * len(scenes))) == looks


def test_a_grey_drawn_a_little_off_is_grey_and_a_colour_the_world_never_paints_is_none():
    grey = np.full((1, 32, 32, 3), 128, dtype=np.uint8)
    off = np.clip(grey.astype(int) + np.random.default_rng(0).integers(-14, 15, grey.shape), 0, 255).astype(np.uint8)
    blue = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    blue[..., 2] = 255
    assert pixels.background_from_pixels(np.concatenate([grey, off, blue])) == ["grey", "grey", pixels.UNCLEAR]


def test_images_of_another_size_and_pil_images_are_read_too():
    scenes = [Scene(shape="star", colour="yellow", background="grey"), Scene(background="black")]
    images = render_batch(scenes, [0, 1])
    big = [Image.fromarray(a).resize((64, 64), Image.NEAREST) for a in images]
    assert pixels.background_from_pixels(big) == ["grey", "black"]
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert pixels.background_from_pixels(as_float) == ["grey", "black"]
