"""The registered methods as their source declares them, read without importing them (no torch):
the workflow's Snakemake process and `config.resolve` need each method's budget rule and option
names and types. A test holds this reading equal to the live registry."""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prunebench.errors import PrunebenchError
from prunebench.plan.values import check_allowed, coerce

# Packages whose every module is imported by the registry (training/registry.py) and read here:
# a method is one file in one. They are the repository's top-level methods/ and baselines/
# folders, installed inside the engine's package so that no file of a user's (a methods.py in
# the current folder) can stand in for them.
PLUGIN_PACKAGES = ("prunebench.methods", "prunebench.baselines")


@dataclass(frozen=True)
class MethodSpec:
    """What the grid needs to know of a registered method, read from its source."""

    name: str
    budgeted: bool
    budget_option: str
    options: tuple[tuple[str, str], ...]  # (option name, type annotation), in field order
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (option name, allowed values)
    bounds: tuple[tuple[str, str], ...] = ()  # (option name, valid range as interval text)

    def typed_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        """`options` with each value as its field's type; an unknown name is an error."""
        names = dict(self.options)
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise PrunebenchError(
                f"{where}: unknown option(s) {', '.join(unknown)} of method {self.name}; "
                f"allowed: {', '.join(sorted(names)) or '(none)'}")
        typed = {k: coerce(v, names[k], f"{where}.{k}") for k, v in options.items()}
        choices, bounds = dict(self.choices), dict(self.bounds)
        for name, value in typed.items():
            check_allowed(value, f"{where}.{name}", choices.get(name, ()), bounds.get(name, ""))
        return typed

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


class _Classes:
    """The top-level classes of the plugin modules; a name is looked up in the module that uses
    it first (two modules may each define an `Hparams`), then in any module."""

    def __init__(self, modules: list[list[ast.ClassDef]]) -> None:
        self.modules = [{n.name: n for n in nodes} for nodes in modules]
        self.anywhere = {name: n for local in self.modules for name, n in local.items()}
        self.home = {id(n): local for local in self.modules for n in local.values()}

    def all(self) -> list[ast.ClassDef]:
        return [n for local in self.modules for n in local.values()]

    def find(self, name: str, user: ast.ClassDef) -> ast.ClassDef | None:
        return self.home[id(user)].get(name) or self.anywhere.get(name)

    def attrs(self, node: ast.ClassDef) -> dict[str, Any]:
        """Constant and class-name assignments of a class body, inherited from scanned bases."""
        out: dict[str, Any] = {}
        for base in node.bases:
            found = self.find(base.id, node) if isinstance(base, ast.Name) else None
            if found is not None:
                out.update(self.attrs(found))
        for stmt in node.body:
            target, value = None, None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, value = stmt.targets[0], stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                target, value = stmt.target, stmt.value
            if isinstance(target, ast.Name):
                if isinstance(value, ast.Constant):
                    out[target.id] = value.value
                elif isinstance(value, ast.Name):
                    out[target.id] = self.find(value.id, node)
        return out

    def declared(self, node: ast.ClassDef | None, keyword: str) -> dict[str, Any]:
        """The literal `keyword=...` (choices, bounds) of each `option(...)` field of a class
        and its bases."""
        if node is None:
            return {}
        out: dict[str, Any] = {}
        for base in node.bases:
            if isinstance(base, ast.Name):
                out.update(self.declared(self.find(base.id, node), keyword))
        for stmt in node.body:
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(stmt.value, ast.Call)):
                for kw in stmt.value.keywords:
                    if kw.arg == keyword:
                        out[stmt.target.id] = ast.literal_eval(kw.value)
        return out

    def fields(self, node: ast.ClassDef | None) -> dict[str, str]:
        """Dataclass fields (name -> annotation text) of a class and its scanned bases."""
        if node is None:
            return {}
        out: dict[str, str] = {}
        for base in node.bases:
            if isinstance(base, ast.Name):
                out.update(self.fields(self.find(base.id, node)))
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                annotation = ast.unparse(stmt.annotation)
                if not annotation.startswith("ClassVar"):
                    out[stmt.target.id] = annotation
        return out


def _plugin_files() -> list[Path]:
    """The modules of the plugin packages the registry imports (found as Python finds them)."""
    files = []
    for package in PLUGIN_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise PrunebenchError(f"method package {package!r} not found on the Python path")
        for folder in spec.submodule_search_locations:
            files += sorted(Path(folder).glob("*.py"))
    return files


@lru_cache(maxsize=1)
def method_catalogue() -> dict[str, MethodSpec]:
    """Every method registered in the plugin packages, read from source (no import)."""
    classes = _Classes([[n for n in ast.parse(path.read_text(), str(path)).body
                         if isinstance(n, ast.ClassDef)] for path in _plugin_files()])
    specs = {}
    for node in classes.all():
        name = _registered_name(node)
        if name:
            attrs = classes.attrs(node)
            hparams = attrs.get("hparams_cls")
            fields = classes.fields(hparams)
            specs[name] = MethodSpec(name, bool(attrs.get("budgeted", True)),
                                     str(attrs.get("budget_option", "")), tuple(fields.items()),
                                     tuple((k, tuple(v)) for k, v
                                           in classes.declared(hparams, "choices").items()),
                                     tuple(classes.declared(hparams, "bounds").items()))
    return dict(sorted(specs.items()))
