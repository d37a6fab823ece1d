"""The registered methods as their source declares them, read without importing them (no torch):
the workflow's Snakemake process and `config.resolve` need each method's budget rule and option
names and types. A test holds this reading equal to the live registry."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prunebench.errors import PrunebenchError
from prunebench.registry import PLUGIN_PACKAGES
from prunebench.values import coerce

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class MethodSpec:
    """What the grid needs to know of a registered method, read from its source."""

    name: str
    budgeted: bool
    budget_option: str
    options: tuple[tuple[str, str], ...]  # (option name, type annotation), in field order

    def typed_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        """`options` with each value as its field's type; an unknown name is an error."""
        names = dict(self.options)
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise PrunebenchError(
                f"{where}: unknown option(s) {', '.join(unknown)} of method {self.name}; "
                f"allowed: {', '.join(sorted(names)) or '(none)'}")
        return {k: coerce(v, names[k], f"{where}.{k}") for k, v in options.items()}

    def is_budgeted(self, options: dict[str, Any], where: str) -> bool:
        """The rule of PruningMethod.is_budgeted, on config values."""
        if self.budgeted or not self.budget_option:
            return self.budgeted
        return bool(coerce(options.get(self.budget_option, False), "bool",
                           f"{where}.{self.budget_option}"))


def _registered_name(node: ast.ClassDef) -> str:
    for deco in node.decorator_list:
        if (isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "register_method"
                and deco.args and isinstance(deco.args[0], ast.Constant)):
            return str(deco.args[0].value)
    return ""


def _class_attrs(node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> dict[str, Any]:
    """Constant and class-name assignments of a class body, inherited from bases in `classes`."""
    attrs: dict[str, Any] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            attrs.update(_class_attrs(classes[base.id], classes))
    for stmt in node.body:
        target, value = None, None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        if isinstance(target, ast.Name):
            if isinstance(value, ast.Constant):
                attrs[target.id] = value.value
            elif isinstance(value, ast.Name):
                attrs[target.id] = value
    return attrs


def _fields(node: ast.ClassDef | None, classes: dict[str, ast.ClassDef]
            ) -> dict[str, str]:
    """Dataclass fields (name -> annotation text) of an hparams class and its scanned bases."""
    if node is None:
        return {}
    out: dict[str, str] = {}
    for base in node.bases:
        if isinstance(base, ast.Name):
            out.update(_fields(classes.get(base.id), classes))
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            annotation = ast.unparse(stmt.annotation)
            if not annotation.startswith("ClassVar"):
                out[stmt.target.id] = annotation
    return out


@lru_cache(maxsize=4)
def method_catalogue(root: Path = REPO) -> dict[str, MethodSpec]:
    """Every method registered in the plugin packages, read from source (no import)."""
    classes: dict[str, ast.ClassDef] = {}
    for package in PLUGIN_PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            classes.update({n.name: n for n in tree.body if isinstance(n, ast.ClassDef)})
    specs = {}
    for node in classes.values():
        name = _registered_name(node)
        if not name:
            continue
        attrs = _class_attrs(node, classes)
        hparams = attrs.get("hparams_cls")
        fields = _fields(classes.get(hparams.id) if isinstance(hparams, ast.Name) else None,
                         classes)
        specs[name] = MethodSpec(name, bool(attrs.get("budgeted", True)),
                                 str(attrs.get("budget_option", "")), tuple(fields.items()))
    return dict(sorted(specs.items()))
