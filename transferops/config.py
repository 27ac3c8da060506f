"""One settings object for the whole project.

Precedence, lowest to highest: the defaults below, a YAML file
(``transferops.yaml`` in the project folder, or the file named by
``TRANSFEROPS_CONFIG`` / ``--config``), then ``TRANSFEROPS_*`` environment
variables (nested fields with ``__``, e.g. ``TRANSFEROPS_TRAINING__EPOCHS=3``).
URIs and secrets belong in the environment, never in the YAML file or in git.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError,
                               YamlConfigSettingsSource)

from transferops.errors import InputError

CONFIG_FILENAME = "transferops.yaml"


class ConfigError(InputError):
    """A configuration file or value is unusable; the message names it and the fix."""


# The YAML file of the load_settings() call in progress. settings_customise_sources is a
# classmethod that sees none of the call's arguments, and the file differs per call
# (project folder, TRANSFEROPS_CONFIG, --config); a context variable is per thread and task.
_YAML_FILE: ContextVar[Path | None] = ContextVar("transferops_yaml_file", default=None)


class _YamlSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source with the project's one-line errors.

    The library lets yaml's multi-line parser error through, and a top level that is not a
    mapping fails inside it with an unrelated TypeError; both become ConfigError here.
    """

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file_path} is not valid YAML ({exc.__class__.__name__}); fix its syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping of settings, not {type(data).__name__}")
        return data


