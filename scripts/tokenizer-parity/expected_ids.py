#!/usr/bin/env python3
"""Compute reference token ids for the parity corpus with OpenAI's `tiktoken`.

Reads  tests/data/tokenizer/corpus.jsonl
Writes tests/data/tokenizer/expected-cl100k_base.jsonl
       tests/data/tokenizer/expected-o200k_base.jsonl
one line per corpus document, in corpus order: {"id": "...", "ids": [...]}.
Every text is encoded with `Encoding.encode_ordinary`, so strings such as
"<|endoftext|>" are ordinary text, never special tokens.

Offline vocabulary
------------------
tiktoken downloads its BPE files from the internet on first use. This script
never lets it: it fills a private TIKTOKEN_CACHE_DIR with local copies of the
genuine vocabulary files, named the way `tiktoken.load.read_file_cached` looks
them up (sha1 of the blob URL), and replaces `tiktoken.load.read_file` with a
function that refuses to fetch anything. tiktoken's own sha256 check on the
cached file stays fully active; this script additionally checks the same
sha256 before copying, and checks that the URL and hash it relies on are the
ones written in the installed `tiktoken_ext/openai_public.py`. If any check
fails the script stops with an error: it never disables the hash check.

Local copies are taken (first hit wins) from
  $TIKTOKEN_VOCAB_DIR/<name>.tiktoken[.gz]                     (optional override)
  ~/.cargo/registry/src/*/tiktoken-rs-*/assets/<name>.tiktoken
  ~/.cargo/registry/src/*/bpe-openai-*/data/<name>.tiktoken.gz  (gunzipped)
and only used if their sha256 is the expected one.

How the committed files were produced
-------------------------------------
  date:     2026-11-27 (UTC)
  python:   3.11.7
  tiktoken: 0.14.0 (from PyPI)
  commands (from the repository root):
    python3 -m venv /tmp/ttvenv
    /tmp/ttvenv/bin/pip install tiktoken==0.14.0
    python3 scripts/tokenizer-parity/make_corpus.py
    /tmp/ttvenv/bin/python scripts/tokenizer-parity/expected_ids.py
  vocabulary sha256 (both verified, taken from tiktoken-rs 0.12.1 assets):
    cl100k_base.tiktoken 223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7
    o200k_base.tiktoken  446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import inspect
import json
import os
import platform
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(REPO, "tests", "data", "tokenizer")

TIKTOKEN_VERSION = "0.14.0"

# name -> (blob URL tiktoken loads, sha256 tiktoken expects)
VOCABS = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


def die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def candidates(name: str) -> list[str]:
    out = []
    override = os.environ.get("TIKTOKEN_VOCAB_DIR")
    if override:
        out += [os.path.join(override, f"{name}.tiktoken"), os.path.join(override, f"{name}.tiktoken.gz")]
    home = os.path.expanduser("~")
    reg = os.path.join(home, ".cargo", "registry", "src", "*")
    out += sorted(glob.glob(os.path.join(reg, "tiktoken-rs-*", "assets", f"{name}.tiktoken")))
    out += sorted(glob.glob(os.path.join(reg, "bpe-openai-*", "data", f"{name}.tiktoken.gz")))
    return [p for p in out if os.path.isfile(p)]


def local_vocab(name: str, expected_sha256: str) -> tuple[bytes, str]:
    tried = []
    for path in candidates(name):
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest == expected_sha256:
            return data, path
        tried.append(f"{path} (sha256 {digest})")
    die(
        f"no local copy of {name}.tiktoken with sha256 {expected_sha256}; tried: "
        + ("; ".join(tried) if tried else "nothing found")
    )
    raise AssertionError("unreachable")


def check_tiktoken_constants() -> None:
    """The URL/hash pairs above must be the ones the installed tiktoken uses."""
    from tiktoken_ext import openai_public

    src = inspect.getsource(openai_public)
    for name, (url, sha) in VOCABS.items():
        if url not in src or sha not in src:
            die(f"installed tiktoken_ext/openai_public.py does not reference {url} with sha256 {sha}")


def main() -> int:
    ap = argparse.ArgumentParser(description="compute tiktoken reference ids for the parity corpus")
    ap.add_argument("--corpus", default=os.path.join(DATA, "corpus.jsonl"))
    ap.add_argument("--out-dir", default=DATA)
    ap.add_argument("--allow-other-tiktoken", action="store_true", help="do not insist on tiktoken " + TIKTOKEN_VERSION)
    args = ap.parse_args()

    cache_dir = tempfile.mkdtemp(prefix="tiktoken-parity-cache-")
    os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir

    import tiktoken
    import tiktoken.load

    if tiktoken.__version__ != TIKTOKEN_VERSION and not args.allow_other_tiktoken:
        die(f"tiktoken {tiktoken.__version__} installed, expected {TIKTOKEN_VERSION} (or pass --allow-other-tiktoken)")
    check_tiktoken_constants()

    def no_network(blobpath: str) -> bytes:
        raise RuntimeError(
            f"offline: tiktoken tried to fetch {blobpath}; the cached copy is missing or failed tiktoken's sha256 check"
        )

    tiktoken.load.read_file = no_network  # the hash check in read_file_cached stays active

    for name, (url, sha) in VOCABS.items():
        data, src = local_vocab(name, sha)
        cache_path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        with open(cache_path, "wb") as f:
            f.write(data)
        print(f"{name}: sha256 {sha} verified, from {src}")

    with open(args.corpus, "rb") as f:
        raw = f.read()
    docs = [json.loads(line) for line in raw.split(b"\n") if line]
    print(f"corpus: {len(docs)} documents, {sum(len(d['text'].encode('utf-8')) for d in docs):,} bytes of text")

    for name, (url, sha) in VOCABS.items():
        enc = tiktoken.get_encoding(name)
        cache_path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        if not os.path.exists(cache_path):  # tiktoken deletes a cached file whose hash does not match
            die(f"tiktoken rejected the cached {name} vocabulary")
        out_path = os.path.join(args.out_dir, f"expected-{name}.jsonl")
        total = 0
        lines = []
        for d in docs:
            ids = enc.encode_ordinary(d["text"])
            if enc.decode_bytes(ids) != d["text"].encode("utf-8"):
                die(f"{name}: round trip failed for {d['id']}")
            total += len(ids)
            lines.append(json.dumps({"id": d["id"], "ids": ids}, separators=(",", ":")) + "\n")
        payload = "".join(lines).encode("utf-8")
        with open(out_path, "wb") as f:
            f.write(payload)
        print(f"{name}: {total:,} tokens, wrote {out_path} ({len(payload):,} bytes, sha256 {hashlib.sha256(payload).hexdigest()})")

    print(f"tiktoken {tiktoken.__version__}, python {platform.python_version()}")
    for p in os.listdir(cache_dir):
        os.remove(os.path.join(cache_dir, p))
    os.rmdir(cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
