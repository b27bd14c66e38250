"""Build the CLIP BPE tokenizer files that diffloc ships, from OpenAI's merges file.

Stable Diffusion's tokenizer (``openai/clip-vit-large-patch14``) is fully determined by the BPE merges
file ``bpe_simple_vocab_16e6.txt.gz`` that ships inside the ``open_clip_torch`` and ``clip`` packages.
This script derives ``vocab.json`` and ``merges.txt`` the way CLIP's own tokenizer does (256 byte
symbols, the same with ``</w>``, one entry per merge, then the two special tokens), so token ids equal
SD's: BOS 49406, EOS 49407, 49408 entries.

Usage::

    pip download --no-deps open_clip_torch -d /tmp/oc   # any version; only the .gz is read
    python scripts/build_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl src/diffloc/assets/clip_tokenizer
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges (lines 1..48894 after the header)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def read_merges(source: Path) -> list[str]:
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as zf:
            name = next(n for n in zf.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz"))
            raw = gzip.decompress(zf.read(name))
    else:
        raw = gzip.decompress(source.read_bytes())
    lines = raw.decode("utf-8").split("\n")
    return lines[1 : N_MERGES + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="bpe_simple_vocab_16e6.txt.gz or a wheel holding it")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    merges = read_merges(args.source)
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (args.out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    (args.out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
