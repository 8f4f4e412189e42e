"""The typed pipeline configuration.

One YAML file per run, validated into these dataclasses before Ray starts. Each section belongs
to the component that reads it; `None` means "off" or "resolved at run time", never "required".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    chunk_files: int | None = None  # parquet files per training chunk (resume unit); None = whole epoch

    def __post_init__(self) -> None:
        if self.chunk_files is not None and self.chunk_files <= 0:
            raise ValueError(f"data.chunk_files must be positive, got {self.chunk_files}")
        if self.batch_size <= 0 or self.concurrency <= 0:
            raise ValueError("data.batch_size and data.concurrency must be positive")


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
class TextConfig:
    kind: Literal["tokens", "pixels"] = "tokens"
    tokenizer: str = "words"  # spec passed to clipray.text.load_tokenizer


@dataclass(kw_only=True)
class VisionConfig:
    kind: Literal["vit"] = "vit"
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
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
        if self.width % self.heads:
            raise ValueError(f"model.text.width ({self.width}) must be divisible by heads ({self.heads})")
        if self.attn == "causal" and self.pool == "first":
            # Under a causal mask the first token sees only itself: its state carries no caption.
            raise ValueError("model.text.pool=first makes no sense with attn=causal (the first token sees nothing else)")


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


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 1000  # the run's length, in optimizer steps
    global_batch_size: int = 256  # summed over workers
    num_workers: int | tuple[int, int] = 2  # a [min, max] range makes the run elastic
    cpus_per_worker: float = 1.0
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
    max_failures: int = 0
    seed: int = 0
    storage_path: str | None = None  # defaults to ./clipray_runs under the working directory
    torch_threads: int | None = None  # intra-op threads per worker; defaults to its CPU share

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError("train.steps must be positive")
        lo, hi = self.worker_range
        if lo <= 0 or hi < lo:
            raise ValueError(f"train.num_workers must be positive (or a [min, max] range), got {self.num_workers}")
        if self.micro_batches <= 0:
            raise ValueError(f"train.micro_batches must be positive, got {self.micro_batches}")
        for w in sorted({lo, hi}):
            self.local_batch_size(w)

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


@dataclass(kw_only=True)
class TrackingConfig:
    experiment: str | None = None  # defaults to the pipeline name
    tracking_uri: str | None = None  # defaults to $MLFLOW_TRACKING_URI, else sqlite under the working dir
    run_name: str | None = None


@dataclass(kw_only=True)
class RayConfig:
    address: str | None = None  # defaults to $RAY_ADDRESS, else an embedded local cluster
    num_cpus: int | None = None  # CPUs of the embedded cluster; defaults to the machine's


@dataclass(kw_only=True)
class PipelineConfig:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def per_worker_batch_size(self) -> int:
        """At the largest world size of train.num_workers."""
        return self.train.local_batch_size(self.train.worker_range[1])
