"""pytest fixtures: the `lesion` CLI binary and fresh random Hugging Face checkpoints."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cli():
    path = Path(os.environ.get("LESION_CLI", ROOT / "build" / "client" / "cpp" / "lesion"))
    if not path.exists():
        pytest.skip(f"lesion CLI not built at {path} (set LESION_CLI)")

    def run(*args, check=True, stdin=None):
        proc = subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, input=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(f"lesion {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


@pytest.fixture
def write_ids(tmp_path):
    def write(ids, name="ids.json"):
        path = tmp_path / name
        path.write_text(json.dumps(ids))
        return path
    return write
