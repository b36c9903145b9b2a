"""Imports flow one way (../shared/STYLE.md): policy does no I/O; nothing imports cli, web, smtp."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules() -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE.parent)).removesuffix(".py").replace("/", "."): imports_of(p)
            for p in PACKAGE.rglob("*.py")}


def _within(module: str, packages: tuple[str, ...]) -> bool:
    """`module` is one of `packages` or inside one (gateway.clients is not in gateway.cli)."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_nothing_imports_cli_web_or_smtp_except_the_composition_root():
    allowed_importers = ("gateway.cli", "gateway.runtime", "gateway.__main__")
    for module, imports in modules().items():
        for room in ("gateway.cli", "gateway.web", "gateway.smtp"):
            if _within(module, (room, *allowed_importers)):
                continue
            offending = [i for i in imports if _within(i, (room,))]
            # flow may name SMTP reply texts: they are the outcome vocabulary, not the server
            offending = [i for i in offending if not (
                module in ("gateway.flow", "gateway.compose") and i == "gateway.smtp.replies")]
            assert not offending, f"{module} imports {offending}"


def test_policy_and_transform_do_no_io():
    io_modules = ("asyncio", "aiosqlite", "sqlite3", "socket", "aiosmtplib", "aiosmtpd",
                  "gateway.store", "gateway.delivery", "httpx", "subprocess")
    for module, imports in modules().items():
        if module.startswith(("gateway.policy", "gateway.transform")):
            bad = [i for i in imports if i.startswith(io_modules)]
            assert not bad, f"{module} imports {bad}"


def test_sql_lives_in_the_store_only():
    for path in PACKAGE.rglob("*.py"):
        if "store" in path.parts:
            continue
        text = path.read_text()
        for keyword in ("SELECT ", "INSERT INTO", "UPDATE deliveries", "DELETE FROM"):
            assert keyword not in text, f"{path} contains SQL ({keyword.strip()})"
