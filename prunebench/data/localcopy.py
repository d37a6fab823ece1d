"""Local copies of the downloadable datasets (cifar10, cifar100, tinyimagenet): an image tree, or
an archive of one, read instead of the official archive, checked against the dataset's official
classes and image size, and named with its checksum in the manifest.

What `--root PATH` means for these datasets, decided in this order:
  1. a folder holding `train/<class>/` and `test/<class>/` (at its top or one folder down), or
     for tinyimagenet the official layout (`wnids.txt`, `train/<wnid>/images/`, `val/`):
     a local tree;
  2. a file not named as the official archive (a .tar, .tar.gz, .tgz or .zip of such a tree):
     a local archive;
  3. anything else (a folder holding the official archive, a folder with neither, a path not
     yet there, the official archive's own path): where the official archive is kept, downloaded
     there when missing and checked against its pinned checksum.
A folder holding both the official archive and a tree is refused as ambiguous.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunebench.data.archives import read_files
from prunebench.data.datasets import (
    IMAGE_SUFFIXES,
    RawDataset,
    archive_tree_base,
    read_archive_tree,
    read_folder_tree,
    tree_base,
    tree_sha256,
)
from prunebench.errors import PrunebenchError
from prunebench.fileio import sha256_file

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")

# The official label names, in label order (both lists are alphabetical, as class folders sort).
OFFICIAL_CLASSES: dict[str, list[str]] = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
    "cifar100": """
        apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
        butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
        crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house
        kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
        mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
        plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
        skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
        telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree
        wolf woman worm""".split(),
}
# TinyImageNet's 200 classes are WordNet ids; the list is not pinned here, only its form.
TINY_CLASSES = 200
_WNID = re.compile(r"n\d{8}")
IMAGE_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "tinyimagenet": (3, 64, 64)}


@dataclass
class Files:
    """Files of a folder or of an archive read in memory, by relative path (`a/b.jpg`), in the
    form the official-layout readers take (as `archives.SafeZip`)."""

    archive: Path
    names: dict[str, Any]
    read: Callable[[str], bytes]


# Reads a copy in the official archive's own layout (tinyimagenet's wnids.txt tree); None when
# `files` is not in that layout.
LayoutReader = Callable[[Files], RawDataset | None]


def local_copy(name: str, root: str, official_archive: str) -> Path | None:
    """The local copy `root` names for dataset `name`, or None when `root` is where the official
    archive `official_archive` is kept (rules in this module's docstring)."""
    if not root:
        return None
    path = Path(root)
    if path.is_dir():
        tree = _folder_layout(name, path)
        if tree is not None and (path / official_archive).exists():
            raise PrunebenchError(
                f"--root {path} holds both the official {official_archive} and an image tree "
                f"({tree}); it is ambiguous: pass the tree's folder, or a folder holding only "
                "the official archive")
        return path if tree is not None else None
    if path.is_file():
        return None if path.name == official_archive else path
    if path.name.lower().endswith(ARCHIVE_SUFFIXES) and path.name != official_archive:
        raise PrunebenchError(
            f"--root {path} does not exist; for {name} give an existing image tree or archive "
            f"of one, or the folder where the official {official_archive} is kept")
    return None


def _folder_layout(name: str, folder: Path) -> Path | None:
    """The folder of a tree inside `folder` (official tinyimagenet layout first), or None."""
    if name == "tinyimagenet":
        for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
            if (candidate / "wnids.txt").is_file():
                return candidate
    return tree_base(folder)


def read_local_copy(name: str, path: Path, layout: LayoutReader | None = None) -> RawDataset:
    """Dataset `name` from the tree or archive at `path`, checked against its official classes
    and image size, with its provenance (origin "local")."""
    if path.is_dir():
        base = _folder_layout(name, path)
        if base is None:
            raise PrunebenchError(f"folder {path} holds no train/ and test/ folders (at its top or "
                                  "one folder down)")
        raw = None
        if layout is not None:
            files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
            raw = layout(Files(path, files, lambda n: files[n].read_bytes()))
        if raw is None:
            raw = read_folder_tree(base, mode="RGB")
        raw.source, raw.source_sha256 = f"local folder {path.name}", tree_sha256(path)
    else:
        suffixes = (*IMAGE_SUFFIXES, ".txt") if layout else IMAGE_SUFFIXES
        read = read_files(path, lambda n: n.lower().endswith(suffixes))
        raw = layout(Files(path, read[0], read[0].__getitem__)) if layout else None
        if raw is None:
            if archive_tree_base(read[1]) is None:
                raise PrunebenchError(
                    f"archive {path} holds no train/ and test/ folders (at its top or one folder "
                    f"down){' nor wnids.txt' if layout else ''}, so it is no local copy of {name}; "
                    "an official archive is recognised only under its official name (see "
                    "`python -m prunebench prepare --help`, --root)")
            raw = read_archive_tree(path, mode="RGB", read=read)
        raw.source, raw.source_sha256 = f"local archive {path.name}", sha256_file(path)
    raw.origin = "local"
    check_official(name, raw, path)
    return raw


def check_official(name: str, raw: RawDataset, where: Path) -> None:
    """Refuse a copy whose classes or image size are not the dataset's own."""
    official = OFFICIAL_CLASSES.get(name)
    if official is not None and raw.classes != official:
        missing = [c for c in official if c not in raw.classes]
        extra = [c for c in raw.classes if c not in official]
        raise PrunebenchError(
            f"{where} is not a copy of {name}: its class folders are not {name}'s official "
            f"classes (missing {_some(missing)}, unexpected {_some(extra)}); a local {name} "
            f"needs train/<class>/ and test/<class>/ for each of: {_some(official, 10)}")
    if name == "tinyimagenet":
        odd = [c for c in raw.classes if not _WNID.fullmatch(c)]
        if len(raw.classes) != TINY_CLASSES or odd:
            raise PrunebenchError(
                f"{where} is not a copy of tinyimagenet: it has {len(raw.classes)} classes "
                f"(expected {TINY_CLASSES} WordNet ids such as n01443537)"
                + (f", and {_some(odd)} are not WordNet ids" if odd else ""))
    shape = tuple(raw.train_x.shape[1:])
    if shape != IMAGE_SHAPES[name]:
        raise PrunebenchError(
            f"{where} is not a copy of {name}: its images are {'x'.join(map(str, shape))} "
            f"(CxHxW), {name}'s are {'x'.join(map(str, IMAGE_SHAPES[name]))}; resized copies "
            "are refused")


def _some(items: list[str], limit: int = 5) -> str:
    """A short list for a message: the first `limit` items and how many more."""
    if not items:
        return "none"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more
