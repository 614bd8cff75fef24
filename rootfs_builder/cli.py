"""Command line: `python -m rootfs_builder build|import|show`. The only reader of the environment."""

import argparse
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Mapping, Sequence

from .build import Outcome, build_recipe, import_tarball
from .errors import RootfsError
from .mmdebstrap import read_pip_access
from .recipe import list_recipes, load_recipe
from .store import FIX, list_rootfs

DEFAULT_ROOTFS_DIR = pathlib.Path("/var/lib/gvisor-sandbox/rootfs")
DEFAULT_RECIPES_DIR = pathlib.Path(__file__).resolve().parent / "recipes"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Clean up (stop mmdebstrap, remove work) as on ^C, while this runs only: a caller in the
    # same process (the test suite) keeps its own handler afterwards.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args, os.environ if environ is None else environ)
    except (RootfsError, OSError) as exc:
        print(f"rootfs_builder: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rootfs_builder: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_build(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    names = args.language or list_recipes(args.recipes_dir)
    recipes = [load_recipe(args.recipes_dir, name) for name in names]  # all valid before building
    if not recipes:
        raise RootfsError(f"build: no recipes in {args.recipes_dir}")
    _require_root("build")
    pip = read_pip_access(environ)
    for recipe in recipes:
        try:
            outcome = build_recipe(recipe, args.rootfs_dir, pip=pip, force=args.force,
                                   keep_tarball=args.keep_tarball, stream=sys.stderr.isatty())
        except RootfsError as exc:
            raise type(exc)(f"build {recipe.name}: {exc}") from exc
        _report(outcome)
    return 0


def run_import(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    interpreter = args.interpreter or load_recipe(args.recipes_dir, args.language).interpreter
    _require_root("import")
    try:
        outcome = import_tarball(args.tarball, args.rootfs_dir, name=args.language, interpreter=interpreter)
    except RootfsError as exc:
        raise type(exc)(f"import {args.language}: {exc}") from exc
    _report(outcome)
    return 0


def run_show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    installed = list_rootfs(args.rootfs_dir)
    if not installed:
        print(f"no rootfs in {args.rootfs_dir}; {FIX}")
    for rootfs in installed:
        manifest = rootfs.manifest
        interpreter = manifest.get("interpreter", {})
        source = manifest.get("source", {})
        origin = (f"import of {source.get('tarball')}" if source.get("kind") == "import"
                  else f"{source.get('kind')} {source.get('suite')}")
        print(f"{rootfs.name}: {manifest.get('inputs_hash', '')[:16]}  {interpreter.get('version')} "
              f"({interpreter.get('path')})  {origin}  {len(manifest.get('packages', {}))} packages  "
              f"built {manifest.get('built_at')}\n  {rootfs.path}")
    return 0


def _report(outcome: Outcome) -> None:
    if outcome.action == "up to date":
        print(f"{outcome.name}: up to date (inputs {outcome.inputs_hash[:16]})")
    else:
        print(f"{outcome.name}: {outcome.action} in {outcome.seconds:.0f} s -> {outcome.path}")
    sys.stdout.flush()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise RootfsError(f"{command}: run as root (mmdebstrap, chroot and device nodes need it)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rootfs_builder",
                                     description="Build read-only root filesystems for the sandbox.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, run, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        sub.add_argument("--rootfs-dir", type=pathlib.Path, default=DEFAULT_ROOTFS_DIR,
                         help=f"where trees are installed (default {DEFAULT_ROOTFS_DIR})")
        return sub

    build = add("build", run_build, "build every recipe, or the named ones, with mmdebstrap")
    build.add_argument("--language", action="append", metavar="NAME", help="recipe to build (repeatable)")
    build.add_argument("--recipes-dir", type=pathlib.Path, default=DEFAULT_RECIPES_DIR)
    build.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    build.add_argument("--keep-tarball", action="store_true",
                       help="keep mmdebstrap's tarball next to the tree as rootfs.tar")

    imp = add("import", run_import, "install a rootfs tarball (`docker export` format) for a language")
    imp.add_argument("--language", required=True, metavar="NAME")
    imp.add_argument("--tarball", required=True, type=pathlib.Path, help="plain or compressed tar")
    imp.add_argument("--interpreter", metavar="CMD", help="command the tarball must hold "
                     "(default: the interpreter of the language's recipe)")
    imp.add_argument("--recipes-dir", type=pathlib.Path, default=DEFAULT_RECIPES_DIR)

    add("show", run_show, "print the manifest summary of each installed tree")
    return parser
