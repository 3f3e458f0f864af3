"""Copies the CUDA libraries of container/runtime-libs.txt out of their pinned PyPI wheels.

Usage (in the image build): python3 fetch-cuda-libs.py runtime-libs.txt OUT_DIR

Every row whose provider is a wheel pin (`nvidia-cublas==13.0.2.14`) names one library file; the wheels
are downloaded once each (`pip download --no-deps --only-binary=:all:`) and the file is copied from
`nvidia/cu13/lib/` (NCCL's wheel: `nvidia/nccl/lib/`) in the wheel into OUT_DIR under its soname. Anything missing fails the build with the
wheel and file it looked for.
"""

import pathlib
import subprocess
import sys
import tempfile
import zipfile


def wanted(manifest):
    """(library, wheel pin) for every row provided by a wheel."""
    rows = []
    for line in pathlib.Path(manifest).read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 3:
            sys.exit(f"{manifest}: `{line}` needs library, needed-by, provided-by")
        if "==" in words[2]:
            rows.append((words[0], words[2]))
    return rows


def main(manifest, out_dir):
    rows = wanted(manifest)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pins = sorted({pin for _, pin in rows})
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", tmp, *pins]
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"fetch-cuda-libs: `{' '.join(cmd)}` failed (is PyPI reachable?)")
        for lib, pin in rows:
            name = pin.split("==")[0].replace("-", "_")
            wheels = list(pathlib.Path(tmp).glob(f"{name}-*.whl"))
            if len(wheels) != 1:
                sys.exit(f"fetch-cuda-libs: expected one wheel for {pin} in {tmp}, found {wheels}")
            with zipfile.ZipFile(wheels[0]) as whl:
                members = [f"nvidia/{tree}/lib/{lib}" for tree in ("cu13", "nccl")]
                member = next((m for m in members if m in whl.namelist()), None)
                if member is None:
                    sys.exit(f"fetch-cuda-libs: {wheels[0].name} has none of {members}")
                data = whl.read(member)
            (out / lib).write_bytes(data)
            (out / lib).chmod(0o755)
            print(f"fetch-cuda-libs: {lib} ({len(data) / 1e6:.1f} MB) from {wheels[0].name}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
