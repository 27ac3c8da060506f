"""Dataset versions with git + DVC: the only adapter to DVC (plain functions, no Prefect).

``tasks/versioning.py`` wraps the IO steps as Prefect tasks; the CLI's direct ingest path
calls these functions as they are, without importing Prefect (~0.6 s of start-up).

A project folder is a git repository with DVC initialised and a default remote.
A dataset version is a git commit of ``<target>.dvc`` (``data.dvc`` for the
training data), its content is in the DVC cache and pushed to the remote.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from dataclasses import replace as replace_
from pathlib import Path
from typing import Any, Callable

import yaml

from transferops.errors import TransferopsError
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


class VersioningError(TransferopsError, RuntimeError):
    """git or DVC refused; the message says which command and why."""


@dataclass(frozen=True)
class DataVersion:
    """One version of a tracked folder: git revision, DVC hash, and the store's summary."""

    target: str
    rev: str
    md5: str
    nfiles: int
    path: str
    meta: dict = field(default_factory=dict)

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


def ensure_project(root: Path, remote_url: str, endpoint: str | None = None) -> Path:
    """Make ``root`` a transferops project: git repo, DVC, default remote. Idempotent.

    Remote credentials are never written: DVC reads them from the environment. The remote's
    URL is the project's (``.dvc/config``, committed); an S3 ``endpoint`` is this machine's
    way to reach it (a laptop and a container see one server at two addresses), so it goes to
    ``.dvc/config.local``, which DVC git-ignores, and DVC merges the two.
    """
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
            conf["remote"]["storage"] = {"url": url}  # an endpoint written here by older releases moves to local
        with repo.config.edit("local") as local:
            machine = local["remote"].get("storage", {})
            machine.pop("endpointurl", None)
            if endpoint:
                machine["endpointurl"] = endpoint
            if machine:
                local["remote"]["storage"] = machine
            else:
                local["remote"].pop("storage", None)
    finally:
        repo.close()
    if "://" not in remote_url:
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
    """The parsed ``<target>.dvc`` in the work tree or at ``rev``."""
    name = f"{target}.dvc"
    text = git(root, "show", f"{rev}:{name}") if rev else (root / name).read_text()
    return yaml.safe_load(text)


def _version(root: Path, target: str, rev: str, path: str) -> DataVersion:
    doc = read_dvc_file(root, target, rev)
    out = doc["outs"][0]
    return DataVersion(target, rev, out["md5"], int(out.get("nfiles", 0)), path, doc.get("meta") or {})


def current_version(root: Path, target: str = "data") -> DataVersion:
    """The version last committed for ``target``."""
    dvc_file = root / f"{target}.dvc"
    if not dvc_file.is_file():
        raise VersioningError(f"{dvc_file} does not exist; add a dataset first (transferops data add DIR)")
    rev = git(root, "log", "-1", "--format=%H", "--", f"{target}.dvc")
    if not rev:
        raise VersioningError(f"{dvc_file} is not committed; commit it or add the data again")
    return _version(root, target, rev, str(root / target))


def list_versions(root: Path, target: str = "data") -> list[dict[str, Any]]:
    """Every committed version of ``target``, newest first: revision, date, message, counts, hashes."""
    log = git(root, "log", "--format=%H%x09%aI%x09%s", "--", f"{target}.dvc", check=False)
    rows = []
    for line in filter(None, log.splitlines()):
        rev, date, message = line.split("\t", 2)
        try:
            v = _version(root, target, rev, "")
        except VersioningError:  # a commit that deleted the file
            continue
        counts = v.meta.get("counts", {})
        rows.append({"rev": rev, "date": date, "message": message, "images": v.meta.get("n_images", v.nfiles),
                     "classes": len(v.meta.get("classes", [])),
                     "train/val/test": "/".join(str(sum(counts.get(s, {}).values())) for s in ("train", "val", "test")),
                     "content_hash": v.meta.get("content_hash", ""), "md5": v.md5, "counts": counts})
    return rows


def store_table(root: Path, target: str = "data") -> Any:
    """The validated per-image table of the current version (to validate an append against), or None."""
    from transferops.data import TABLE_COLUMNS
    from transferops.store import is_store, read_index

    dest = root / target
    if not is_store(dest):
        return None
    idx = read_index(dest)
    return idx.assign(decodes=True, error="", bytes=idx["size"])[TABLE_COLUMNS]


