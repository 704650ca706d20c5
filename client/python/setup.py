"""Build hook: generate the lesion.v1 protobuf / gRPC modules from the repository's proto/ directory.

`pip install ./client/python` builds in place (pip >= 21.3), so the schemas are found relative to this
file at ../../proto (override with $LESION_PROTO_DIR). grpc_tools.protoc writes into a temporary
directory; the modules are then copied into lesion/_proto/lesion/v1/ of the build (the source tree for
editable installs) with their cross-imports rewritten to relative ones (`from . import
experiment_pb2`), so they never depend on a top-level `lesion.v1` or `proto` package on sys.path and
cannot clash with another copy of the same stubs.

The include root follows the .proto files themselves: if they import "proto/lesion/v1/x.proto" the
root is the repository (what the C++ build uses), if they import "lesion/v1/x.proto" it is proto/.
Either way the descriptors carry the same file names as the server's, which gRPC reflection shows.
"""

import os
import re
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).resolve().parent
PROTO_DIR = Path(os.environ.get("LESION_PROTO_DIR", HERE.parent.parent / "proto")).resolve()
PROTOS = ("experiment", "result", "service")
PACKAGE_DIR = Path("lesion") / "_proto" / "lesion" / "v1"
_IMPORT = re.compile(r'^import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.M)
_PY_IMPORT = re.compile(r"^from (?:proto\.)?lesion\.v1 import ", re.M)


def _include_root():
    """(include dir, the prefix of the .proto file names under it)."""
    imports = []
    for name in PROTOS:
        imports += _IMPORT.findall((PROTO_DIR / "lesion" / "v1" / f"{name}.proto").read_text())
    own = [i for i in imports if not i.startswith("google/")]
    if any(i.startswith("proto/") for i in own):
        return PROTO_DIR.parent, "proto/"
    return PROTO_DIR, ""


def generate(target):
    """Write lesion/v1/*_pb2.py and *_pb2_grpc.py into `target` (the lesion/_proto/lesion/v1 dir)."""
    missing = [n for n in PROTOS if not (PROTO_DIR / "lesion" / "v1" / f"{n}.proto").is_file()]
    if missing:
        have = sorted(Path(target).glob("*_pb2.py"))
        if have and len(have) >= len(PROTOS):
            print(f"lesion: {PROTO_DIR} missing, keeping the generated stubs in {target}")
            return
        raise SystemExit(
            f"lesion: cannot generate the gRPC stubs: {', '.join(m + '.proto' for m in missing)} not found "
            f"in {PROTO_DIR / 'lesion' / 'v1'}. Build the package from the lesion repository "
            f"(pip install ./client/python), or point $LESION_PROTO_DIR at its proto/ directory."
        )
    import importlib.resources

    from grpc_tools import protoc  # a build requirement (pyproject.toml [build-system])

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    include, prefix = _include_root()
    files = [f"{prefix}lesion/v1/{n}.proto" for n in PROTOS]
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"lesion: grpc_tools.protoc failed: {' '.join(args)}")
        out_dir = Path(tmp) / prefix / "lesion" / "v1"
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted(out_dir.iterdir()):
            if src.suffix not in (".py", ".pyi"):
                continue
            text = _PY_IMPORT.sub("from . import ", src.read_text())
            (target / src.name).write_text(text)
    print(f"lesion: generated lesion.v1 stubs from {PROTO_DIR} into {target}")


class build_py(_build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            generate(HERE / PACKAGE_DIR)
        else:
            generate(Path(self.build_lib) / PACKAGE_DIR)


setup(cmdclass={"build_py": build_py})
