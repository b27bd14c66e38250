"""Device memory of a UNet batch and a VAE decode, and the batch that fits (``--max-batch auto``).

The per-row estimate follows a UNet forward pass in inference mode block by block, counting the
activations alive at each point, as multiples of the feature map at that level (``channels × h × w``
elements):

* the skip connections of every finished down block, held until their up block ends, and an up block's
  input, which its caller still holds;
* inside a ResNet block, besides its input: the group-norm and SiLU outputs (``2 × c_in``), conv1's output
  beside the SiLU (``c_in + c_out``), conv1 plus the time embedding (``2 × c_out``), or at its end conv2's
  output, the residual sum and its scaled copy (``3 × c_out``, plus the shortcut projection when the width
  changes);
* inside a transformer layer: its input and the feed-forward's GEGLU (a ``2 × 4c`` projection, ``4c`` for
  GELU(gate), ``4c`` for the product) besides the normalised input and the layer's residual: ``19 × c``;
  attention itself never holds the ``tokens × tokens`` scores (PyTorch's fused attention kernels);
* DeepFloyd IF's joint attention instead: ``7 × c`` (normalised input, q, k, v, output and its copies).

The largest sum over the pass, times the parameter dtype's size, is one row's peak. A VAE decode is
estimated the same way on the decoder (up blocks of ResNets at rising resolution; its input to each up
block stays alive; an upsampler holds the nearest-neighbour copy and its convolution at 4× the area), in
float32 when the VAE upcasts, plus the float32 copy of the VAE's weights then. ``bench/full_size.py`` prints
these estimates next to the peaks it measures for SD-1.5 and SD-XL (within 4 % on the CPU).

A batch of ``rows`` costs ``rows × row`` during denoising and ``decode_batch × image`` while decoding (the
two never overlap); :func:`auto_max_batch` takes the largest power of two of runs whose batch (two rows per
run with classifier-free guidance) fits in a fraction of the device's free memory. The model's weights are
already in memory when the free memory is read, so they are not counted again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffloc.errors import ConfigError

#: Share of the free memory ``--max-batch auto`` plans to use (the rest absorbs allocator fragmentation,
#: kernel workspaces and the estimate's error).
HEADROOM = 0.8
#: ``--max-batch auto`` never goes above this many runs (larger batches no longer speed up a GPU).
MAX_AUTO_RUNS = 256
#: Feed-forward working set of a transformer layer, in multiples of its width (see the module docstring).
TRANSFORMER_FACTOR = 19
#: Working set of DeepFloyd IF's joint attention, in multiples of its width.
JOINT_ATTENTION_FACTOR = 7


def _per_block(value: Any, count: int) -> list[int]:
    """A per-block config value as a list (configs give one number for all blocks, or one per block)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [int(v) for v in value]
    return [int(value)] * count


