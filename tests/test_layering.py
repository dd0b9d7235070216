"""The layering of the package, read from its imports: cores ← data ← models / regulators ←
training ← entry points ← experiments; nothing imports upward (docs/design.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "homeo_jax"
# What each floor may import from the package (besides itself).
ALLOWED = {
  "cores": set(),
  "data": {"cores"},
  "models": {"cores", "data"},
  "regulators": {"cores"},
  "training": {"cores", "data", "models", "regulators"},
}


def package_imports(path: Path) -> set[str]:
  """The ``homeo_jax.<floor>`` names ``path`` imports anywhere (functions included)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "experiments":
        found.add("experiments")
      elif parts[0] == "homeo_jax" and len(parts) > 1:
        found.add(parts[1])
  return found


def floor_of(path: Path) -> str:
  parts = path.relative_to(PACKAGE).parts
  return parts[0] if len(parts) > 1 else "entry"


@pytest.mark.parametrize(
  "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_imports_only_go_down(path):
  floor = floor_of(path)
  imported = package_imports(path) - {floor}
  assert "experiments" not in imported, f"{path.name} imports the experiments"
  if floor in ALLOWED:
    # A package's __init__ may name its own modules; anything else must be on a floor below.
    modules = {p.stem for p in (PACKAGE / floor).glob("*.py")}
    upward = sorted(imported - ALLOWED[floor] - modules - {"__init__"})
    assert not upward, f"{path.relative_to(ROOT)} ({floor}) imports {upward}"


def test_the_generic_training_layer_names_no_regulator():
  """training/ reaches regulators only through their shared base and registry."""
  for path in sorted((PACKAGE / "training").glob("*.py")):
    text = path.read_text()
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.ImportFrom) and node.module and "regulators" in node.module:
        named = {node.module.split(".")[-1], *(a.name for a in node.names)}
        assert named <= {"regulators", "base", "registry"}, (path.name, named)
