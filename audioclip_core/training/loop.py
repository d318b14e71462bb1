"""The training loop: seeded, resumable at any point, AMP on CUDA, one checkpoint per epoch.

With a `Validation` (fine-tuning: clips held out of the training folds), the starting model
and the model after every epoch are scored on it, and the best of them is what the run
returns: highest accuracy, then lowest loss, then the earliest. The scores and the kept
epoch are in `TrainResult.validation`.

A run killed at any moment resumes from the last completed epoch and reaches the same
weights as a run never interrupted (on CPU): the batch order of an epoch and every
augmentation are functions of (seed, epoch, index), and the epoch checkpoint holds the
model, optimiser, scheduler and RNG state. Checkpoints are written to a temporary folder
and renamed into place.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import read_checkpoint, save_checkpoint
from ..data.datasets import collate
from ..files import atomic_write, publish_folder
from ..layout import snapshot_file
from ..models.fbsp import LinearFBSP
from ..perf import peak_rss_mb, reset_peak_rss, tune_malloc
from . import distributed as D
from .config import TrainConfig

StepFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]
EpochCallback = Callable[[int, dict], None]


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a non-finite loss), with where it happened."""


@dataclass
class Validation:
    """Held-out clips and how a model scores them: `logits(model, batch)` -> [batch, classes],
    compared with `batch["target"]` (accuracy, cross-entropy). `clips` names them (lineage)."""

    dataset: Dataset
    logits: Callable[[nn.Module, dict], torch.Tensor]
    clips: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    resumed_from: Optional[int] = None
    skipped_items: list[str] = field(default_factory=list)
    epochs_dir: Optional[Path] = None
    model: Optional[nn.Module] = None  # the trained module (after any BatchNorm conversion)
    # with a Validation: {"scores": [{"epoch": epochs trained (0: the start), "accuracy", "loss",
    # "clips"}], "kept_epoch": the epoch whose weights were returned}
    validation: Optional[dict] = None


