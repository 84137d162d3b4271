"""Build fleet-agent.pyz: a zipapp of exactly the modules the agent imports (fleet.agent and the stdlib-only
fleet modules it runs, plus functions/fleet_contract.py), main = fleet.agent.__main__.

    python3 -m fleet.agent.build OUT_DIR   # prints the path of fleet-agent.pyz
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

from fleet.paths import CHECKOUT

NAME = "fleet-agent.pyz"
FIXED_TIME = 946684800  # 2000-01-01, for reproducible archives
_PROBE = (
    "import sys, json; sys.argv = ['fleet-agent']; import fleet.agent.__main__, fleet.agent.apis, "
    "fleet.agent.http; print(json.dumps(sorted(n for n, m in sys.modules.items() "
    "if getattr(m, '__file__', None) and (n == 'fleet' or n.startswith(('fleet.', 'functions'))))))"
)


def modules(root: Path = CHECKOUT) -> list[str]:
    """The fleet modules the agent loads (asked of a fresh interpreter: no guessing, no extras)."""
    import json

    r = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(root)!r}); {_PROBE}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if r.returncode != 0:
        raise SystemExit(f"the agent does not import with the standard library alone:\n{r.stderr[-2000:]}")
    return [str(m) for m in json.loads(r.stdout)]


def _source(root: Path, module: str) -> tuple[Path, str]:
    parts = module.split(".")
    package = root.joinpath(*parts) / "__init__.py"
    if package.exists():
        return package, "/".join(parts) + "/__init__.py"
    return root.joinpath(*parts[:-1]) / f"{parts[-1]}.py", "/".join(parts) + ".py"


def build(out_dir: Path, root: Path = CHECKOUT) -> Path:
    """Write OUT_DIR/fleet-agent.pyz (deterministic content for the same sources)."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "app"
        for module in modules(root):
            src, rel = _source(root, module)
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
        (stage / "__main__.py").write_text(
            "import sys\nfrom fleet.agent.__main__ import main\nsys.exit(main())\n", encoding="utf-8"
        )
        for path in stage.rglob("*"):  # fixed times: the same sources give the same archive (and name)
            os.utime(path, (FIXED_TIME, FIXED_TIME))
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / NAME
        zipapp.create_archive(stage, target, interpreter="/usr/bin/env python3")
        os.chmod(target, 0o755)  # noqa: S103 (a program without secrets, run by root on the VM)
    return target


def build_bytes(root: Path = CHECKOUT) -> bytes:
    """The zipapp's bytes (built in a scratch directory): what `fab agent.publish` and the local fleet
    upload to the release store."""
    with tempfile.TemporaryDirectory(prefix="fleet-agent-") as tmp:
        return build(Path(tmp), root).read_bytes()


def store_name(path: Path) -> str:
    """The object name the store keeps it under: agent/fleet-agent-<sha256[:16]>.pyz (contract)."""
    return f"agent/fleet-agent-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}.pyz"


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
