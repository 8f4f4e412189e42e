"""The typed pipeline configuration.

One YAML file per run, validated into these dataclasses before Ray starts. Each section belongs
to the component that reads it; `None` means "off" or "resolved at run time", never "required".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal


def _require_positive(section: str, **values: float) -> None:
    """Sizes, counts and rates that only make sense above zero (0 heads or a negative lr would
    fail, or silently train nothing, long after the run started)."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{section}.{name} must be positive, got {value}")


@dataclass(kw_only=True)
class DataConfig:
    """Where the image/alt-text pairs are and how the CPU stages run."""

    source: str = ""  # local directory, glob or s3://bucket/prefix of img2dataset parquet
    endpoint_url: str | None = None  # S3-compatible endpoint; defaults to $AWS_ENDPOINT_URL
    key_column: str = "key"
    caption_column: str = "caption"
    image_column: str = "jpg"
    batch_size: int = 128  # rows per batch inside the CPU stages
    num_cpus: float = 0.25  # CPU reserved by each preprocessing actor
    concurrency: int = 2  # preprocessing actors
    shuffle_seed: int | None = None  # file order seed; defaults to train.seed
    local_shuffle_buffer: int = 512  # rows shuffled on each training worker (0 = off)
    max_image_pixels: int = 100_000_000  # headers declaring more are dropped undecoded
    # Sources: hive partitions (dt=2026-11-22/) become columns; keep only these values per key.
    partition_filter: dict[str, list[str]] = field(default_factory=dict)
    partition_columns: list[str] = field(default_factory=list)  # partition keys carried to the output
    connect_timeout_s: float = 10.0  # S3 reachability/credentials check before Ray Data starts
    # How long the driver's S3 pre-flight (listing, parquet footers) retries a stalled or restarting
    # endpoint, with backoff, before the run fails naming the object and the endpoint.
    s3_retry_s: float = 40.0
    # Op chain of the CPU stage (names in clipray.data.ops.op_registry), in order. `encode_text`
    # is the op text_encoding.kind chooses (tokenize or render_text; clipray.text.encoding).
    ops: list[str] = field(default_factory=lambda: [
        "dedup_images", "decode", "image_filter", "clean_caption", "caption_filter", "image_transform", "encode_text",
    ])
    jpeg_decoder: Literal["simplejpeg", "pil"] = "simplejpeg"  # simplejpeg: libjpeg-turbo M/8 reduced decode
    # Filters (each counts its drops by reason).
    min_image_side: int = 0  # drop `too_small` below this shorter side (0 = off)
    max_aspect_ratio: float | None = None  # drop `bad_aspect_ratio` when long/short side exceeds it
    min_caption_chars: int = 1  # after clean-up; shorter -> `caption_too_short` (empty -> `empty_caption`)
    max_caption_chars: int = 2000  # longer -> `caption_too_long` (web junk, not alt text)
    fix_text: bool = True  # ftfy mojibake repair in caption clean-up
    dedup_images: bool = True  # drop exact duplicate image bytes within a parquet file
    chunk_files: int | None = None  # parquet files per training chunk (resume unit); None = whole epoch
    # Curation (docs/curation.md). Row filters (where, languages, min_clip_score) run in training
    # and in `clipray data curate`; the dataset-wide stages (dedup: near, decontaminate) only in
    # `clipray data curate`, whose output training then reads.
    where: list[str] = field(default_factory=list)  # metadata predicates: "punsafe < 0.5" (drops where_...)
    languages: list[str] = field(default_factory=list)  # keep captions in these languages (ISO 639-1); drops `language`
    dedup: Literal["exact", "near", "off"] = "exact"  # exact: dedup_images; near: perceptual, dataset-wide
    near_threshold: int = 10  # near duplicates: max Hamming distance of the 64-bit perceptual hashes
    near_color_threshold: int = 40  # ... and max colour difference (0-255) of any cell of the 4x4 colour grids
    near_bands: int = 8  # the hash is cut into this many bands; rows sharing a band are compared
    # Evaluation sets whose near-duplicates are dropped as `eval_overlap` by curate: true = the
    # pipeline's own (eval.zeroshot_source), false = none, or a list of parquet sources.
    decontaminate: bool | list[str] = True
    min_clip_score: float | None = None  # drop `low_clip_score` below this image-text cosine similarity
    score_model: str | None = None  # the scoring model: run id, runs:/<id>, models:/name@alias or /name/N, checkpoint dir
    keep_scores: bool = False  # keep the `clip_score` column in curate's output
    score_actors: int = 1  # actors of the scoring stage (each loads the model once)
    # Training batches in the same order on every run (Ray Data's preserve_order): the same seed,
    # data and worker layout then give the same losses. Off trades that for whichever
    # preprocessing actor finishes first (docs/determinism.md).
    preserve_order: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.near_threshold < 64 or not 0 <= self.near_color_threshold <= 255:
            raise ValueError("data.near_threshold must be in [0, 64) and data.near_color_threshold in [0, 255]")
        if self.near_bands not in (1, 2, 4, 8, 16) or self.near_threshold >= 64:
            raise ValueError(f"data.near_bands must be 1, 2, 4, 8 or 16 (bands of the 64-bit hash), got {self.near_bands}")
        if self.min_clip_score is not None and not self.score_model:
            raise ValueError("data.min_clip_score needs data.score_model (a run id, models:/ URI or checkpoint)")
        if self.score_actors <= 0:
            raise ValueError(f"data.score_actors must be positive, got {self.score_actors}")
        if self.chunk_files is not None and self.chunk_files <= 0:
            raise ValueError(f"data.chunk_files must be positive, got {self.chunk_files}")
        if self.batch_size <= 0 or self.concurrency <= 0:
            raise ValueError("data.batch_size and data.concurrency must be positive")
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            raise ValueError(f"data.max_aspect_ratio must be >= 1 (long/short side), got {self.max_aspect_ratio}")
        if not 0 <= self.min_caption_chars <= self.max_caption_chars:
            raise ValueError("data.min_caption_chars must be between 0 and data.max_caption_chars")
        if self.connect_timeout_s <= 0:
            raise ValueError("data.connect_timeout_s must be positive")
        if self.s3_retry_s < 0:
            raise ValueError(f"data.s3_retry_s must not be negative, got {self.s3_retry_s}")