def add_version(root: Path, images: Any, table: Any, target: str = "data", message: str | None = None,
                replace: bool = False) -> DataVersion:
    """Ingest validated ``images`` into the store at ``root/<target>``, ``dvc add`` it and commit ``<target>.dvc``.

    ``table`` is the validation table of ``images`` (same order): its hashes and sizes
    are reused, so nothing is decoded twice. The store swaps in atomically; on a failure
    before the commit, the previous version stays checked out. Push with ``push_version``.
    """
    from transferops.data import read_bytes
    from transferops.store import ingest, read_version

    root = Path(root).resolve()
    dest = root / target
    rows = table[["path", "label", "split", "sha256", "width", "height", "mode"]].reset_index(drop=True)
    summary = ingest(dest, rows, lambda i: read_bytes(images.records[i]), replace=replace)
    if summary.added == 0 and (root / f"{target}.dvc").is_file():
        v = current_version(root, target)  # nothing new: the current version stands
        return replace_(v, meta=v.meta | {"added": 0, "new_bytes": 0, "reused": summary.reused, "unchanged": True})
    repo = _repo(root)
    repo.scm_context.quiet = True  # its "git add ..." hints: this function commits itself
    try:
        repo.add(str(dest))
    finally:
        repo.close()
    meta = read_version(dest)
    dvc_file = root / f"{target}.dvc"
    doc = yaml.safe_load(dvc_file.read_text())
    # the version's summary travels in git, so `data list` needs no data
    doc["meta"] = {k: meta[k] for k in ("n_images", "classes", "counts", "content_hash")} | {
        "added": summary.added, "new_bytes": summary.new_bytes, "reused": summary.reused}
    dvc_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    git(root, "add", f"{target}.dvc", ".gitignore")
    if git(root, "status", "--porcelain", "--", f"{target}.dvc"):
        default = f"{target}: +{summary.added} images ({summary.new_bytes} new bytes), {summary.n_images} in all"
        git(root, "commit", "-q", "-m", message or default)
    return current_version(root, target)


def push_version(root: Path, target: str = "data") -> None:
    """Upload the version's files the remote lacks (after an append: the new pack and index part)."""
    repo = _repo(Path(root).resolve())
    try:
        repo.push(targets=[str(Path(root).resolve() / target)])
    finally:
        repo.close()


def checkout_version(root: Path, rev: str, dest: Path, target: str = "data") -> DataVersion:
    """Materialise ``target`` as of git ``rev`` into ``dest`` (from the cache, else the remote),
    then verify it bit for bit against the hashes it records."""
    from dvc.api import DVCFileSystem

    from transferops.store import is_store, verify

    _quiet_dvc()
    root = Path(root).resolve()
    full = git(root, "rev-parse", "--verify", f"{rev}^{{commit}}", check=False)
    if not full:
        raise VersioningError(f"data revision '{rev}' is not a commit of {root}; see `transferops data list`")
    if not git(root, "ls-tree", "--name-only", full, f"{target}.dvc"):
        raise VersioningError(f"revision {rev} has no {target}.dvc; see `transferops data list`")
    here = root / target
    if is_store(here) and full == git(root, "log", "-1", "--format=%H", "--", f"{target}.dvc", check=False):
        verify(here, full=False)  # the current version is already checked out: no copy
        return _version(root, target, full, str(here))
    def fill(tmp: Path) -> None:
        DVCFileSystem(str(root), rev=full).get(target, str(tmp), recursive=True)
        if is_store(tmp):
            verify(tmp)

    dest = _materialise(Path(dest), fill)
    return _version(root, target, full, str(dest))


def _materialise(dest: Path, fill: Callable[[Path], None]) -> Path:
    """``dest``, written by ``fill`` into a ``.partial`` sibling and renamed into place, unless it
    exists already: an interrupted copy never leaves a half-written folder behind."""
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            fill(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(dest)
    return dest


@dataclass(frozen=True)
class TrackedPath:
    """A DVC-tracked path of some git+DVC repository, as of one commit, copied here."""

    repo: str
    path: str
    rev: str
    md5: str
    local: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fetch_tracked(repo: str | Path, path: str, rev: str | None, dest_root: Path) -> TrackedPath:
    """Copy ``path``, tracked by DVC in ``repo`` (a local git+DVC repository or a git URL, e.g. a
    data registry) as of ``rev`` (default: its HEAD), to ``dest_root/<md5>/`` from the DVC cache,
    else the repository's remote. A path fetched before (same content hash) is reused."""
    from dvc.api import DVCFileSystem

    _quiet_dvc()
    where = f"{path} in {repo} at {rev or 'HEAD'}"
    try:
        fs = DVCFileSystem(str(repo), rev=rev or "HEAD")
        commit = fs.repo.get_rev()
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise VersioningError(f"{where} does not exist; check the path (relative to the repository) and --rev") from exc
    except Exception as exc:  # noqa: BLE001  (scmrepo's revision and clone errors have no common base)
        raise VersioningError(f"cannot read {where}: {type(exc).__name__}: {exc}; check --repo and --rev") from exc
    md5 = info.get("md5") or (info.get("dvc_info") or {}).get("md5")
    if not md5:
        raise VersioningError(f"{where} is not tracked by DVC; `dvc add {path}` and commit the .dvc file, or pass "
                              "the folder itself without --rev/--repo")
    if info.get("type") != "directory":
        raise VersioningError(f"{where} is a file; a DVC-tracked production batch is a folder of images")
    dest = _materialise(Path(dest_root) / md5.removesuffix(".dir"), lambda tmp: fs.get(path, str(tmp), recursive=True))
    return TrackedPath(str(repo), path, commit, md5, str(dest))


def git_head(root: Path) -> str:
    """The project's current commit, or "" outside git."""
    return git(root, "rev-parse", "HEAD", check=False)


def code_git_sha() -> str:
    """The commit of the transferops code itself, or "unknown" when not run from a clone."""
    here = Path(__file__).resolve().parent.parent
    proc = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def prepare_project(root: Path, remote_url: str, endpoint: str | None = None) -> Path:
    """Task form of :func:`ensure_project`."""
    return ensure_project(Path(root), remote_url, endpoint)
