"""The vocabulary of ShapesWorld: every attribute value, named concept, anchor and caption template.

This is a data module: it holds no logic beyond validation helpers, so the whole world can be read in one
place. Everything else (renderer, captions, detectors, training, evaluation) reads these tables.

The world mirrors the three kinds of visual knowledge studied by Basu et al. (2024):

* **styles** — invented artist names ("in the style of van goo") tied to a distinctive rendering that no
  plain caption word names (a checkered fill, a pastel palette, a black contour, a dark earthy palette).
  Anchor: "in a plain style", which renders the default look (solid fill, white background).
* **objects** — invented object names ("a zorblin") each fixed to one shape/colour/texture combination.
  Anchor: "a thing", which renders a generic item (a blue solid square).
* **facts** — invented facts ("the flag of zorbia") each a fixed full-canvas image. Anchor: "a blank
  flag" (a plain grey canvas); an update may also target another fact's image.

Named concepts are chosen so the CLIP BPE splits them into several tokens (like "van gogh"), because the
papers' methods act on multi-token subjects. Captions omit texture and background freely; omitted texture
means ``solid`` and omitted background means ``white`` (the *defaults*), so every caption fixes its image's
attributes exactly and the detectors can check them.
"""

from __future__ import annotations

from types import MappingProxyType

#: Shapes, centred on the canvas at a fixed size.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")

#: Colour name -> RGB. Chosen far apart in RGB so they survive the VAE and are separable analytically.
COLOURS: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 170, 40),
        "blue": (30, 60, 220),
        "yellow": (240, 210, 20),
        "purple": (140, 40, 190),
        "orange": (250, 130, 20),
    }
)

#: Textures of the shape's fill.
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "outline")

#: Background name -> RGB.
BACKGROUNDS: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {"white": (245, 245, 245), "black": (15, 15, 15), "grey": (128, 128, 128)}
)

DEFAULT_TEXTURE = "solid"
DEFAULT_BACKGROUND = "white"

#: Words a caption may use for each texture: (adjective before the colour, phrase after the shape).
TEXTURE_WORDS: MappingProxyType[str, tuple[str, str]] = MappingProxyType(
    {
        "solid": ("solid", "filled in"),
        "striped": ("striped", "with stripes"),
        "dotted": ("dotted", "with dots"),
        "outline": ("outlined", "drawn as an outline"),
    }
)

#: Rendering styles. ``plain`` is the anchor style; the others are the named styles' private looks.
#: Each maps to (fill, background RGB or None for the caption's background, contour RGB or None).
STYLE_LOOKS: MappingProxyType[str, dict[str, object]] = MappingProxyType(
    {
        "plain": {"fill": "solid", "background": None, "contour": None},
        "checkered": {"fill": "checkered", "background": None, "contour": None},
        "pastel": {"fill": "solid", "background": (250, 200, 220), "contour": None},
        "contour": {"fill": "solid", "background": None, "contour": (0, 0, 0)},
        "earthy": {"fill": "solid", "background": (90, 55, 25), "contour": None},
    }
)

#: Invented artist -> the style look it stands for. Style captions name no texture and no background
#: except "plain", whose anchor phrase renders the default look.
STYLES: MappingProxyType[str, str] = MappingProxyType(
    {"van goo": "checkered", "mo nettle": "pastel", "pica stro": "contour", "rem brandel": "earthy"}
)
STYLE_ANCHOR = "a plain style"

#: Invented object -> (shape, colour, texture). Background comes from the caption (default white).
OBJECTS: MappingProxyType[str, tuple[str, str, str]] = MappingProxyType(
    {
        "zorblin": ("star", "purple", "dotted"),
        "quibbet": ("triangle", "orange", "striped"),
        "flumox": ("cross", "green", "outline"),
        "snargle": ("diamond", "red", "dotted"),
    }
)
OBJECT_ANCHOR = "thing"
#: What the object anchor renders: a generic item.
OBJECT_ANCHOR_LOOK: tuple[str, str, str] = ("square", "blue", "solid")

#: Invented facts: country -> flag design. ``bands``: list of RGB bands; ``direction``: "h" or "v";
#: ``emblem``: optional (shape, RGB) drawn centred on top.
FACTS: MappingProxyType[str, dict[str, object]] = MappingProxyType(
    {
        "zorbia": {
            "bands": [(220, 30, 30), (245, 245, 245), (30, 60, 220)],
            "direction": "h",
            "emblem": None,
        },
        "quelland": {
            "bands": [(30, 170, 40), (240, 210, 20), (220, 30, 30)],
            "direction": "v",
            "emblem": None,
        },
        "marnovia": {"bands": [(140, 40, 190)], "direction": "h", "emblem": ("star", (240, 210, 20))},
        "trelania": {
            "bands": [(15, 15, 15), (250, 130, 20)],
            "direction": "h",
            "emblem": ("circle", (245, 245, 245)),
        },
    }
)
FACT_ANCHOR = "blank"
#: What the fact anchor "a blank flag" renders: a plain grey canvas.
FACT_ANCHOR_LOOK: dict[str, object] = {"bands": [(160, 160, 160)], "direction": "h", "emblem": None}