@dataclass(kw_only=True)
class ImageConfig:
    """Image transforms; the output size is model.vision.image_size."""

    train_crop_scale: tuple[float, float] = (0.9, 1.0)  # RandomResizedCrop area range
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self) -> None:
        lo, hi = self.train_crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"image.train_crop_scale must satisfy 0 < lo <= hi <= 1, got {self.train_crop_scale}")


@dataclass(kw_only=True)
class TextEncodingConfig:
    kind: Literal["tokens", "pixels"] = "tokens"
    tokenizer: str = "words"  # spec passed to clipray.text.load_tokenizer
    # kind=pixels: the GNU Unifont .hex file the CLIPPO renderer reads (Debian package `unifont`).
    font: str = "/usr/share/unifont/unifont.hex"


@dataclass(kw_only=True)
class VisionConfig:
    """ViT: width/layers/heads/patch_size. ResNet (CLIP's ModifiedResNet): `width` is the stem
    width (64 for RN50), `layers_per_stage` the bottleneck blocks per stage, `heads` those of
    the attention-pooling head over width * 32 channels."""

    kind: Literal["vit", "resnet"] = "vit"
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    layers_per_stage: tuple[int, ...] = (3, 4, 6, 3)  # resnet only

    def __post_init__(self) -> None:
        _require_positive("model.vision", image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                          layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio)
        if self.kind == "resnet":
            if self.image_size % 32:
                raise ValueError(f"model.vision.image_size ({self.image_size}) must be a multiple of 32 for "
                                 "kind=resnet (the tower downsamples 32x)")
            if len(self.layers_per_stage) != 4 or min(self.layers_per_stage) < 1:
                raise ValueError(f"model.vision.layers_per_stage must be 4 positive block counts, got "
                                 f"{self.layers_per_stage}")
            if (self.width * 32) % self.heads:
                raise ValueError(f"model.vision.heads ({self.heads}) must divide the attention-pool width "
                                 f"(width * 32 = {self.width * 32}) for kind=resnet")
            return
        if self.image_size % self.patch_size:
            raise ValueError(
                f"model.vision.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.width % self.heads:
            raise ValueError(f"model.vision.width ({self.width}) must be divisible by heads ({self.heads})")


@dataclass(kw_only=True)
class TextTowerConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    attn: Literal["causal", "bidirectional"] = "causal"
    pool: Literal["eot", "first", "mean"] = "eot"

    def __post_init__(self) -> None:
        _require_positive("model.text", vocab_size=self.vocab_size, width=self.width, layers=self.layers,
                          heads=self.heads, mlp_ratio=self.mlp_ratio)
        if self.width % self.heads:
            raise ValueError(f"model.text.width ({self.width}) must be divisible by heads ({self.heads})")
        if self.attn == "causal" and self.pool == "first":
            # Under a causal mask the first token sees only itself: its state carries no caption.
            raise ValueError("model.text.pool=first makes no sense with attn=causal (the first token sees nothing else)")
        if self.attn == "causal" and self.pool == "mean":
            # Token i sees only tokens <= i, so a mean weights the caption's start far more than its end.
            warnings.warn("model.text.pool=mean with attn=causal is prefix-weighted (early tokens dominate); "
                          "prefer pool=eot for a causal tower", stacklevel=2)
        if self.context_length < 2:
            raise ValueError(f"model.text.context_length must hold at least SOT and EOT, got {self.context_length}")


@dataclass(kw_only=True)
class ClippoConfig:
    """CLIPPO: one ViT for images and rendered text; these switch per-modality parts on."""

    separate_patch_embed: bool = False  # a second patch embedding for text images
    separate_head: bool = False  # a second MAP head + projection for text images
    map_heads: int | None = None  # heads of the MAP pooling head; defaults to model.vision.heads


@dataclass(kw_only=True)
class AlbefConfig:
    """ALBEF: the text encoder has model.text.layers layers, the fusion encoder fusion_layers.

    The MLM mask token is one extra id after the tokenizer's vocabulary (id = model.text.vocab_size).
    """

    fusion_layers: int = 6
    queue_size: int = 65536  # momentum features kept as extra contrastive keys (a ring buffer)
    momentum: float = 0.995  # EMA factor of the momentum model
    alpha: float = 0.4  # weight of the momentum model's soft targets (distillation)
    alpha_warmup_steps: int = 0  # alpha ramps linearly from 0 over these steps (upstream: one epoch)
    temp: float = 0.07  # initial contrastive temperature (learned, clamped to [0.001, 0.5])
    mlm_probability: float = 0.15

    def __post_init__(self) -> None:
        if self.fusion_layers < 1 or self.queue_size < 0:
            raise ValueError("model.albef.fusion_layers must be >= 1 and queue_size >= 0")
        if not 0 <= self.momentum < 1 or not 0 <= self.alpha <= 1 or not 0 < self.mlm_probability < 1:
            raise ValueError("model.albef: momentum must be in [0, 1), alpha in [0, 1], mlm_probability in (0, 1)")


@dataclass(kw_only=True)
class ModelConfig:
    family: str = "clip"
    embed_dim: int = 512
    quick_gelu: bool = False
    init_logit_scale: float = 1 / 0.07  # temperature 0.07
    max_logit_scale: float = 100.0
    init_logit_bias: float | None = None  # learnable logit bias (SigLIP: -10); None = no bias
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    init_from: str | None = None  # a state dict (OpenAI/open_clip layout, or a clipray checkpoint: its directory or state.pt) loaded first
    clippo: ClippoConfig = field(default_factory=ClippoConfig)
    albef: AlbefConfig = field(default_factory=AlbefConfig)

    def __post_init__(self) -> None:
        _require_positive("model", embed_dim=self.embed_dim, init_logit_scale=self.init_logit_scale,
                          max_logit_scale=self.max_logit_scale)
        if self.family == "albef":
            # ALBEF pools the text at its first ([CLS]/SOT) token and fuses every text token with the
            # image: the text encoder must see in both directions.
            if self.text.attn != "bidirectional" or self.text.pool != "first":
                raise ValueError("model.family=albef needs model.text.attn=bidirectional and model.text.pool=first")
            if self.vision.kind != "vit":
                raise ValueError("model.family=albef fuses ViT tokens: model.vision.kind must be vit")
        if self.family == "clippo" and self.vision.kind != "vit":
            raise ValueError("model.family=clippo is one ViT for both modalities: model.vision.kind must be vit")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio

    def __post_init__(self) -> None:
        _require_positive("optim", lr=self.lr, eps=self.eps)
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(f"optim.weight_decay and optim.warmup_steps must not be negative, got "
                             f"{self.weight_decay} and {self.warmup_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 1000  # the run's length, in optimizer steps
    global_batch_size: int = 256  # summed over workers
    num_workers: int | tuple[int, int] = 2  # a [min, max] range makes the run elastic
    cpus_per_worker: float = 1.0
    # Extra Ray resources per worker (e.g. {"spot_trainer": 1}, a custom resource that only the
    # training nodes advertise): one worker per node of that kind, and elastic counts follow them.
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    # With a [min, max] range: how often a healthy run checks whether more workers would fit now
    # (growing restarts the worker group from the latest checkpoint at the new size).
    elastic_resize_interval_s: float = 60.0
    use_gpu: bool = False
    loss: Literal["softmax", "sigmoid"] = "softmax"
    micro_batches: int = 1  # > 1: gradient caching over this many micro-batches per worker step
    parallel: Literal["ddp", "fsdp"] = "ddp"  # fsdp = torch.distributed.fsdp.fully_shard (FSDP2)
    grad_checkpointing: bool = False  # recompute transformer blocks in the backward pass
    compile: bool = False  # torch.compile the towers
    sample_log: str | None = None  # directory where each worker appends the keys it trained on
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_clip: float | None = 1.0
    log_every: int = 1
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    # Worker-group failures (a killed worker, a lost node) that Ray Train recovers from the latest
    # checkpoint before the run fails; -1 = unlimited. On by default: a plain run survives them.
    max_failures: int = 3
    seed: int = 0
    storage_path: str | None = None  # defaults to ./clipray_runs under the working directory
    torch_threads: int | None = None  # intra-op threads per worker; defaults to its CPU share
    # Reliability (docs/reliability.md): consecutive non-finite steps (each skipped on every
    # worker) before the run rolls back to the latest checkpoint, once; a second streak fails it.
    max_skipped_steps: int = 5
    # Every N steps the workers ask Ray Train whether a node of theirs is being preempted (a node
    # drain: the spot notice); after a notice every step is checkpointed. 0 = never ask.
    preemption_check_every: int = 1

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError("train.steps must be positive")
        lo, hi = self.worker_range
        if lo <= 0 or hi < lo:
            raise ValueError(f"train.num_workers must be positive (or a [min, max] range), got {self.num_workers}")
        if self.micro_batches <= 0:
            raise ValueError(f"train.micro_batches must be positive, got {self.micro_batches}")
        if self.preemption_check_every < 0:
            raise ValueError(f"train.preemption_check_every must be 0 or more, got {self.preemption_check_every}")
        if self.max_skipped_steps <= 0 or self.max_failures < -1:
            raise ValueError(f"train.max_skipped_steps must be positive and train.max_failures -1 or more, got "
                             f"{self.max_skipped_steps} and {self.max_failures}")
        if self.elastic_resize_interval_s <= 0:
            raise ValueError(f"train.elastic_resize_interval_s must be positive, got {self.elastic_resize_interval_s}")
        for name, amount in self.resources_per_worker.items():
            if name in ("CPU", "GPU"):
                raise ValueError(f"train.resources_per_worker.{name}: set train.cpus_per_worker / train.use_gpu instead")
            if amount < 0:
                raise ValueError(f"train.resources_per_worker.{name} must not be negative, got {amount}")
        # Every world size an elastic run may restart at, not only the two ends: [2, 4] with a
        # global batch of 16 would otherwise load, then fail at each restart on 3 workers.
        bad = [w for w in range(lo, hi + 1) if self.global_batch_size % (w * self.micro_batches)]
        if bad and lo == hi:
            self.local_batch_size(lo)
        if bad:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be divisible by every world size of "
                f"train.num_workers [{lo}, {hi}] times train.micro_batches ({self.micro_batches}), and is not at "
                f"{', '.join(map(str, bad[:-1])) + ' and ' if len(bad) > 1 else ''}{bad[-1]} workers"
            )

    @property
    def worker_range(self) -> tuple[int, int]:
        n = self.num_workers
        return (n, n) if isinstance(n, int) else (int(n[0]), int(n[1]))

    def local_batch_size(self, world_size: int) -> int:
        """Rows per worker per step at `world_size`: the global batch stays the configured size."""
        if self.global_batch_size % (world_size * self.micro_batches):
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be divisible by the world size "
                f"({world_size}, from train.num_workers) times train.micro_batches ({self.micro_batches})"
            )
        return self.global_batch_size // world_size


