"""Data-parallel pieces on 2 gloo processes: unequal shards (a sample dropped on one rank) and
the corrected loss's class ids over the global batch give the single-process loss."""

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CAPTIONS = [["Siren"], ["Chirp tone"], ["Siren"], ["White noise"], ["Chirp tone"], ["Siren"], ["Pink noise"]]
SHARDS = ([0, 1, 2], [3, 4, 5, 6])  # 3 and 4 rows: the fourth of rank 0 failed to load


def _batch(idx):
    g = torch.Generator().manual_seed(7)
    audio = torch.randn(len(CAPTIONS), 1, 8000, generator=g, dtype=torch.float64) * 3000
    return {"audio": audio[idx], "text": [CAPTIONS[i] for i in idx]}


def _model():
    import audioclip_core as ac

    torch.manual_seed(0)
    # eval: BatchNorm independent of the split; float64: see the loss comparison below
    return ac.build_model("audioclip-tiny").double().eval()


def _worker(rank, init_file, out_dir):
    from audioclip_core.training.distributed import gather_features, gather_objects
    from audioclip_core.training.steps import audioclip_step

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        idx = SHARDS[rank]
        x = torch.arange(len(idx) * 2, dtype=torch.float32).view(len(idx), 2) + 100 * rank
        gathered = gather_features(x.requires_grad_(True))
        gathered.sum().backward()
        _, terms = audioclip_step(use_image=False, loss_variant="corrected")(_model(), _batch(idx))
        result = {
            "gathered": gathered.detach().tolist(),
            "grad": x.grad.tolist(),
            "objects": gather_objects([f"r{rank}-{i}" for i in idx]),
            "loss": terms["loss"],
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_unequal_shards_and_corrected_loss_match_one_process(tmp_path):
    from audioclip_core.training.steps import audioclip_step

    mp.spawn(_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = [[2.0 * i, 2.0 * i + 1] for i in range(3)] + [[100 + 2.0 * i, 101 + 2.0 * i] for i in range(4)]
    for rank, res in enumerate(ranks):
        assert res["gathered"] == expected  # 3 + 4 rows, padding cut off, in rank order
        assert res["grad"] == [[1.0, 1.0]] * len(SHARDS[rank])  # the own slice keeps its gradient
        assert res["objects"] == ["r0-0", "r0-1", "r0-2", "r1-3", "r1-4", "r1-5", "r1-6"]
    _, single = audioclip_step(use_image=False, loss_variant="corrected")(_model(), _batch(list(range(7))))
    # every rank holds the global loss, with same-caption pairs as positives across ranks. Each
    # rank embeds its own samples (another batch size, so sums in another order): in float64
    # that changes the loss by ~1e-15 relative, so 1e-9 holds on any CPU while a wrong
    # positive set moves it by more than 1e-3 (checked below).
    for res in ranks:
        assert abs(res["loss"] - single["loss"]) < 1e-9 * max(1.0, abs(single["loss"])), (res["loss"], single)
    _, reference = audioclip_step(use_image=False, loss_variant="reference")(_model(), _batch(list(range(7))))
    assert abs(reference["loss"] - single["loss"]) > 1e-3  # the class ids matter for this batch
