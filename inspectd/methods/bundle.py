"""Model bundles: a directory of files plus a manifest holding the sha256 of every file.

A bundle is written into a temporary sibling directory and renamed into place, so a crash
never leaves a half-written bundle; loading refuses any bundle whose files fail the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from inspectd.errors import BundleError

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write_bundle(out_dir: str | Path, files: dict[str, bytes], meta: dict) -> Path:
    """Write `files` (name -> content) and a manifest atomically to `out_dir` (replacing it)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        manifest = {"format": BUNDLE_FORMAT, **meta, "files": {n: sha256_file(tmp / n) for n in sorted(files)}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def add_files(bundle_dir: str | Path, files: dict[str, bytes], meta: dict | None = None) -> None:
    """Add or replace files in an existing, verified bundle and rewrite its manifest."""
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    current = {n: (bundle_dir / n).read_bytes() for n in manifest["files"] if n not in files}
    base_meta = {k: v for k, v in manifest.items() if k not in ("files", "format")}
    base_meta.update(meta or {})
    write_bundle(bundle_dir, {**current, **files}, base_meta)


def verify_bundle(bundle_dir: str | Path) -> dict:
    """Return the manifest if every listed file exists and matches its sha256; else BundleError."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: no model bundle here (directory missing)")
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError as exc:
        raise BundleError(f"{bundle_dir}: not a model bundle ({MANIFEST} missing)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{bundle_dir}/{MANIFEST}: unreadable manifest ({exc})") from exc
    for name, digest in files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: file {name} listed in the manifest is missing")
        if sha256_file(path) != digest:
            raise BundleError(f"{bundle_dir}: file {name} fails its sha256 check (modified or corrupt)")
    return manifest


def load_tensors(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BundleError(f"{path}: cannot load tensors ({exc})") from exc