@dataclass(kw_only=True)
class EvalConfig:
    zeroshot_source: str | None = None  # parquet of labelled images (columns jpg, label)
    classes_file: str | None = None  # JSON {"classes": [...], "templates": [...]}; default beside the source
    batch_size: int = 256
    every_steps: int | None = None  # evaluate on rank 0 every N optimizer steps (None = only at the end)

    def __post_init__(self) -> None:
        if self.every_steps is not None and self.every_steps <= 0:
            raise ValueError(f"eval.every_steps must be positive or null, got {self.every_steps}")


@dataclass(kw_only=True)
class TrackingConfig:
    experiment: str | None = None  # defaults to the pipeline name
    tracking_uri: str | None = None  # defaults to $MLFLOW_TRACKING_URI, else sqlite under the working dir
    run_name: str | None = None
    parent_run_id: str | None = None  # nest the run under this MLflow run (tag mlflow.parentRunId)
    log_model: bool = True  # log the trained model as an MLflow pyfunc model and register it
    registered_model: str | None = None  # model registry name; defaults to the pipeline name
    # Per-step metrics go through an on-disk spool on the rank-0 worker (clipray.tracking.spool):
    # training goes on while the server is away; after training the run waits this long for it.
    flush_timeout_s: float = 600.0
    spool_dir: str | None = None  # defaults to <temp dir>/clipray-spool on the worker


