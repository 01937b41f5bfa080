"""How fast qkv prepares a corpus, and in how much memory, against nanoGPT's way.

    python benchmarks/prepare_bench.py generate /tmp/bench/1g.txt --mb 1000
    python benchmarks/prepare_bench.py measure -- qkv prepare --data /tmp/bench/1g.txt ...
    python benchmarks/prepare_bench.py nanogpt /tmp/bench/1g.txt --tokenizer DIR/tokenizer.json

`generate` writes a deterministic English-like text: words drawn from a Zipf law over a made-up
vocabulary of 50,000 words (a few with accents), in lines of 1-20 words, paragraphs apart.
`measure` runs a command and reports its wall time, MB/s of the source and peak memory: the
resident set of the whole process tree (workers included), polled every 0.1 s with psutil.
`nanogpt` is nanoGPT's openwebtext/prepare.py on the same text and the same tokenizer:
Hugging Face `datasets` loads the text, `map` tokenizes every example in `--num-proc` worker
processes, and the ids are written into one uint16 memmap, shard by shard. It needs
`pip install "qkv[prepare-bench]"` (datasets, psutil); qkv itself never imports datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

_SYLLABLES = "ka lo mi re tu sa ne vi po da el an or is ut ber gan tor wen sh th qu".split()  # noqa: SIM905


def _vocabulary(rng: np.random.Generator, size: int = 50_000) -> list[str]:
    words = set()
    while len(words) < size:
        n = int(rng.integers(1, 5))  # 23 + 23^2 + 23^3 + 23^4 possible words
        word = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), n))
        words.add(word.replace("e", "é") if rng.random() < 0.01 else word)
    ordered = sorted(words)
    rng.shuffle(ordered)  # a word's rank in the Zipf law is not its place in the alphabet
    return ordered


def generate(path: Path, megabytes: float, seed: int = 0) -> None:
    """Write about `megabytes` MB of text, a block of ~1 M words at a time."""
    rng = np.random.default_rng(seed)
    vocab = np.array(_vocabulary(rng), dtype=object)
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / ranks**1.1
    p /= p.sum()
    target, written = int(megabytes * 1e6), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            words = vocab[rng.choice(len(vocab), 1_000_000, p=p)]
            ends = np.cumsum(rng.integers(1, 21, 100_000))
            pairs = zip(ends[:-1], ends[1:], strict=True)
            lines = [" ".join(words[a:b]) for a, b in pairs if b <= len(words)]
            block = "\n".join(line.capitalize() + "." for line in lines) + "\n\n"
            out.write(block)
            written += len(block.encode("utf-8"))
    print(f"wrote {path}: {path.stat().st_size / 1e6:.1f} MB")


def measure(command: list[str], source: Path | None) -> dict:
    """Run `command`; wall time, MB/s of `source` and peak RSS of its process tree."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak, peak_anon, done = 0, 0, threading.Event()

    def poll() -> None:
        nonlocal peak, peak_anon
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                sizes = [_rss(p.pid) for p in tree]
                peak = max(peak, sum(total for total, _ in sizes))
                peak_anon = max(peak_anon, sum(anon for _, anon in sizes))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    code = process.wait()
    done.set()
    watcher.join()
    seconds = time.perf_counter() - start
    result = {"command": " ".join(command), "exit": code, "seconds": round(seconds, 1)}
    result["peak_rss_mb"] = round(peak / 1e6)  # mapped page cache of the shards included
    result["peak_anon_mb"] = round(peak_anon / 1e6)  # what the processes hold themselves
    if source is not None:
        size = sum(p.stat().st_size for p in _files(source))
        result |= {"source_mb": round(size / 1e6), "mb_per_s": round(size / 1e6 / seconds, 2)}
    print(json.dumps(result))
    return result


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) in bytes from /proc: RSS counts the memory-mapped file pages a
    process has touched, which the kernel can drop at will; RssAnon is its own memory."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone between listing and reading
        return 0, 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kib = [int(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "RssAnon")]
    return kib[0] * 1024, kib[1] * 1024


def _files(source: Path) -> list[Path]:
    return [p for p in source.rglob("*") if p.is_file()] if source.is_dir() else [source]


def nanogpt(source: Path, tokenizer_file: Path | None, out: Path, num_proc: int) -> None:
    """nanoGPT's prepare.py on `source`: datasets load + map(num_proc) + one memmap."""
    from datasets import load_dataset

    encode = _nanogpt_encoder(source, tokenizer_file)
    cache = out.parent / f"{out.name}.hf-cache"
    dataset = load_dataset(
        "text", data_files=str(source), keep_linebreaks=True, cache_dir=str(cache)
    )["train"]
    tokenized = dataset.map(
        lambda example: {"ids": encode(example["text"]), "len": None},
        remove_columns=["text"],
        desc="tokenizing",
        num_proc=num_proc,
    )
    tokenized = tokenized.map(lambda ex: {"len": len(ex["ids"])}, num_proc=num_proc)
    total = int(np.sum(tokenized["len"], dtype=np.uint64))
    ids = np.memmap(out, dtype=np.uint16, mode="w+", shape=(total,))
    index, shards = 0, 64
    for i in range(shards):  # nanoGPT writes the memmap in contiguous batches
        batch = tokenized.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
        chunk = np.concatenate(batch["ids"]) if len(batch) else np.empty(0, np.uint16)
        ids[index : index + len(chunk)] = chunk
        index += len(chunk)
    ids.flush()
    print(f"nanogpt way: {total:,} tokens in {out}")


def _nanogpt_encoder(source: Path, tokenizer_file: Path | None):
    """Per example, as nanoGPT encodes: a character table (shakespeare_char) or a BPE."""
    if tokenizer_file is None:
        from qkv.tokenizer.char import CharTokenizer

        vocab = sorted(set(source.read_text(encoding="utf-8")))  # nanoGPT: the whole text
        stoi = {c: i for i, c in enumerate(CharTokenizer(vocab).chars)}
        return lambda text: [stoi[c] for c in text]
    from tokenizers import Tokenizer

    bpe = Tokenizer.from_file(str(tokenizer_file))
    return lambda text: bpe.encode(text, add_special_tokens=False).ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    g = verbs.add_parser("generate")
    g.add_argument("path", type=Path)
    g.add_argument("--mb", type=float, default=1000)
    g.add_argument("--seed", type=int, default=0)
    m = verbs.add_parser("measure")
    m.add_argument("--source", type=Path, help="the corpus, for MB/s")
    m.add_argument("command", nargs=argparse.REMAINDER)
    n = verbs.add_parser("nanogpt")
    n.add_argument("source", type=Path)
    n.add_argument("--tokenizer", type=Path, help="a tokenizer.json (default: characters)")
    n.add_argument("--out", type=Path, default=Path("/tmp/nanogpt-way.bin"))
    n.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    if args.verb == "generate":
        generate(args.path, args.mb, args.seed)
    elif args.verb == "measure":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        return measure(command, args.source)["exit"]
    else:
        nanogpt(args.source, args.tokenizer, args.out, args.num_proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
