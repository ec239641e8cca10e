# SPDX-License-Identifier: Apache-2.0
"""Turn a `--model` / `from_pretrained` argument into a local path: a path as is, or a Hugging
Face Hub repo id found in the local Hugging Face cache.

    resolve_model("out/tiny")                          # an existing local path always wins
    resolve_model("HuggingFaceTB/SmolLM2-135M")        # <cache>/models--HuggingFaceTB--SmolLM2-135M/snapshots/<sha>
    resolve_model("HuggingFaceTB/SmolLM2-135M@v1.0")   # a branch, tag or commit of it
    resolve_model("org/Model-GGUF")                    # the snapshot's only .gguf file
    resolve_model("org/Model-GGUF/model-Q4_1.gguf")    # one named .gguf file of the snapshot

Only the cache on disk is read (`huggingface_hub.snapshot_download(local_files_only=True)`, the
library's own lookup of refs/ and snapshots/), never the network: resolution works offline and
does the same with or without HF_HUB_OFFLINE. Fetching a model is `huggingface-cli download`'s
job (`hf download` in huggingface_hub >= 1.0), which the error for a missing id says.

This module imports neither torch nor, until a repo id must be looked up, huggingface_hub, so the
CLI can check `--model` before it loads anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

# One part of a repo id ("org" or "name"), by huggingface_hub's validate_repo_id: at most 96 of
# [A-Za-z0-9_.-], starting and ending with a word character, no "--" or "..", no ".git" end.
_ID_PART = re.compile(r"\w(?:[\w.-]{0,94}\w)?", re.ASCII)


def _valid_id_part(part: str) -> bool:
    return bool(_ID_PART.fullmatch(part)) and "--" not in part and ".." not in part and not part.endswith(".git")


@dataclass(frozen=True)
class RepoSpec:
    """`ORG/NAME[@REVISION][/path/in/repo.gguf]` split into its parts."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now.

    Same precedence as huggingface_hub.constants (HF_HUB_CACHE, then the legacy
    HUGGINGFACE_HUB_CACHE, then $HF_HOME/hub, then $XDG_CACHE_HOME/huggingface/hub), but read at
    call time: the library's constants are frozen when it is first imported, so a caller (or a
    test) that sets HF_HUB_CACHE later would otherwise be ignored."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def parse_repo_spec(spec: str) -> RepoSpec | None:
    """The repo id, revision and file named by `spec`, or None when `spec` can only be a path.

    A path is anything absolute or starting with `.` or `~`, `ORG/file.gguf`, and anything of
    three or more parts that does not end in `.gguf` (`data/models/tiny`)."""
    if spec.startswith(("/", ".", "~")) or "\\" in spec:
        return None
    parts = spec.split("/")
    if len(parts) < 2:
        return None
    org, name_rev, rest = parts[0], parts[1], parts[2:]
    if rest and not rest[-1].lower().endswith(".gguf"):
        return None
    if not rest and name_rev.lower().endswith(".gguf"):
        return None
    name, at, revision = name_rev.partition("@")
    if not (_valid_id_part(org) and _valid_id_part(name)) or (at and not revision):
        return None
    if any(not p or p in (".", "..") for p in rest):
        return None
    return RepoSpec(f"{org}/{name}", revision or None, "/".join(rest) or None)


def _fetch_hint(repo: RepoSpec) -> str:
    args = repo.repo_id + (f" {repo.filename}" if repo.filename else "") \
        + (f" --revision {repo.revision}" if repo.revision else "")
    # huggingface_hub's own truthy spellings of HF_HUB_OFFLINE: the download needs it off.
    offline_set = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    offline = " with HF_HUB_OFFLINE unset" if offline_set else ""
    return f"download it with `huggingface-cli download {args}` (or `hf download {args}`){offline}"


def _cached_snapshot(spec: str, repo: RepoSpec) -> Path | None:
    """The snapshot folder of `repo` in the local cache; None when huggingface_hub says the id is
    not a valid repo id (then `spec` was meant as a path)."""
    cache = hub_cache_dir()
    # A repo never downloaded has no folder: say so without importing huggingface_hub (about a
    # second on a busy 2-core machine), so a mistyped id costs nothing.
    if not (cache / ("models--" + repo.repo_id.replace("/", "--"))).is_dir():
        raise CheckpointError(_missing(spec, repo, cache))
    from huggingface_hub import snapshot_download  # noqa: PLC0415 - only when a repo id is resolved
    from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError  # noqa: PLC0415

    try:
        folder = snapshot_download(repo.repo_id, revision=repo.revision, cache_dir=cache, local_files_only=True)
    except HFValidationError:
        return None
    except LocalEntryNotFoundError as e:
        # huggingface_hub >= 2 raises IncompleteSnapshotError when the snapshot lacks files of
        # the repo's cached tree listing. Downloading one .gguf of a repo of many is the normal
        # way to get a GGUF, so use what is on disk: _pick and the loader say what is missing.
        partial = getattr(e, "snapshot_path", None)
        if partial:
            return Path(partial)
        raise CheckpointError(_missing(spec, repo, cache)) from None
    return Path(folder)


def _missing(spec: str, repo: RepoSpec, cache: Path) -> str:
    return f"{spec}: no such file or folder, nor a model in the local Hugging Face cache ({cache}); {_fetch_hint(repo)}"


def _pick(spec: str, repo: RepoSpec, snapshot: Path) -> Path:
    """What to load from a snapshot: the named file, the HF folder, or its only GGUF file."""
    ggufs = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf"))
    if repo.filename is not None:
        target = snapshot / repo.filename
        if target.is_file():
            return target
        have = f"cached GGUF files: {', '.join(ggufs)}; " if ggufs else ""
        raise CheckpointError(f"{spec}: {repo.filename} is not in the cached snapshot of {repo.repo_id} "
                              f"({snapshot}); {have}{_fetch_hint(repo)}")
    if (snapshot / "config.json").is_file() and any(snapshot.glob("*.safetensors")):
        return snapshot
    if len(ggufs) == 1:
        return snapshot / ggufs[0]
    if ggufs:
        names = ", ".join(f"{repo.repo_id}/{g}" for g in ggufs)
        raise CheckpointError(f"{spec}: the cached snapshot holds {len(ggufs)} GGUF files; name one: {names}")
    if (snapshot / "config.json").is_file():
        return snapshot  # an HF folder without safetensors: the loader says what is missing
    raise CheckpointError(f"{spec}: the cached snapshot ({snapshot}) holds neither an HF model folder "
                          "(config.json + safetensors) nor a .gguf file")


def resolve_model(spec: str | os.PathLike[str]) -> Path:
    """The local file or folder that `spec` names: an existing path as is, else a repo id
    (`ORG/NAME[@REVISION][/FILE.gguf]`) looked up in the local Hugging Face cache.

    Raises CheckpointError (one line) when neither exists; for a repo id the line names the
    cache folder and the command that downloads it."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        return path
    repo = parse_repo_spec(text)
    snapshot = None if repo is None else _cached_snapshot(text, repo)
    if repo is None or snapshot is None:
        raise CheckpointError(f"{text}: no such file or folder")
    return _pick(text, repo, snapshot)