def no_decay(name: str) -> bool:
    """fbsp filter parameters and logit scales take no weight decay."""
    return ".fbsp." in f".{name}" or "logit_scale" in name


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or p.numel() == 0:
            continue
        (plain if no_decay(name) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # a contrastive batch needs two items
        batches = batches[:-1]
    return batches


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def freeze_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


RUN_KEY_FILE = "run_key"


def _claim_epochs(epochs_dir: Path, run_key: str, log: Callable[[str], None]) -> None:
    """Keep `epochs_dir`'s states only if they are of run `run_key`; else clear them and claim
    the folder for it. Rank 0 decides; the other ranks wait for it."""
    if D.rank() == 0:
        key_file = epochs_dir / RUN_KEY_FILE
        have = key_file.read_text(encoding="utf-8").strip() if key_file.is_file() else None
        if have != run_key:
            states = [p for p in epochs_dir.iterdir() if p.name != RUN_KEY_FILE]
            if states:
                log(
                    f"the epoch states in {epochs_dir} are of another run (config, data or parent changed): "
                    "training from the start"
                )
            for p in states:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            with atomic_write(key_file) as tmp:
                tmp.write_text(run_key + "\n", encoding="utf-8")
    if D.is_distributed():
        D.barrier()


def _latest_epoch(epochs_dir: Path) -> Optional[int]:
    done = sorted(int(p.name.split("_")[1]) for p in epochs_dir.glob("epoch_*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def _save_epoch(
    epochs_dir: Path, epoch: int, model, optimizer, scheduler, history, skipped, validation=None, parent=None
) -> None:
    # written in `.epoch_NNN.<random>` (swept by `train` on start-up) and renamed into place
    with publish_folder(epochs_dir / f"epoch_{epoch:03d}") as tmp:
        save_checkpoint(model, tmp / "model.safetensors", metadata={"epoch": epoch}, parent=parent)
        torch.save(
            {
                "epoch": epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "skipped": skipped,
                "validation": validation,
            },
            tmp / "state.pt",
        )
    _prune_epochs(epochs_dir, keep=2)  # while training, the last two complete epochs
    if validation is not None:  # the best weights the state names stay; earlier bests go
        keep = _best_file(epochs_dir, validation["kept_epoch"]).name
        for old in (epochs_dir / BEST_DIR).glob("after_*"):
            if old.name != keep:
                old.unlink(missing_ok=True)


def _prune_epochs(epochs_dir: Path, keep: int) -> None:
    """Remove all but the last `keep` complete epoch states (at the paper's size one state is
    the model and its optimizer: 1 GB for an AudioSet stage, 0.26 GB for a fine-tuning fold)."""
    done = sorted(int(p.name.split("_")[1]) for p in epochs_dir.glob("epoch_*") if p.is_dir())
    for epoch in done[:-keep]:
        shutil.rmtree(epochs_dir / f"epoch_{epoch:03d}", ignore_errors=True)


BEST_DIR = "best"


def _best_file(epochs_dir: Path, epochs: int) -> Path:
    return epochs_dir / BEST_DIR / f"after_{epochs:03d}_epochs.safetensors"


@torch.no_grad()
def _score(model: nn.Module, validation: Validation, cfg: TrainConfig, device, dtype, epochs: int) -> dict:
    """Accuracy and mean cross-entropy of `model` on the held-out clips (eval mode, no
    augmentation); `epochs`: how many epochs it has trained."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        validation.dataset,
        batch_sampler=epoch_batches(len(validation.dataset), cfg.batch_size, 0, 0, shuffle=False),
        collate_fn=collate,
        num_workers=0,
    )
    correct, loss, n = 0, 0.0, 0
    try:
        for batch in loader:
            if not len(batch["index"]):
                continue
            batch = {
                k: (v.to(device, dtype=dtype if v.is_floating_point() else None) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()
            }
            logits = validation.logits(model, batch).double()
            target = batch["target"].view(-1)
            correct += int((logits.argmax(-1) == target).sum())
            loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            n += len(target)
    finally:
        model.train(was_training)
    return {
        "epoch": epochs,
        "accuracy": correct / n if n else math.nan,
        "loss": loss / n if n else math.nan,
        "clips": n,
    }


def _better(a: dict, b: Optional[dict]) -> bool:
    """Whether score `a` beats `b`: higher accuracy, then lower loss (ties keep `b`, the earlier)."""
    if b is None:
        return True
    return (a["accuracy"], -a["loss"]) > (b["accuracy"], -b["loss"])


def _snapshot(model: nn.Module, cfg: TrainConfig, epochs: int, dest: Path, parent=None) -> None:
    """Keep the weights after `epochs` epochs (`keep_epochs`) with the metadata a finished
    stage's checkpoint has (stage, config, input scale), so they are evaluated the same way."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        model,
        dest,
        metadata={
            "stage": cfg.stage,
            "epochs_trained": epochs,
            "config": cfg.to_dict(),
            "input_scale": cfg.input_scale,
        },
        parent=parent,
    )


def _load_epoch(epochs_dir: Path, epoch: int, model, optimizer, scheduler):
    folder = epochs_dir / f"epoch_{epoch:03d}"
    model.load_state_dict(read_checkpoint(folder / "model.safetensors")[0], strict=True)
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state["history"], state["skipped"], state.get("validation")


def train(
    model: nn.Module,
    dataset: Dataset,
    step: StepFn,
    cfg: TrainConfig,
    workdir: Path,
    *,
    on_epoch: Optional[EpochCallback] = None,
    prepare: Optional[Callable[[nn.Module], None]] = None,
    log: Callable[[str], None] = print,
    run_key: Optional[str] = None,
    validation: Optional[Validation] = None,
    delta_base: Optional[Path] = None,
) -> TrainResult:
    """Train `model` for `cfg.epochs` epochs, resuming from `workdir/epochs` when it holds any
    of the same run: with `run_key` (a digest of what determines the run - config, data, parent),
    epoch states written under another key are cleared first, so a re-training on changed data or
    with another config starts afresh instead of taking up where the last one ended.

    With `validation`, the starting model and each epoch's are scored on its clips, the best
    weights kept (`epochs/best/`, resumable too) and returned (`result.validation`).

    With `delta_base` (the checkpoint the model started from), every weights file this run
    writes stores only the tensors that differ from it (`save_checkpoint(parent=...)`)."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    model.to(device=device, dtype=dtype)
    # channels-last convolutions and malloc keeping freed activations for reuse: together
    # 1.56-1.79x the contiguous fp32 step on a CPU, paper preset (bench/bench_train.py)
    model.to(memory_format=torch.channels_last)
    tune_malloc()
    reset_peak_rss()  # this stage's peak (`peak_rss_mb` in each epoch's record), not an earlier one's
    distributed = D.is_distributed()
    world = D.world_size()
    if distributed and cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    epochs_dir = Path(workdir) / "epochs"
    epochs_dir.mkdir(parents=True, exist_ok=True)
    if run_key is not None:
        _claim_epochs(epochs_dir, run_key, log)
    for stale in epochs_dir.glob(".epoch_*"):
        shutil.rmtree(stale, ignore_errors=True)
    result = TrainResult(epochs_dir=epochs_dir)
    start = 0
    latest = _latest_epoch(epochs_dir)
    if latest is None:  # a fresh run: snapshots of an earlier one are not of this one
        shutil.rmtree(Path(workdir) / "snapshots", ignore_errors=True)
    if latest is not None:
        result.history, result.skipped_items, result.validation = _load_epoch(
            epochs_dir, latest, model, optimizer, scheduler
        )
        result.resumed_from = latest
        start = latest + 1
        log(f"resuming after epoch {latest}")
    if validation is not None and result.validation is None:  # the starting model's score: epoch 0
        shutil.rmtree(epochs_dir / BEST_DIR, ignore_errors=True)
        first = _score(model, validation, cfg, device, dtype, 0)
        result.validation = {"scores": [first], "kept_epoch": 0}
        if D.rank() == 0:
            _keep_best(model, epochs_dir, 0, delta_base)
        log(
            f"validation before training: accuracy {first['accuracy']:.3f}, loss {first['loss']:.4g} "
            f"({first['clips']} clips)"
        )
    amp = dtype == torch.float32 and ((cfg.amp and device.type == "cuda") or (cfg.cpu_bf16 and device.type == "cpu"))
    net: nn.Module = model
    fbsp_layers = [m for m in model.modules() if isinstance(m, LinearFBSP)]
    try:
        for layer in fbsp_layers:  # normalise after DDP's all-reduce, not per process before it
            layer.normalize_in_hook = not distributed
        if distributed:
            if device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif not cfg.freeze_bn:
                log("note: on CPU BatchNorm statistics are computed per process (no SyncBatchNorm)")
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
            )
        if cfg.compile:
            net = torch.compile(net)
        for epoch in range(start, cfg.epochs):
            net.train()
            if cfg.freeze_bn:
                freeze_batchnorm(model)
            if prepare is not None:
                prepare(model)  # e.g. keep frozen towers in eval mode
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch)
            if cfg.max_steps_per_epoch:
                batches = batches[: cfg.max_steps_per_epoch]
            if distributed:  # the same global batches on every rank; each takes its share
                batches = [D.shard(b) for b in batches if len(b) >= world and len(b) % world == 0]
            # pinned host memory lets the copies below run asynchronously (non_blocking) on CUDA
            loader = DataLoader(
                dataset,
                batch_sampler=batches,
                collate_fn=collate,
                num_workers=cfg.num_workers,
                pin_memory=device.type == "cuda",
            )
            sums: dict[str, float] = {}
            n_samples, t0 = 0, time.perf_counter()
            for i, batch in enumerate(loader):
                for err in batch["errors"]:
                    log(f"skipped a sample that failed to load: {err}")
                    result.skipped_items.append(err)
                if len(batch["index"]) < 2 and not distributed:
                    continue
                if distributed and not batch["index"]:
                    # the other ranks wait in the feature gather; torchrun stops them on this error
                    raise TrainingError(
                        f"{cfg.stage}: every sample of rank {D.rank()}'s share of step {i} "
                        f"(epoch {epoch}) failed to load: {batch['errors']}"
                    )
                if "raw" in batch:  # augment_on="device": the workers drew the augmentations; they run here
                    batch = dataset.augment_batch(batch, device)
                batch = {
                    k: (
                        v.to(device, dtype=dtype if v.is_floating_point() else None, non_blocking=True)
                        if isinstance(v, torch.Tensor)
                        else v
                    )
                    for k, v in batch.items()
                }
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    loss, terms = step(net, batch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{cfg.stage}: the loss became {float(loss)} at epoch {epoch}, step {i}; "
                        f"the last good weights are those of epoch {epoch - 1} in {epochs_dir}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if distributed:
                    for layer in fbsp_layers:
                        layer.normalize_gradients()
                if cfg.max_grad_norm:
                    norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    terms["grad_norm"] = float(norm)  # before clipping: how often and how far it bites
                optimizer.step()
                bs = len(batch["index"]) * world
                n_samples += bs
                terms.setdefault("loss", float(loss.detach()))
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * bs
            seconds = time.perf_counter() - t0
            metrics = {k: v / max(n_samples, 1) for k, v in sums.items()}
            metrics.update(
                epoch=epoch,
                lr=optimizer.param_groups[0]["lr"],
                samples=n_samples,
                samples_per_s=n_samples / seconds if seconds > 0 else math.nan,
                skipped_items=len(result.skipped_items),
                peak_rss_mb=peak_rss_mb(),
            )
            scheduler.step()
            result.history.append(metrics)
            if validation is not None:
                score = _score(model, validation, cfg, device, dtype, epoch + 1)
                scores = result.validation["scores"]
                best = next(s for s in scores if s["epoch"] == result.validation["kept_epoch"])
                scores.append(score)
                if _better(score, best):
                    result.validation["kept_epoch"] = epoch + 1
                    if D.rank() == 0:
                        _keep_best(model, epochs_dir, epoch + 1, delta_base)
                log(
                    f"validation after epoch {epoch + 1}: accuracy {score['accuracy']:.3f}, loss {score['loss']:.4g}"
                    f" (best: after {result.validation['kept_epoch']} epochs)"
                )
            if D.rank() == 0:
                _save_epoch(
                    epochs_dir,
                    epoch,
                    model,
                    optimizer,
                    scheduler,
                    result.history,
                    result.skipped_items,
                    result.validation,
                    delta_base,
                )
                if epoch + 1 in cfg.keep_epochs:
                    _snapshot(model, cfg, epoch + 1, snapshot_file(workdir, epoch + 1), delta_base)
            D.barrier()
            log(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    finally:  # the layers go back to normalising in their own hook, whatever happened
        for layer in fbsp_layers:
            layer.normalize_in_hook = True
    if D.rank() == 0:  # finished: the last state alone resumes (re-materialises) the run
        _prune_epochs(epochs_dir, keep=1)
    if validation is not None:
        kept = result.validation["kept_epoch"]
        if kept != cfg.epochs:  # the best epoch's weights, not the last
            D.barrier()
            model.load_state_dict(read_checkpoint(_best_file(epochs_dir, kept))[0], strict=True)
        log(f"kept the weights after {kept} of {cfg.epochs} epochs (best validation score)")
    result.model = model
    return result


def _keep_best(model: nn.Module, epochs_dir: Path, epochs: int, parent=None) -> None:
    """The weights after `epochs` epochs, kept as the best so far (written whole, then renamed)."""
    dest = _best_file(epochs_dir, epochs)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, dest, metadata={"epoch": epochs}, parent=parent)