class _Section(BaseModel):
    """A nested settings section: a misspelt key (``training: {epoch: 3}``) is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """How a dataset folder is read and split."""

    # Fractions for datasets without train/ val/ test/ folders. Assignment hashes
    # each file's path, so an image keeps its split when new data is appended.
    val_fraction: float = Field(0.15, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    # Validation fails when a class has fewer images than this in the train split.
    min_images_per_class: int = Field(5, ge=1)
    # PIL refuses to decode images above this many pixels (decompression bombs).
    max_image_pixels: int = Field(40_000_000, ge=1)
    # Image modes accepted. Everything listed is converted to 8-bit RGB when read
    # (16-bit rescaled, alpha composited on white); drop modes here to reject them instead.
    allowed_modes: list[str] = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I;16B", "I;16L", "I", "F"]
    min_side: int = Field(8, ge=1)  # smaller images carry no signal after resizing
    max_side: int = Field(8192, ge=1)  # larger ones are mistakes or bombs
    # The largest class may hold at most this many times the train images of the smallest.
    max_class_imbalance: float = Field(20.0, ge=1)


class TrainingConfig(_Section):
    """Hyper-parameters of training; each strategy scales the rates (``transferops.strategy``).

    The budget rule: a phase runs ``max(epochs x steps per epoch, min_steps)`` optimizer
    steps, in batches small enough for 4 steps an epoch, evaluated about every
    ``eval_every_steps`` steps, and stops after ``patience`` evaluations without a better
    smoothed validation loss (never before half of ``min_steps``). Epochs alone give a small
    dataset a handful of steps: 85 images at batch 64 make 16 steps in 8 epochs.
    """

    epochs: int = Field(8, ge=1)  # epochs of a large dataset; small ones get min_steps instead
    min_steps: int = Field(300, ge=0)  # optimizer steps at least, whatever the dataset's size
    eval_every_steps: int = Field(20, ge=1)  # a tiny dataset is judged every few epochs, not every 2 steps
    patience: int = Field(4, ge=1)  # evaluations without a better smoothed val loss before stopping
    smoothing: float = Field(0.6, ge=0, lt=1)  # EMA factor of the val loss; 0 reads the raw loss
    warmup_fraction: float = Field(0.05, ge=0, lt=1)  # linear warm-up, then cosine decay per step
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)  # learning rate of a new head (and of scratch training)
    # Pretrained blocks train at lr * backbone_lr_mult: source features need smaller steps than a random head.
    backbone_lr_mult: float = Field(0.1, gt=0, le=1)
    # full_finetune: each block nearer the input trains at layer_decay times the rate of the one above it.
    layer_decay: float = Field(0.8, gt=0, le=1)
    # L2-SP strength (pull towards the source weights instead of towards zero); 0 is off.
    l2sp: float = Field(0.0, ge=0)
    # lp_ft's fine-tuning phase runs every layer, head included, at lr * lp_ft_lr_mult.
    lp_ft_lr_mult: float = Field(0.1, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    # Random shifts and scalings of train images (not flips: they change digits and text).
    # Feature extraction on cached embeddings never augments: each image is embedded once.
    augment: bool = True
    seed: int = 0
    device: str = "auto"  # "auto" picks cuda when present, else cpu
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    # CUDA only: torch.compile the network for phases of at least compile_min_steps steps.
    # Compiling costs tens of seconds up front, which a short fine-tune never earns back.
    compile: bool = True
    compile_min_steps: int = Field(1000, ge=0)
    cudnn_benchmark: bool = True  # CUDA only: cuDNN picks the fastest kernels for the input shape once
    # CUDA only: loader workers decode and resize to uint8; the random crop, the conversion to
    # float and the normalisation run per batch on the GPU (a quarter of the bytes cross the bus).
    device_preprocess: bool = True
    # DataLoader worker processes; None: 0 on CPU (deterministic, and the cores train), and on
    # CUDA min(8, cores) with pinned memory and workers kept between epochs, so decoding keeps up.
    num_workers: int | None = Field(None, ge=0)
    checkpoint_interval_s: float = Field(30.0, ge=0)  # at most one resumable checkpoint this often
    # Data-parallel training: each SGD phase runs under torchrun in this many processes (one per
    # GPU) with DistributedDataParallel and the same global batch; "auto" takes every visible GPU
    # (1 process without CUDA). Tracking and registration stay in the calling process: once.
    nproc_per_node: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU

    def loader_workers(self, device: Any, processes: int = 1) -> int:
        """``num_workers``, or its default for ``device`` (a ``torch.device`` or its type name)
        in each of ``processes`` data-parallel processes (they share the machine's cores)."""
        if self.num_workers is not None:
            return self.num_workers
        cores = max(1, (os.cpu_count() or 1) // processes)
        return min(8, cores) if getattr(device, "type", device) == "cuda" else 0

    def processes(self) -> int:
        """How many data-parallel processes a phase trains in (``nproc_per_node`` resolved)."""
        if self.nproc_per_node != "auto":
            return self.nproc_per_node
        import torch

        return max(1, torch.cuda.device_count()) if self.device in ("auto", "cuda") else 1


StrategyName = Literal["feature_extraction", "partial_finetune", "full_finetune", "lp_ft", "scratch"]


class StrategyConfig(_Section):
    """The ``auto`` choice, strategy details, the search and the scratch baseline."""

    # "small" when the train split has fewer images per class than this.
    small_max_per_class: int = Field(200, ge=1)
    # The source features "fit" when a cross-validated linear probe on them reaches this
    # transferability: (accuracy - chance) / (1 - chance).
    transferable_min: float = Field(0.8, ge=0, le=1)
    # The strategy of each cell of the 2x2 (size x fit).
    small_fit: StrategyName = "feature_extraction"
    # full_finetune, not the classic partial_finetune or lp_ft: on the Fashion-MNIST strategy
    # benchmark (20 images/class, transferability 0.73) it was the best transfer strategy, ahead
    # of lp_ft by 1-5 points and partial_finetune by 3 (bench/strategies, README).
    small_misfit: StrategyName = "full_finetune"
    large_fit: StrategyName = "full_finetune"
    large_misfit: StrategyName = "scratch"
    # "low" picks the cheapest strategy the size and fit allow (no backward pass through the backbone).
    budget: Literal["low", "normal"] = "normal"
    # Blocks frozen by partial_finetune; None picks k from per-block linear probes.
    partial_freeze_blocks: int | None = Field(None, ge=0)
    # feature_extraction fits its head on embeddings computed once and cached (False: SGD through the frozen backbone).
    cache_features: bool = True
    probe_max_images: int = Field(2000, ge=20)  # the transferability probes read at most this many train+val images
    # --strategy search: successive halving over these, starting at min_fraction of the budget.
    search_candidates: list[StrategyName] = ["feature_extraction", "partial_finetune", "full_finetune", "lp_ft", "scratch"]
    search_min_fraction: float = Field(0.25, gt=0, le=1)
    search_eta: int = Field(2, ge=2)
    # Every run trains a scratch baseline with the same budget for the transfer-benefit report,
    # when the train split holds at most this many images (0: never).
    baseline_max_train_images: int = Field(2000, ge=0)


class DriftConfig(_Section):
    """Two-sample test on backbone embeddings."""

    alpha: float = Field(0.05, gt=0, lt=1)  # p-value below this is drift
    n_permutations: int = Field(200, ge=10)  # MMD permutation test; p-values resolve to 1/(n+1)
    n_components: int | None = Field(64, ge=2)  # MMD on the top principal components (None: all dims)
    shrinkage: float | None = Field(1.0, ge=0)  # MMD rescaling: 0 whitens, None keeps the raw scale (alibi's)
    max_samples: int = Field(1000, ge=10)  # per side; larger samples are subsampled
    profile_size: int = Field(1000, ge=10)  # reference embeddings kept per profile
    # per-feature KS multiple-testing correction; "permutation" (max-KS) is exact, the others conservative
    ks_correction: Literal["permutation", "bonferroni", "fdr"] = "permutation"
    decision_test: Literal["mmd", "classifier", "ks", "bbsd"] = "mmd"  # whose verdict is the run's drift flag
    seed: int = 0


class PromotionConfig(_Section):
    """When a challenger becomes champion: the gates of ``transferops.promotion.decide_promotion``.

    A threshold of None turns its gate off (the value is still measured and logged).
    """

    metric: str = "accuracy"  # held-out metric compared, higher is better
    # The challenger must beat the champion by at least this on the shared test split; a tie
    # never promotes (a new version with equal numbers is churn, not progress).
    min_delta: float = Field(0.0, ge=0)
    # No class's held-out recall may fall by more than this: a better average can hide a class
    # the new model gave up on. 0.10 is one image in ten; raise it for test splits of a few images a class.
    max_class_drop: float | None = Field(0.10, ge=0, le=1)
    # ... judged only for classes with at least this many test images: below it, one image moves
    # recall by more than the limit, and the gate would judge noise.
    min_class_images: int = Field(20, ge=1)
    # Expected calibration error (15 bins) at most this. Off by default: on a test split of a few
    # dozen images ECE moves by several points between seeds, so no one bound fits every dataset;
    # set it where the monitor's confidence-based accuracy estimate or a consumer reads the scores.
    max_ece: float | None = Field(None, ge=0, le=1)
    # Median batch-1 latency in milliseconds, on the device of the run, at most this (None: off);
    # a serving budget belongs to the deployment, so there is no default.
    max_latency_ms: float | None = Field(None, gt=0)
    # Timed forward passes per batch size for the latency figures (0: not measured, and a set
    # max_latency_ms then fails); each batch size also stops after about 0.25 s of timing.
    latency_repeats: int = Field(5, ge=0)
    # True: a version that passes every gate only gets `challenger` and waits for a person's
    # `transferops promote VERSION --reason TEXT`, which records who approved it and why.
    require_approval: bool = False
    # Champion moves take a lock in the registry (tasks/promotion_lock.py): a waiter gives up after
    # lock_wait_s, and breaks a lock older than lock_ttl_s (its holder was killed). The holder
    # re-evaluates the champion under the lock when another run moved it, so the TTL must outlast
    # that evaluation; the wait outlasts the TTL, so a dead holder's lock is broken before waiters give up.
    lock_ttl_s: float = Field(600.0, gt=0)
    lock_wait_s: float = Field(900.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _min_improvement(cls, data: Any) -> Any:
        # min_improvement (before issue 12) meant "by more than"; it is read as min_delta, which with
        # the tie rule differs only for a delta of exactly that size
        if isinstance(data, dict) and "min_improvement" in data:
            data = dict(data)
            old = data.pop("min_improvement")
            data.setdefault("min_delta", old)
        return data


class MonitorConfig(_Section):
    """The monitor flow: how much of a production batch it reads and when it asks for a retrain."""

    # "drift_and_drop": retrain on drift that also costs estimated accuracy (drift the model
    # shrugs off need not cost a training run); "drift": on any drift.
    retrain_on: Literal["drift", "drift_and_drop"] = "drift_and_drop"
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)  # estimated drop below held-out accuracy that counts
    # Accuracy without labels: "regression" (ATC, far share and class-mix change regressed on
    # synthetic shifts of the held-out images; bench/results/estimate.md: the only one within
    # 5 points on severe shifts), "atc" (average thresholded confidence) or "average_confidence".
    estimator: Literal["regression", "atc", "average_confidence"] = "regression"
    # held-out images scored under each synthetic shift of the regression's panel (per model:
    # 18 shifts x 300 images take about 5 s on 2 CPU cores at 32 px)
    calibration_images: int = Field(300, ge=20)
    max_images: int = Field(10_000, ge=10)  # a larger batch is subsampled evenly
    # Embedding a batch is inference only: batches larger than training's run faster on a CPU
    # (bench/monitor/speed_bench.py: 64 -> 256 cuts 10,000 images at 32 px from 17 s to 13 s).
    batch_size: int = Field(256, ge=1)
    # No second retrain of the same model within this many hours of the last one (0: no cooldown).
    cooldown_hours: float = Field(24.0, ge=0)
    # The retrain flow trains on this pool when a worker there is online (a GPU costs minutes
    # where a CPU costs hours), else in its own process; None or "" keeps it in-process always.
    gpu_pool: str | None = "transferops-gpu"
    # The deployment it hands training to: prefect.yaml's train flow on that pool, pinned to CUDA.
    gpu_deployment: str = "transferops-train/train-gpu"


class TrackingConfig(_Section):
    """How long a call waits for an unreachable tracking server before failing (MLflow's HTTP retries).

    Applied as MLFLOW_HTTP_REQUEST_MAX_RETRIES, ..._BACKOFF_FACTOR and ..._TIMEOUT unless those are
    exported (tasks/mlflow_errors.py). MLflow's own defaults (7 retries, factor 2, 120 s) wait about
    4 minutes per call on a refused connection; a flow makes dozens of calls, each retried by its task.
    """

    # Sleeps between tries are factor * 2, 4, 8, ... s (plus up to 1 s of jitter): 4 retries with
    # factor 1 give up a refused call after about 15 s, and a task's own 2 retries after about a minute.
    http_max_retries: int = Field(4, ge=0, le=10)  # MLflow refuses more than 10
    http_backoff_factor: int = Field(1, ge=0, le=120)  # an integer in MLflow
    # Seconds to connect, and to wait for each answer; a host that never answers costs
    # (http_max_retries + 1) times this per call.
    http_timeout_s: int = Field(20, ge=1)


class ExecutionConfig(_Section):
    """Where the trials of a strategy search (and of the strategy benchmark) run.

    ``sequential`` trains them one after another in the calling process, as a plain map.
    ``dask`` submits each trial of a rung as a Prefect task to Prefect's ``DaskTaskRunner``
    (the ``dask`` extra): on the scheduler at ``dask_address``, else on a ``LocalCluster``
    started for the search. There is no thread-pool option: every trial seeds torch's
    process-wide generator (``training.seed``), so trials in threads of one process would
    draw from each other's random streams; processes keep each trial repeatable.
    """

    task_runner: Literal["sequential", "dask"] = "sequential"
    # An existing scheduler, e.g. tcp://10.0.0.5:8786 (TRANSFEROPS_EXECUTION__DASK_ADDRESS); its
    # workers need transferops and this repository installed, and the project folder at the same path.
    dask_address: str | None = None
    # Worker processes of the LocalCluster started when there is no address (None: one per CPU
    # core, at most max_parallel_trials); each gets the cores divided among them as torch threads.
    dask_workers: int | None = Field(None, ge=1)
    # At most this many trials at once (None: as many as are ready); bounds memory on a shared cluster.
    max_parallel_trials: int | None = Field(None, ge=1)


class Settings(BaseSettings):
    """The resolved configuration; logged with every run."""

    model_config = SettingsConfigDict(
        env_prefix="TRANSFEROPS_", env_nested_delimiter="__", extra="forbid"
    )

    project_dir: Path = Path(".")
    # Embedded default: sqlite:///<project>/.transferops/mlflow.db
    tracking_uri: str | None = None
    # Embedded default: <project>/.transferops/dvc-remote (a folder remote). For S3/MinIO:
    # s3://bucket/prefix, credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY only.
    dvc_remote_url: str | None = None
    # S3-compatible endpoint (MinIO), e.g. http://127.0.0.1:9000: how this machine reaches the remote,
    # so it goes to .dvc/config.local (git-ignored by DVC), never to the committed .dvc/config.
    dvc_remote_endpoint: str | None = None
    experiment: str = "transferops"
    model_name: str = "transferops-classifier"  # registered target model
    source_model_name: str = "transferops-source"  # registered source models
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    strategy: StrategyConfig = StrategyConfig()
    drift: DriftConfig = DriftConfig()
    promotion: PromotionConfig = PromotionConfig()
    monitor: MonitorConfig = MonitorConfig()
    tracking: TrackingConfig = TrackingConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("project_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: init kwargs (load_settings passes only project_dir: an explicit folder
        # beats TRANSFEROPS_PROJECT_DIR), the environment, the YAML file, then the defaults.
        yaml_file = _YAML_FILE.get()
        if yaml_file is None:
            return init_settings, env_settings
        return init_settings, env_settings, _YamlSource(settings_cls, yaml_file=yaml_file)

    # Derived locations of the embedded defaults.
    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".transferops"

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return (self.state_dir / "mlartifacts").as_uri()

    @property
    def resolved_dvc_remote(self) -> str:
        return self.dvc_remote_url or str(self.state_dir / "dvc-remote")

    @property
    def reports_dir(self) -> Path:
        return self.project_dir / "reports"

    @property
    def checkpoints_dir(self) -> Path:
        return self.state_dir / "checkpoints"

    def public_dict(self) -> dict[str, Any]:
        """The resolved config for logging, with credentials in URIs masked."""
        data = self.model_dump(mode="json")
        data["tracking_uri"] = _mask(self.resolved_tracking_uri)
        data["dvc_remote_url"] = _mask(self.resolved_dvc_remote)
        return data


def _mask(uri: str) -> str:
    # user:password@host -> ***@host, so credentials never reach logs or MLflow params
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def load_settings(
    project_dir: str | Path | None = None, config_file: str | Path | None = None
) -> Settings:
    """Resolve settings for a project folder: defaults < YAML < environment.

    The YAML file is ``config_file``, else ``TRANSFEROPS_CONFIG``, else the project's
    ``transferops.yaml`` when there is one. Raises ConfigError (one line, naming the field
    and the file or environment variable) for any unusable value.

    >>> s = load_settings("/tmp/proj")
    >>> s.training.epochs  # doctest: +SKIP
    8
    """
    env_project = os.environ.get("TRANSFEROPS_PROJECT_DIR")
    root = Path(project_dir or env_project or ".").expanduser().resolve()
    named = config_file or os.environ.get("TRANSFEROPS_CONFIG")
    path = Path(named).expanduser() if named else None
    if path is None and (root / CONFIG_FILENAME).is_file():
        path = root / CONFIG_FILENAME
    # pydantic-settings skips a YAML file that does not exist; a file the user named must.
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    token = _YAML_FILE.set(path)
    try:
        return Settings(project_dir=root)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"config field '{where}' {_origin(err['loc'], path)}: {err['msg']}; fix or remove it") from None
    except SettingsError as exc:  # an environment value that is not valid JSON for a list or mapping field
        raise ConfigError(f"config in TRANSFEROPS_* environment: {exc}; give lists and mappings as JSON, "
                          """e.g. TRANSFEROPS_DATA__ALLOWED_MODES='["L","RGB"]'""") from None
    finally:
        _YAML_FILE.reset(token)


def _origin(loc: tuple[Any, ...], path: Path | None) -> str:
    """Where a bad value came from: the environment variable that sets it, else the YAML file."""
    names = {k.upper() for k in os.environ}
    for n in range(len(loc), 0, -1):
        var = "TRANSFEROPS_" + "__".join(str(p) for p in loc[:n]).upper()
        if var in names:
            return f"in environment variable {var}"
    return f"in {path}" if path is not None else "in TRANSFEROPS_* environment"