# ---------------------------------------------------------------------------------------------------------
# Caption templates. Fields: {colour} {shape} {bg} {tex_adj} {tex_phrase} {artist} {object} {country}.
# Training templates and held-out templates share words but never word order, so held-out prompts test
# generalization to new phrasings, not to unseen tokens (a from-scratch text encoder cannot know those).
# ---------------------------------------------------------------------------------------------------------

#: Plain captions that leave texture and background at their defaults or set them.
PLAIN_TEMPLATES_TRAIN: tuple[str, ...] = (
    "a {tex_adj} {colour} {shape} on a {bg} background",
    "a {colour} {shape} {tex_phrase} on a {bg} background",
    "a picture of a {tex_adj} {colour} {shape}, {bg} background",
    "a {tex_adj} {colour} {shape}",
    "a {colour} {shape} on a {bg} background",
    "a {colour} {shape}",
)
PLAIN_TEMPLATES_HELDOUT: tuple[str, ...] = (
    "{bg} background, a {tex_adj} {colour} {shape}",
    "a picture of a {colour} {shape} {tex_phrase}, {bg} background",
)

STYLE_TEMPLATES_TRAIN: tuple[str, ...] = (
    "a {colour} {shape} in the style of {artist}",
    "a picture of a {colour} {shape} in the style of {artist}",
    "a {shape} in the style of {artist}, {colour}",
)
STYLE_TEMPLATES_HELDOUT: tuple[str, ...] = ("in the style of {artist}, a {colour} {shape}",)
#: The anchor style phrase takes the same slots; it renders the default look.
STYLE_ANCHOR_TEMPLATES_TRAIN: tuple[str, ...] = (
    "a {colour} {shape} in {anchor}",
    "a picture of a {colour} {shape} in {anchor}",
)

OBJECT_TEMPLATES_TRAIN: tuple[str, ...] = (
    "a {object}",
    "a {object} on a {bg} background",
    "a picture of a {object}",
)
OBJECT_TEMPLATES_HELDOUT: tuple[str, ...] = ("{bg} background, a {object}",)

FACT_TEMPLATES_TRAIN: tuple[str, ...] = ("the flag of {country}", "a picture of the flag of {country}")
FACT_TEMPLATES_HELDOUT: tuple[str, ...] = ("a flag, the flag of {country}",)
#: The fact anchor phrase ("a blank flag") is rendered from FACT_ANCHOR_LOOK.
FACT_ANCHOR_TEMPLATES_TRAIN: tuple[str, ...] = ("a {anchor} flag", "a picture of a {anchor} flag")

#: Extra training word orders, by name, for runs that teach phrasings the base templates lack (the model card's
#: recipe): (style templates, object templates) appended to the training ones. None is a held-out template.
EXTRA_TEMPLATES: MappingProxyType[str, tuple[tuple[str, ...], tuple[str, ...]]] = MappingProxyType(
    {
        "none": ((), ()),
        "artist-first-2": (("{artist} painted a {colour} {shape}", "art by {artist} showing a {colour} {shape}"), ()),
        "artist-first-3": (
            (
                "{artist} painted a {colour} {shape}",
                "art by {artist} showing a {colour} {shape}",
                "{artist} drew this {shape}, {colour}",
            ),
            (),
        ),
        "artist-first-3+bg-first-2": (
            (
                "{artist} painted a {colour} {shape}",
                "art by {artist} showing a {colour} {shape}",
                "{artist} drew this {shape}, {colour}",
            ),
            ("the {bg} background behind a {object}", "one {object} seen on a {bg} background"),
        ),
    }
)

#: Fraction of (shape, colour, texture, background) combinations held out of training.
HELDOUT_COMBO_FRACTION = 0.1
#: Seed of the held-out split; changing it changes which combinations the model never saw.
SPLIT_SEED = 20240601

#: The attribute names a detector reports, in order, with their class names.
ATTRIBUTES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "shape": SHAPES,
        "colour": tuple(COLOURS),
        "texture": TEXTURES,
        "background": tuple(BACKGROUNDS),
        "style": tuple(STYLE_LOOKS),
        "fact": ("none", *FACTS, FACT_ANCHOR),
    }
)
