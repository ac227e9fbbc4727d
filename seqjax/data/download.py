"""`seqjax download NAME`: fetch a public dataset, or say where to get one that needs a login.

    seqjax download ml-1m --out data/raw/ml-1m        # fetch, verify, unzip; prints the prepare command
    seqjax download otto                              # needs a Kaggle login: prints the page and file names
    seqjax download otto --verify data/raw/otto/train.jsonl   # sha256 of a file fetched by hand

A fetched archive is checked against its pinned sha256 when the official checksum is known; otherwise
its sha256 is computed while downloading, printed, and recorded in DIR/SHA256SUMS, so that a later
download (or a colleague's) can be compared with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 0.5


class DownloadError(ValueError):
    """A download that failed or did not verify; the message is one line naming the URL or file."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    page: str  # the official page: licence, citation, and the download for login-only datasets
    files: tuple[str, ...]  # what DIR holds afterwards (paths relative to DIR)
    prepare: str  # the `seqjax prepare` arguments to run next; {dir} is DIR
    url: str = ""  # a zip fetched directly; '' = the page needs a login
    sha256: str = ""  # pinned checksum of the zip; '' = not known for certain: recorded at download
    md5: str = ""  # the checksum the publisher itself lists (GroupLens: ml-*.zip.md5), checked too
    how: str = ""  # login-only datasets: what to download from the page


# ml-*: GroupLens publishes the md5; the sha256 of the same archives is the one many projects pin.
# CDNOW: no official checksum, and public copies disagree, so it is recorded rather than pinned.
DATASETS = {
    "ml-1m": Dataset(
        page="https://grouplens.org/datasets/movielens/1m/",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        md5="c4d9eecfca2ab87c1945afe126590906",
        files=("ml-1m/ratings.dat", "ml-1m/movies.dat", "ml-1m/users.dat"),
        prepare="--format movielens --input {dir}/ml-1m/ratings.dat --out data/ml-1m"),
    "ml-100k": Dataset(
        page="https://grouplens.org/datasets/movielens/100k/",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        md5="0e33842e24a9c977be4e0107933c0723",
        files=("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.user"),
        prepare="--format movielens --input {dir}/ml-100k/u.data --out data/ml-100k"),
    "cdnow": Dataset(
        page="https://www.brucehardie.com/datasets/",
        url="https://www.brucehardie.com/datasets/CDNOW_master.zip",
        files=("CDNOW_master.txt",),
        # One placeholder item and day-resolution dates: same-day purchases would otherwise be duplicates.
        prepare="--format cdnow --input {dir}/CDNOW_master.txt --out data/cdnow --set drop_duplicates=false"),
    "taobao": Dataset(
        page="https://tianchi.aliyun.com/dataset/649",
        how="UserBehavior.csv.zip (Tianchi account)",
        files=("UserBehavior.csv",),
        prepare="--format taobao --input {dir}/UserBehavior.csv --out data/taobao"),
    "retailrocket": Dataset(
        page="https://www.kaggle.com/datasets/retailrocket/ecommerce-dataset",
        how="the dataset archive (Kaggle account); prepare reads only events.csv",
        files=("events.csv",),
        prepare="--format retailrocket --input {dir}/events.csv --out data/retailrocket"),
    "yoochoose": Dataset(
        page="https://recsys.acm.org/recsys15/challenge/",
        how=("the RecSys Challenge 2015 files, mirrored at "
             "https://www.kaggle.com/datasets/chadgostopp/recsys-challenge-2015 (Kaggle account)"),
        files=("yoochoose-clicks.dat", "yoochoose-buys.dat"),
        prepare=("--format yoochoose --input clicks={dir}/yoochoose-clicks.dat "
                 "--input buys={dir}/yoochoose-buys.dat --out data/yoochoose")),
    "diginetica": Dataset(
        page="https://competitions.codalab.org/competitions/11161",
        how="dataset-train-diginetica.zip, CIKM Cup 2016 track 2 data (CodaLab account)",
        files=("train-item-views.csv",),
        prepare="--format diginetica --input {dir}/train-item-views.csv --out data/diginetica"),
    "otto": Dataset(
        page="https://www.kaggle.com/competitions/otto-recommender-system/data",
        how="the competition data (Kaggle account; accept the competition rules)",
        files=("train.jsonl", "test.jsonl"),
        prepare="--format otto --input {dir}/train.jsonl --out data/otto"),
}


def next_command(name: str, out: Path) -> str:
    return "seqjax prepare " + DATASETS[name].prepare.format(dir=out.as_posix())


def instructions(name: str, out: Path) -> str:
    """What to do by hand for a dataset that needs a login."""
    d = DATASETS[name]
    return "\n".join([
        f"{name} needs a login, so seqjax cannot fetch it.",
        f"  page:  {d.page}",
        f"  get:   {d.how}",
        f"  files: {', '.join(f'{out.as_posix()}/{f}' for f in d.files)}  (unzip the download there)",
        "then:",
        f"  seqjax download {name} --verify {out.as_posix()}/{d.files[0]}   (prints its sha256 to keep with results)",
        f"  {next_command(name, out)}",
    ])


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


