"""Every number a user can give diffloc, checked in one place: the CLI's argument types and the config dataclasses
call the same checkers, so a value gets the same one-line :class:`~diffloc.errors.ConfigError` (naming the value
and the valid range) wherever it comes from, before any directory is created or any model is loaded.

Ranges:

* seeds: integers in ``[0, 2**63 - 1]``. ``torch.Generator.manual_seed`` takes ``[-2**63, 2**64 - 1]`` but maps
  a negative seed ``s`` onto ``2**64 + s`` (``-1`` draws what ``2**64 - 1`` draws), so negative seeds would alias
  others; seeds diffloc derives from a user's seed (step noise, corruption noise) are folded into the generator's
  range by :func:`generator_seed`.
* steps: integers in ``[1, num_train_timesteps]`` of the model's scheduler (read from its config on disk).
* guidance, noise: finite numbers ``>= 0``; ridge strengths (λ) and weights: finite numbers ``> 0``.
* detection thresholds: finite numbers in ``[-1, 1]`` (scores are probabilities or cosine similarities).
* batch sizes, windows, counts: positive integers.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from diffloc.errors import ConfigError, ModelLoadError

T = TypeVar("T")

#: seeds are integers in ``[0, SEED_LIMIT)``
SEED_LIMIT = 2**63
#: the span of ``torch.Generator.manual_seed`` (it takes ``[-2**63, 2**64)``, negatives aliasing positives)
GENERATOR_SPAN = 2**64
#: the largest image side accepted (pixels; SD-XL's native size is 1024)
MAX_IMAGE_SIDE = 8192
#: scores lie in this range (detector probabilities in [0, 1], CLIP cosine similarities in [-1, 1])
SCORE_RANGE = (-1.0, 1.0)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, why: str = "") -> int:
    """``value`` when it is an integer (not a bool) in ``[low, high]``; else a one-line :class:`ConfigError`."""
    valid = _is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not valid:
        if low is not None and high is not None:
            span = f"an integer in [{low}, {_readable(high)}]"
        elif low == 1:
            span = "a positive integer"
        elif low is not None:
            span = f"an integer >= {low}"
        else:
            span = "an integer" if high is None else f"an integer <= {_readable(high)}"
        raise ConfigError(f"{name} must be {span}{f' ({why})' if why else ''}, got {value!r}")
    return int(value)


def check_number(
    name: str, value: Any, *, low: float | None = None, high: float | None = None, above: bool = False, why: str = ""
) -> float:
    """``value`` when it is a finite real number (not a bool) ``>= low`` (``> low`` with ``above``) and
    ``<= high``; else a one-line :class:`ConfigError`. Returns it unchanged (an int stays an int)."""
    valid = _is_number(value) and math.isfinite(float(value))
    if valid and low is not None:
        valid = value > low if above else value >= low
    if valid and high is not None:
        valid = value <= high
    if not valid:
        if low is not None and high is not None:
            span = f"a finite number in {'(' if above else '['}{low:g}, {high:g}]"
        elif low is not None:
            span = f"a finite number {'>' if above else '>='} {low:g}"
        else:
            span = "a finite number" if high is None else f"a finite number <= {high:g}"
        raise ConfigError(f"{name} must be {span}{f' ({why})' if why else ''}, got {value!r}")
    return value


def _readable(value: int) -> str:
    return "2**63 - 1" if value == SEED_LIMIT - 1 else str(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer in ``[0, 2**63 - 1]``."""
    return check_int(name, value, low=0, high=SEED_LIMIT - 1)


