"""Where each data set comes from: official URLs and md5s, the file names in ``data/raw``.

``resolve(params)`` turns the ``data:`` params into the list of files ``fetch`` must produce:
CIFAR-10 and CIFAR-100 are one archive each; MNIST is four gzip IDX files under one base URL
(``data.url``, ending in ``/``; ``data.md5`` their four md5s, comma-separated, in the order of
``MNIST_FILES``); the synthetic set is generated, not fetched. ``null`` url or md5 means the
official one. Names listed in ``aliases`` are other names the same file has in common caches
(Keras' ``~/.keras/datasets/``), so an existing download is reused instead of fetched again.

Reads nothing. Writes nothing.
"""

from __future__ import annotations

import dataclasses

from cifar_dvc.datasets.params import DataParams
from cifar_dvc.errors import ParamsError


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file that ``fetch`` puts into ``data/raw``."""

    name: str  # file name in data/raw
    url: str  # http(s) or file:// URL, or a local path
    md5: str  # expected md5 (lower-case hex)
    aliases: tuple[str, ...] = ()  # other names of the same file in download caches


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# The original host (yann.lecun.com) now refuses downloads; this is the mirror torchvision uses.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = (  # (name, official md5), in the order data.md5 lists them for mnist
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)
ARCHIVES = {  # dataset -> (file name in data/raw, official URL, official md5, names in caches)
    "cifar10": ("cifar-10-python.tar.gz", CIFAR10_URL, CIFAR10_MD5,
                ("cifar-10-batches-py.tar.gz", "cifar-10-batches-py-target_archive")),
    "cifar100": ("cifar-100-python.tar.gz", CIFAR100_URL, CIFAR100_MD5,
                 ("cifar-100-python-target_archive",)),
}
SYNTHETIC_ARCHIVE = "synthetic-python.tar.gz"


def raw_files(dataset: str) -> list[str]:
    """Names of the files ``fetch`` writes into ``data/raw`` for ``dataset``."""
    if dataset == "mnist":
        return [name for name, _ in MNIST_FILES]
    if dataset == "synthetic":
        return [SYNTHETIC_ARCHIVE]
    return [ARCHIVES[dataset][0]]


def resolve(params: DataParams) -> list[RemoteFile]:
    """The files to fetch for ``params.dataset`` (not for ``synthetic``, which is generated)."""
    official_urls = {"cifar10": CIFAR10_URL, "cifar100": CIFAR100_URL, "mnist": MNIST_URL}
    for other, other_url in official_urls.items():
        if params.url == other_url and other != params.dataset:
            raise ParamsError(f"data.url: is the official {other} URL but data.dataset is {params.dataset}; "
                              f"set data.url and data.md5 to null to use the official {params.dataset} files")
    md5s = [m.strip().lower() for m in params.md5.split(",")] if params.md5 else None
    if params.dataset == "mnist":
        if md5s is not None and len(md5s) != len(MNIST_FILES):
            raise ParamsError(f"data.md5: mnist needs {len(MNIST_FILES)} comma-separated md5s "
                              f"({', '.join(n for n, _ in MNIST_FILES)}), got {len(md5s)}")
        base = params.url or MNIST_URL
        if not base.endswith("/"):
            base += "/"
        return [RemoteFile(name, base + name, md5s[i] if md5s else md5)
                for i, (name, md5) in enumerate(MNIST_FILES)]
    if params.dataset in ARCHIVES:
        name, url, md5, aliases = ARCHIVES[params.dataset]
        if md5s is not None and len(md5s) != 1:
            raise ParamsError(f"data.md5: expected one md5 for {params.dataset}, got {len(md5s)}")
        return [RemoteFile(name, params.url or url, md5s[0] if md5s else md5, aliases)]
    raise ParamsError(f"data.dataset: {params.dataset} is generated, not fetched")