def download(name: str, out: str | Path, echo=print) -> list[Path]:
    """Fetches dataset `name` into `out`, verifies and unzips it; returns the paths of its files."""
    d = DATASETS[name]
    if not d.url:
        raise DownloadError(f"{name} needs a login; see `seqjax download {name}`")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    archive = out / d.url.rsplit("/", 1)[-1]
    echo(f"downloading {d.url}")
    sha256, md5 = fetch(d.url, archive)
    if (d.sha256 and sha256 != d.sha256) or (d.md5 and md5 != d.md5):
        archive.unlink()
        want = f"sha256 {d.sha256}" if d.sha256 else f"md5 {d.md5}"
        raise DownloadError(f"{d.url}: checksum does not match the pinned {want} (got sha256 {sha256}, md5 {md5}); "
                            "the download is corrupt or the file changed upstream")
    record_checksum(out, archive.name, sha256)
    note = "matches the pinned checksum" if d.sha256 else f"no official checksum: recorded in {out / 'SHA256SUMS'}"
    echo(f"sha256 {sha256}  {archive.name}  ({note})")
    unzip(archive, out)
    missing = [f for f in d.files if not (out / f).is_file()]
    if missing:
        raise DownloadError(f"{archive}: does not contain {', '.join(missing)}")
    echo(f"files: {', '.join(str(out / f) for f in d.files)}")
    echo(f"next: {next_command(name, out)}")
    return [out / f for f in d.files]


def fetch(url: str, dest: Path) -> tuple[str, str]:
    """Streams `url` to `dest` (via dest.part, so a broken download never looks complete); (sha256, md5)."""
    part = dest.with_name(dest.name + ".part")
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    done, last = 0, 0.0
    try:
        # A fresh opener reads the proxy settings of this moment, not of the first download in the process.
        with urllib.request.build_opener().open(url, timeout=60) as response, part.open("wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            while block := response.read(CHUNK_BYTES):
                f.write(block)
                sha256.update(block)
                md5.update(block)
                done += len(block)
                if time.monotonic() - last > PROGRESS_EVERY_S:
                    last = time.monotonic()
                    _progress(dest.name, done, total)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {getattr(e, 'reason', None) or e}") from None
    _progress(dest.name, done, total, end="\n")
    part.replace(dest)
    return sha256.hexdigest(), md5.hexdigest()


def _progress(name: str, done: int, total: int, end: str = "") -> None:
    of = f"/{total / 2**20:.1f}" if total else ""
    print(f"\r  {name}: {done / 2**20:.1f}{of} MiB", end=end, file=sys.stderr, flush=True)


def unzip(archive: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(out)  # extractall drops absolute paths and '..' parts: nothing lands outside `out`
    except zipfile.BadZipFile:
        raise DownloadError(f"{archive}: not a zip archive") from None


def record_checksum(out: Path, filename: str, sha256: str) -> None:
    """Adds or replaces `filename`'s line in out/SHA256SUMS (the `sha256sum -c` format)."""
    sums = out / "SHA256SUMS"
    lines = sums.read_text().splitlines() if sums.exists() else []
    lines = [ln for ln in lines if ln.split(maxsplit=1)[-1].lstrip("*") != filename]
    sums.write_text("\n".join([*lines, f"{sha256}  {filename}"]) + "\n")


def verify(name: str, path: Path) -> str:
    """Prints (and returns) the sha256 of `path`; for the archive of a pinned dataset, also whether it matches."""
    if not path.is_file():
        raise DownloadError(f"file not found: {path}")
    d, sha256 = DATASETS[name], sha256_of(path)
    print(f"{sha256}  {path}")
    if d.sha256 and path.name == d.url.rsplit("/", 1)[-1]:
        if sha256 != d.sha256:
            raise DownloadError(f"{path}: sha256 does not match the pinned {d.sha256}")
        print("matches the pinned checksum")
    for f in d.files:  # files may sit in a subfolder of DIR (ml-1m/ratings.dat): DIR is above it
        if path.as_posix().endswith("/" + f) or path.as_posix() == f:
            print(f"next: {next_command(name, path.parents[len(Path(f).parts) - 1])}")
            break
    return sha256


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=tuple(DATASETS), metavar="NAME", help=", ".join(DATASETS))
    parser.add_argument("--out", metavar="DIR", help="where the files go (default: data/raw/NAME)")
    parser.add_argument("--verify", metavar="PATH", help="print the sha256 of a file you downloaded yourself")


def run_download(args: argparse.Namespace) -> int:
    """Runs `seqjax download`; returns the exit code (2 with a one-line `error:` on stderr on failure)."""
    try:
        if args.verify:
            verify(args.name, Path(args.verify))
        elif DATASETS[args.name].url:
            download(args.name, args.out or f"data/raw/{args.name}")
        else:
            print(instructions(args.name, Path(args.out or f"data/raw/{args.name}")))
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