@dataclass(kw_only=True)
class RayConfig:
    address: str | None = None  # defaults to $RAY_ADDRESS, else an embedded local cluster
    num_cpus: int | None = None  # CPUs of the embedded cluster; defaults to the machine's


@dataclass(kw_only=True)
class PipelineConfig:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    text_encoding: TextEncodingConfig = field(default_factory=TextEncodingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.model.family == "clippo" and self.text_encoding.kind != "pixels":
            raise ValueError("model.family=clippo reads rendered text images: set text_encoding.kind=pixels")
        # Gradient caching needs a tower whose output for a row does not depend on the other rows
        # of its micro-batch. BatchNorm normalises in training by the micro-batch's statistics, so
        # a ResNet tower would see other statistics (and update its running ones differently) than
        # in one pass over the whole batch: the loss and gradient would silently be other ones.
        if self.train.micro_batches > 1 and self.model.vision.kind == "resnet":
            raise ValueError(f"train.micro_batches={self.train.micro_batches} (gradient caching) is not exact with "
                             "model.vision.kind=resnet: its BatchNorm layers normalise each micro-batch by its own "
                             "statistics; set train.micro_batches=1")
        # ALBEF's momentum queues and hard negatives are per step and its step is one DDP module.
        if self.model.family == "albef" and (self.train.micro_batches != 1 or self.train.parallel != "ddp"):
            raise ValueError("model.family=albef trains with train.micro_batches=1 and train.parallel=ddp (its "
                             "momentum queues and in-batch hard negatives are per step)")

    @property
    def per_worker_batch_size(self) -> int:
        """At the largest world size of train.num_workers."""
        return self.train.local_batch_size(self.train.worker_range[1])
