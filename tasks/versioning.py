"""Dataset versions with git + DVC: the only adapter to DVC.

A project folder is a git repository with DVC initialised and a default remote.
A dataset version is a git commit of ``<target>.dvc`` (``data.dvc`` for the
training data), its content is in the DVC cache and pushed to the remote.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import task

from transferops.offline import apply_offline_defaults

apply_offline_defaults()


def _quiet_dvc() -> None:
    """DVC configures its logger when first imported; keep its INFO hints off stdout.

    Its hints ("to track the changes with git, run ...") are what this module does itself,
    and on stdout they would corrupt ``--json`` output.
    """
    import dvc.logger  # noqa: F401  (the import runs DVC's own logging set-up)

    logging.getLogger("dvc").setLevel(logging.WARNING)

GITIGNORE = ".transferops/\nreports/\n"


class VersioningError(RuntimeError):
    """git or DVC refused; the message says which command and why."""


@dataclass(frozen=True)
class DataVersion:
    """One version of a tracked folder: git revision, DVC hash, file count."""

    target: str
    rev: str
    md5: str
    nfiles: int
    path: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def git(root: Path, *args: str, check: bool = True) -> str:
    """Run git in ``root`` with an identity fallback, so CI machines without one can commit."""
    ident = []
    if subprocess.run(["git", "-C", str(root), "config", "user.email"], capture_output=True).returncode != 0:
        ident = ["-c", "user.name=transferops", "-c", "user.email=transferops@localhost"]
    proc = subprocess.run(["git", "-C", str(root), *ident, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise VersioningError(f"git {' '.join(args)} failed in {root}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def _repo(root: Path):
    from dvc.repo import Repo

    _quiet_dvc()
    return Repo(str(root))


def ensure_project(root: Path, remote_url: str) -> Path:
    """Make ``root`` a transferops project: git repo, DVC, default remote. Idempotent."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").exists():
        git(root, "init", "-q", "-b", "main")
    if not (root / ".dvc").is_dir():
        from dvc.repo import Repo

        _quiet_dvc()
        Repo.init(str(root))
    from dvc.config_schema import RelPath

    url: str = remote_url
    if Path(remote_url).is_absolute() and Path(remote_url).resolve().is_relative_to(root.resolve()):
        # stored relative to .dvc/, so the project folder can move (or be cloned) with its remote
        url = RelPath(str(Path(remote_url).resolve()))
    repo = _repo(root)
    try:
        with repo.config.edit() as conf:
            conf["core"]["remote"] = "storage"
            conf["core"]["analytics"] = False
            conf["core"]["check_update"] = False
            conf["remote"]["storage"] = {"url": url}
    finally:
        repo.close()
    if not remote_url.startswith(("s3://", "gs://", "azure://", "http")):
        Path(remote_url).mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists() or ".transferops/" not in ignore.read_text():
        with ignore.open("a") as fh:
            fh.write(GITIGNORE)
    git(root, "add", ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
    if git(root, "status", "--porcelain", "--", ".gitignore", ".dvc", ".dvcignore"):
        git(root, "commit", "-q", "-m", "transferops: initialise project")
    return root


def read_dvc_file(root: Path, target: str, rev: str | None = None) -> dict[str, Any]:
    """The ``outs[0]`` entry of ``<target>.dvc`` in the work tree or at ``rev``."""
    name = f"{target}.dvc"
    text = git(root, "show", f"{rev}:{name}") if rev else (root / name).read_text()
    out = yaml.safe_load(text)["outs"][0]
    return out


def current_version(root: Path, target: str = "data") -> DataVersion:
    """The version last committed for ``target``."""
    dvc_file = root / f"{target}.dvc"
    if not dvc_file.is_file():
        raise VersioningError(f"{dvc_file} does not exist; version a dataset first (pass --data DIR)")
    rev = git(root, "log", "-1", "--format=%H", "--", f"{target}.dvc")
    if not rev:
        raise VersioningError(f"{dvc_file} is not committed; commit it or pass --data DIR")
    out = read_dvc_file(root, target, rev)
    return DataVersion(target, rev, out["md5"], int(out.get("nfiles", 0)), str(root / target))


@task(retries=2, retry_delay_seconds=2)
def version_dataset(root: Path, source: Path, target: str = "data", message: str | None = None) -> DataVersion:
    """Copy ``source`` into ``root/<target>``, ``dvc add`` it, commit ``<target>.dvc`` and push.

    The copy goes to a temporary folder first and replaces the old version in
    one rename, so a failure leaves the previous version intact.
    """
    root, source = Path(root).resolve(), Path(source).resolve()
    dest = root / target
    if source != dest:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target}-", dir=dest.parent))
        shutil.copytree(source, staging / "new", symlinks=False)
        if dest.exists():
            shutil.rmtree(dest)
        (staging / "new").rename(dest)
        shutil.rmtree(staging, ignore_errors=True)
    repo = _repo(root)
    repo.scm_context.quiet = True  # its "git add ..." hints: this function commits itself
    try:
        repo.add(str(dest))
        git(root, "add", f"{target}.dvc", ".gitignore")
        if git(root, "status", "--porcelain", "--", f"{target}.dvc"):
            out = read_dvc_file(root, target)
            git(root, "commit", "-q", "-m", message or f"data: {target} {out['md5'][:12]} ({out.get('nfiles', '?')} files)")
        repo.push(targets=[str(dest)])
    finally:
        repo.close()
    return current_version(root, target)


@task(retries=2, retry_delay_seconds=2)
def checkout_version(root: Path, rev: str, dest: Path, target: str = "data") -> DataVersion:
    """Materialise ``target`` as of git ``rev`` into ``dest`` (from the cache or the remote)."""
    from dvc.api import DVCFileSystem

    _quiet_dvc()
    root = Path(root).resolve()
    full = git(root, "rev-parse", "--verify", f"{rev}^{{commit}}", check=False)
    if not full:
        raise VersioningError(f"data revision '{rev}' is not a commit of {root}; see `git log -- {target}.dvc`")
    out = read_dvc_file(root, target, full)
    dest = Path(dest)
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        fs = DVCFileSystem(str(root), rev=full)
        fs.get(target, str(tmp), recursive=True)
        tmp.rename(dest)
    return DataVersion(target, full, out["md5"], int(out.get("nfiles", 0)), str(dest))


def git_head(root: Path) -> str:
    """The project's current commit, or "" outside git."""
    return git(root, "rev-parse", "HEAD", check=False)


def code_git_sha() -> str:
    """The commit of the transferops code itself, or "unknown" when not run from a clone."""
    here = Path(__file__).resolve().parent.parent
    proc = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


@task(retries=2, retry_delay_seconds=2)
def prepare_project(root: Path, remote_url: str) -> Path:
    """Task form of :func:`ensure_project`."""
    return ensure_project(Path(root), remote_url)
