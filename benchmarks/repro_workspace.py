"""Make a reproduction workspace: a clone of this repository whose params point at real CIFAR-10.

The rows of ``benchmarks/results/reproduction.md`` are ``dvc repro evaluate@<variant>`` runs in
such a clone. This does, in one command, what that report's header lists by hand:

- the archive in the official ``cifar-10-python.tar.gz`` layout, made by ``--tarball-tool`` from
  the JPEG copy if ``--archive`` does not exist yet; its md5 is computed here;
- ``git clone`` of this repository into the new folder;
- the photos archive (``<top>/<class>/<image>``) unpacked into its ``data/custom/``;
- its ``params.yaml``: ``data.url`` (a file:// URL of the archive) and ``data.md5``,
  ``train.verbose: epoch`` (one line an epoch in a log), and for ``mnet1``/``mnet2`` the local
  MobileNet weights with their alpha (Keras' ImageNet download cannot be reached here).

    python benchmarks/repro_workspace.py /work/repro \\
        --archive /work/repro-data/cifar-10-python.tar.gz --photos ../shared/data/custom-photos-dev.tar.gz \\
        --mobilenet ../shared/data/mobilenet_2_5_224_tf_no_top.h5 --mobilenet-alpha 0.25

Reads this repository, the archives and the weights file. Writes the new folder (refused if it
exists) and, if missing, the archive.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MOBILENET_VARIANTS = ("mnet1", "mnet2")


class WorkspaceError(Exception):
    """A missing input or a refused target (one-line message)."""


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_archive(archive: Path, tool: Path) -> None:
    """Run the tarball tool (``../shared/bin/cifar10-tarball``) with this Python (it needs Pillow)."""
    if not tool.is_file():
        raise WorkspaceError(f"{archive}: missing, and the tool that makes it, {tool}, is not there")
    archive.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, str(tool), str(archive)], capture_output=True, text=True)
    if result.returncode != 0 or not archive.is_file():
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise WorkspaceError(f"{tool}: failed to make {archive} ({last})")


def unpack_photos(photos: Path, custom_dir: Path) -> int:
    """Unpack ``<top>/<class>/<image>`` members into ``custom_dir/<class>/<image>``; images written."""
    try:
        with tarfile.open(photos) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            with tempfile.TemporaryDirectory() as tmp:
                tar.extractall(tmp, members=members, filter="data")  # no links, no paths outside
                count = 0
                for member in members:
                    parts = Path(member.name).parts
                    if len(parts) != 3:  # <top>/<class>/<image>; a README at the top is not a photo
                        continue
                    dest = custom_dir / parts[1] / parts[2]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    (Path(tmp) / member.name).replace(dest)
                    count += 1
    except (OSError, tarfile.TarError) as exc:
        raise WorkspaceError(f"{photos}: cannot unpack the photos ({exc})") from None
    if count == 0:
        raise WorkspaceError(f"{photos}: no <top>/<class>/<image> members")
    return count


def edit_params(params_file: Path, archive: Path, md5: str, mobilenet: Path | None,
                alpha: float | None) -> None:
    """Point the workspace's params at the real data and the local MobileNet weights."""
    params = yaml.safe_load(params_file.read_text())
    params["data"].update(url=archive.resolve().as_uri(), md5=md5)
    params["train"]["verbose"] = "epoch"
    if mobilenet is not None:
        for name in MOBILENET_VARIANTS:
            args = params["variants"][name]["model_args"]
            args["weights"] = str(mobilenet.resolve())
            if alpha is not None:
                args["alpha"] = alpha
    # The workspace's params lose their comments: this repository's params.yaml has them.
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def make_workspace(target: Path, archive: Path, photos: Path, mobilenet: Path | None,
                   alpha: float | None, tool: Path) -> str:
    """Build the workspace at ``target``; the archive's md5."""
    if target.exists():
        raise WorkspaceError(f"{target}: already exists (a workspace is made once; remove it first)")
    for path, what in ((photos, "photos archive"), (mobilenet, "MobileNet weights")):
        if path is not None and not path.is_file():
            raise WorkspaceError(f"{path}: {what} not found")
    if not archive.is_file():
        make_archive(archive, tool)
    md5 = file_md5(archive)
    result = subprocess.run(["git", "clone", "-q", str(REPO), str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkspaceError(f"git clone {REPO} {target}: {result.stderr.strip()}")
    unpack_photos(photos, target / "data" / "custom")
    edit_params(target / "params.yaml", archive, md5, mobilenet, alpha)
    return md5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="the new workspace folder")
    parser.add_argument("--archive", type=Path, default=Path("/work/repro-data/cifar-10-python.tar.gz"),
                        help="CIFAR-10 archive in the official layout (made if missing)")
    parser.add_argument("--photos", type=Path, default=SHARED / "data" / "custom-photos-dev.tar.gz")
    parser.add_argument("--mobilenet", type=Path, default=SHARED / "data" / "mobilenet_2_5_224_tf_no_top.h5",
                        help="local MobileNet weights for mnet1/mnet2")
    parser.add_argument("--mobilenet-alpha", type=float, default=0.25, help="the width those weights have")
    parser.add_argument("--tarball-tool", type=Path, default=SHARED / "bin" / "cifar10-tarball")
    args = parser.parse_args(argv)
    try:
        md5 = make_workspace(args.target, args.archive, args.photos, args.mobilenet,
                             args.mobilenet_alpha, args.tarball_tool)
    except WorkspaceError as exc:
        print(f"repro_workspace: {exc}", file=sys.stderr)
        return 1
    print(f"workspace {args.target}: data {args.archive} (md5 {md5}); next: cd {args.target} && "
          "nice -n 5 dvc repro evaluate@<variant>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