def check_seeds(values: Any, name: str = "seeds") -> tuple[int, ...]:
    """A non-empty sequence of seeds."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigError(f"{name} must be a list of integers in [0, 2**63 - 1], got {values!r}")
    seeds = tuple(values)
    if not seeds:
        raise ConfigError(f"{name} is empty; give at least one seed")
    for seed in seeds:
        check_seed(seed, f"each of {name}")
    return seeds


def generator_seed(value: int) -> int:
    """A seed derived from user seeds (``seed * k + salt``), folded into ``torch.Generator``'s range.

    Unchanged for every value below ``2**64``, so results of seeds that always worked do not move.
    """
    return value % GENERATOR_SPAN


def check_steps(value: Any, *, limit: int | None = None, name: str = "steps") -> int:
    """Denoising steps: an integer in ``[1, limit]`` (``limit``: the scheduler's ``num_train_timesteps``)."""
    why = "the scheduler's num_train_timesteps" if limit is not None else ""
    return check_int(name, value, low=1, high=limit, why=why)


def check_image_side(name: str, value: Any) -> int:
    """An image height or width in pixels: a multiple of 8 in ``[8, MAX_IMAGE_SIDE]``."""
    if not _is_int(value) or not 8 <= value <= MAX_IMAGE_SIDE or value % 8:
        raise ConfigError(f"{name} must be a multiple of 8 in [8, {MAX_IMAGE_SIDE}] (pixels), got {value!r}")
    return int(value)


def check_guidance(value: Any, name: str = "guidance") -> float:
    """A classifier-free guidance scale: a finite number ``>= 0`` (values <= 1 disable guidance)."""
    return check_number(name, value, low=0.0)


def check_noise(value: Any, name: str = "noise") -> float:
    """A corruption noise std: a finite number ``>= 0``."""
    return check_number(name, value, low=0.0)


def check_positive(name: str, value: Any, meaning: str = "") -> float:
    """A finite number ``> 0`` (ridge strengths λ, weights, learning rates)."""
    return check_number(name, value, low=0.0, above=True, why=meaning)


def check_fraction(value: Any, name: str = "fraction") -> float:
    """A patch fraction: a finite number in ``(0, 1]`` (the share of the way a patch moves a value to the source's)."""
    return check_number(name, value, low=0.0, high=1.0, above=True, why="1 patches the whole value")


def check_threshold(value: Any, name: str = "threshold") -> float:
    """A detection threshold on scores: a finite number in ``[-1, 1]``."""
    low, high = SCORE_RANGE
    return check_number(name, value, low=low, high=high, why="scores are probabilities or cosine similarities")


def check_count(name: str, value: Any, *, low: int = 1) -> int:
    """A count, batch size or window size: an integer ``>= low``."""
    return check_int(name, value, low=low)


# -- the model's scheduler ------------------------------------------------------------------------------------
def scheduler_train_steps(model: Any) -> int | None:
    """``num_train_timesteps`` of a model's scheduler, read from its config on disk before any weights load.

    ``model`` is a model reference as :func:`diffloc.load` takes it, or a loaded pipeline (its scheduler's
    config is read). ``None`` when it cannot be known here (a source that does not resolve: loading it will say
    why).
    """
    scheduler = getattr(getattr(model, "pipe", model), "scheduler", None)
    if scheduler is not None:
        return _train_steps(dict(scheduler.config))
    text = str(model)
    from diffloc.models.registry import TINY_PREFIX, resolve_source

    if text.startswith(TINY_PREFIX):
        from diffloc.models.tiny import scheduler_config

        try:
            return _train_steps(scheduler_config(text[len(TINY_PREFIX) :]))
        except KeyError:
            return None
    try:
        path = resolve_source(text)
    except ModelLoadError:
        return None
    return scheduler_dir_steps(path)


def scheduler_dir_steps(pipeline_dir: str | Path) -> int | None:
    """``num_train_timesteps`` from ``<pipeline_dir>/scheduler/scheduler_config.json`` (``None``: unreadable)."""
    try:
        config = json.loads((Path(pipeline_dir) / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return None
    return _train_steps(config) if isinstance(config, dict) else None


def _train_steps(config: dict[str, Any]) -> int | None:
    value = config.get("num_train_timesteps", 1000)  # diffusers' default for every scheduler diffloc meets
    return int(value) if _is_int(value) and value >= 1 else None


def check_model_steps(model: Any, steps: Any, name: str = "steps") -> int:
    """:func:`check_steps` against ``model``'s scheduler (its training steps bound the sampling steps)."""
    return check_steps(steps, limit=scheduler_train_steps(model), name=name)


# -- argparse adapters ----------------------------------------------------------------------------------------
def cli_type(checker: Callable[[Any], T], parse: Callable[[str], Any] = int) -> Callable[[str], T]:
    """An argparse ``type=`` that parses the text with ``parse`` and validates it with ``checker``.

    Errors become :class:`argparse.ArgumentTypeError`, which the CLI prints as one line naming the option.
    """
    kind = "an integer" if parse is int else "a number"

    def convert(text: str) -> T:
        try:
            value = parse(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        try:
            return checker(value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(checker, "__name__", "value")
    return convert


def _named(name: str, checker: Callable[[str, Any], T]) -> Callable[[Any], T]:
    def check(value: Any) -> T:
        return checker(name, value)

    check.__name__ = name
    return check


#: ``type=`` for seed options
seed_arg = cli_type(check_seed)
#: ``type=`` for step options (the model-specific upper bound is checked once the model is known)
steps_arg = cli_type(check_steps)
#: ``type=`` for guidance options
guidance_arg = cli_type(check_guidance, float)
#: ``type=`` for corruption noise given as a number
noise_arg = cli_type(check_noise, float)


def count_arg(name: str, low: int = 1) -> Callable[[str], int]:
    """``type=`` for an integer option ``>= low`` (batch sizes, windows, counts)."""
    return cli_type(_named(name, lambda n, v: check_count(n, v, low=low)))


def positive_arg(name: str, meaning: str = "") -> Callable[[str], float]:
    """``type=`` for a finite number ``> 0`` (λ, weights, learning rates)."""
    return cli_type(_named(name, lambda n, v: check_positive(n, v, meaning)), float)


def nonnegative_arg(name: str) -> Callable[[str], float]:
    """``type=`` for a finite number ``>= 0``."""
    return cli_type(_named(name, lambda n, v: check_number(n, v, low=0.0)), float)


def image_side_arg(name: str) -> Callable[[str], int]:
    """``type=`` for an image height or width in pixels."""
    return cli_type(_named(name, check_image_side))
