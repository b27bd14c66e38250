"""File names for generated images that cannot collide, and a guard against overwriting within one run.

A name is a readable slug of the prompt, the seed, and a short hash of the full prompt and seed
(``a-red-circle_seed0_5d41402abc.png``): prompts that differ only in case, punctuation, non-ASCII characters or
after the slug's 60 characters still get their own files.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from diffloc.errors import ConfigError

SLUG_LENGTH = 60
HASH_LENGTH = 10


def slug(text: str) -> str:
    """Lower-case ASCII words joined by ``-``, at most :data:`SLUG_LENGTH` characters (``prompt`` if empty)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:SLUG_LENGTH].strip("-") or "prompt"


def image_name(prompt: str, seed: int, suffix: str = ".png") -> str:
    """The file name of the image of ``prompt`` at ``seed``: slug, seed, and a hash of both in full."""
    digest = hashlib.sha256(json.dumps([prompt, int(seed)], ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"{slug(prompt)}_seed{seed}_{digest[:HASH_LENGTH]}{suffix}"


class RunFiles:
    """The files one run writes into a directory: claiming a name twice is refused, never overwritten.

    Example:
        >>> files = RunFiles(out)
        >>> path = files.claim(image_name(prompt, seed), f"prompt {prompt!r} with seed {seed}")
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._owners: dict[str, str] = {}

    def claim(self, name: str, owner: str) -> Path:
        """The path for ``name``, reserved for ``owner`` (what the file holds, for the message).

        Raises:
            ConfigError: ``name`` was already claimed in this run (the same input given twice, or a collision).
        """
        earlier = self._owners.get(name)
        if earlier is not None:
            if earlier == owner:
                raise ConfigError(f"{owner} is given twice; each would be written to {name!r}")
            raise ConfigError(f"{owner} and {earlier} would both be written to {name!r}; refusing to overwrite")
        self._owners[name] = owner
        return self.directory / name