def _cells(side: int, halvings: int) -> int:
    """Feature-map side after ``halvings`` stride-2 convolutions (each rounds up)."""
    for _ in range(halvings):
        side = -(-side // 2)
    return max(1, side)


def _resnet(c_in: int, c_out: int) -> int:
    """Extra activations (channel units) of a ResNet block beyond its input: norm and SiLU of the input,
    conv1 (plus the time embedding), and at the end conv2's output, the residual sum and its scaled copy
    (plus the shortcut projection when the width changes)."""
    shortcut = c_out if c_in != c_out else 0
    return max(2 * c_in, c_in + c_out, 2 * c_out, 3 * c_out + shortcut)


def _attention(block_type: str, c: int, depth: int) -> int:
    """Extra activations (channel units) of a block's attention layer beyond its input."""
    if "SimpleCrossAttn" in block_type:
        return JOINT_ATTENTION_FACTOR * c
    if "CrossAttn" in block_type:
        return TRANSFORMER_FACTOR * c if depth > 0 else 0
    return 0


def unet_row_elements(config: Mapping[str, Any], latent_height: int, latent_width: int) -> int:
    """Peak activation elements of one UNet batch row (see the module docstring for the count)."""
    channels = [int(c) for c in config["block_out_channels"]]
    levels = len(channels)
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    layers = _per_block(config.get("layers_per_block", 2), levels)
    depths = _per_block(config.get("transformer_layers_per_block", 1) or 1, levels)
    area = [_cells(latent_height, i) * _cells(latent_width, i) for i in range(levels)]

    skips: list[int] = [channels[0] * area[0]]  # conv_in's output
    peak = alive = skips[0]
    for i, block in enumerate(down_types):
        c_in = channels[i - 1] if i else channels[0]
        for _ in range(layers[i]):
            peak = max(peak, alive + _resnet(c_in, channels[i]) * area[i])
            c_in = channels[i]
            # the transformer's input is the ResNet's output, not yet a skip
            peak = max(peak, alive + (channels[i] + _attention(block, channels[i], depths[i])) * area[i])
            skips.append(channels[i] * area[i])
            alive += skips[-1]
        if i < levels - 1:
            skips.append(channels[i] * area[i + 1])
            alive += skips[-1]
            peak = max(peak, alive)
    c_mid = channels[-1]
    mid = config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    peak = max(peak, alive + (c_mid + max(_resnet(c_mid, c_mid), _attention(mid, c_mid, depths[-1]))) * area[-1])

    up_channels = list(reversed(channels))
    up_layers = list(reversed(layers))
    up_depths = list(reversed(depths))
    c_prev = c_mid
    for j, block in enumerate(up_types):
        level = levels - 1 - j
        n = up_layers[j] + 1
        block_skips = skips[-n:]
        del skips[-n:]
        held = alive + c_prev * area[level]  # skips still counted in `alive`, plus the block's input
        c_hidden = c_prev
        for skip in reversed(block_skips):
            c_skip = skip // area[level]
            c_in = c_hidden + c_skip
            resnet = c_in + _resnet(c_in, up_channels[j])
            peak = max(peak, held + resnet * area[level])
            c_hidden = up_channels[j]
            attention = c_hidden + _attention(block, c_hidden, up_depths[j])
            peak = max(peak, held + attention * area[level])
        alive -= sum(block_skips)
        if level > 0:  # nearest upsampling, then a 3x3 conv: both at the next level's size
            peak = max(peak, held + 2 * c_hidden * area[level - 1])
        c_prev = c_hidden
    return int(peak)


def vae_decode_elements(config: Mapping[str, Any], height: int, width: int) -> int:
    """Peak activation elements of decoding one image with an ``AutoencoderKL`` decoder."""
    channels = list(reversed([int(c) for c in config["block_out_channels"]]))
    levels = len(channels)
    layers = int(config.get("layers_per_block", 2)) + 1
    area = [_cells(height, levels - 1 - j) * _cells(width, levels - 1 - j) for j in range(levels)]
    c_mid = channels[0]
    peak = (c_mid + _resnet(c_mid, c_mid)) * area[0]  # the mid block at the coarsest level
    c_prev = c_mid
    for j in range(levels):
        held = c_prev * area[j]  # the block's input, which its caller still holds
        c_in, extra = c_prev, 0  # the first ResNet's input is that held tensor
        for _ in range(layers):
            peak = max(peak, held + (extra + _resnet(c_in, channels[j])) * area[j])
            c_in = extra = channels[j]
        if j < levels - 1:  # nearest upsampling to 4x the area, then a 3x3 conv
            peak = max(peak, held + (channels[j] + 2 * 4 * channels[j]) * area[j])
        c_prev = channels[j]
    return int(peak)


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Estimated activation memory of a model at one image size.

    Attributes:
        row_bytes: one UNet batch row (a CFG run is two rows).
        decode_image_bytes: one image through the VAE decoder (0 for pixel-space models).
        decode_upcast_bytes: a float32 copy of the VAE's weights while a half-precision VAE that asks for
            ``force_upcast`` decodes (0 otherwise).
        decode_batch: images per decode call.
        height, width: image size in pixels.
    """

    row_bytes: int
    decode_image_bytes: int
    decode_upcast_bytes: int = 0
    decode_batch: int
    height: int
    width: int

    def batch_bytes(self, runs: int, *, cfg: bool) -> int:
        """Peak activation bytes of generating ``runs`` images in one batch: denoising (two UNet rows per run
        with classifier-free guidance), then decoding ``decode_batch`` images at a time."""
        rows = runs * (2 if cfg else 1)
        decoding = self.decode_upcast_bytes + min(self.decode_batch, runs) * self.decode_image_bytes
        return max(rows * self.row_bytes, decoding)


def estimate(
    model: Any, *, height: int | None = None, width: int | None = None, decode_batch: int | None = None
) -> MemoryEstimate:
    """:class:`MemoryEstimate` of a loaded model (default size: the model's)."""
    from diffloc.models.base import DECODE_BATCH, decode_compute_dtype

    pipe, adapter = model.pipe, model.adapter
    default_h, default_w = adapter.default_size(pipe)
    height, width = height or default_h, width or default_w
    _, lat_h, lat_w = adapter.latent_shape(pipe, height, width)
    dtype = next(adapter.denoiser(pipe).parameters()).dtype
    row = adapter.row_elements(pipe, lat_h, lat_w) * _itemsize(dtype)
    image = upcast = 0
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        compute = decode_compute_dtype(vae)
        image = vae_decode_elements(dict(vae.config), height, width) * _itemsize(compute)
        if compute != next(vae.parameters()).dtype:
            upcast = sum(p.numel() for p in vae.parameters()) * _itemsize(compute)
    return MemoryEstimate(row_bytes=row, decode_image_bytes=image, decode_upcast_bytes=upcast,
                          decode_batch=decode_batch or DECODE_BATCH, height=height, width=width)  # fmt: skip


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def free_bytes(device: torch.device) -> int:
    """Free memory of a device: CUDA's free global memory, else the host's available memory.

    Raises:
        ConfigError: the free memory of this device type cannot be read.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import os

        if hasattr(os, "sysconf"):
            return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    raise ConfigError(f"cannot read the free memory of device {device}; give --max-batch a number")


@dataclass(frozen=True)
class BatchChoice:
    """What ``--max-batch auto`` chose and why."""

    runs: int
    rows_per_run: int
    free_bytes: int
    estimate: MemoryEstimate

    def describe(self) -> str:
        """One line: the estimate and the free memory it was fitted into."""
        return (
            f"{self.estimate.row_bytes / 2**20:.0f} MiB per UNet row, {self.rows_per_run} row(s) per run, "
            f"{self.estimate.decode_image_bytes / 2**20:.0f} MiB per decoded image, "
            f"{self.free_bytes / 2**30:.1f} GiB free at {self.estimate.height}x{self.estimate.width}"
        )


def auto_max_batch(model: Any, *, cfg: bool, height: int | None = None, width: int | None = None) -> BatchChoice:
    """The most runs whose batch fits in :data:`HEADROOM` of the model device's free memory, by :func:`estimate`,
    rounded down to a power of two (at least 2, at most :data:`MAX_AUTO_RUNS`).

    The power of two keeps the choice stable when the free memory moves a little between runs: a sweep's
    items are keyed by their settings, ``max_batch`` included, so a rerun that picks the same number resumes.

    Raises:
        ConfigError: not even two runs fit.
    """
    est = estimate(model, height=height, width=width)
    free = free_bytes(model.device)
    budget = int(free * HEADROOM)
    runs = 2
    if est.batch_bytes(runs, cfg=cfg) > budget:
        raise ConfigError(
            f"--max-batch auto: two runs need about {est.batch_bytes(runs, cfg=cfg) / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} GiB is free on {model.device}; free memory, or use a smaller image or dtype"
        )
    while runs < MAX_AUTO_RUNS and est.batch_bytes(2 * runs, cfg=cfg) <= budget:
        runs *= 2
    return BatchChoice(runs=runs, rows_per_run=2 if cfg else 1, free_bytes=free, estimate=est)
