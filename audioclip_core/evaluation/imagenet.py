"""ImageNet: zero-shot top-1 accuracy and image-by-text querying over an ImageNet-layout folder."""

from __future__ import annotations

from typing import Optional

import torch

from ..models.audioclip import AudioCLIP
from .metrics import accuracy, chance_accuracy, chance_retrieval, retrieval_metrics


def imagenet_classnames() -> list[str]:
    from importlib.resources import files

    return (files("audioclip_core") / "resources" / "imagenet" / "classnames.txt").read_text().splitlines()


@torch.no_grad()
def imagenet_eval(model: AudioCLIP, root, *, template: str = "{}", per_class: Optional[int] = None) -> dict:
    """Zero-shot top-1 and image-by-text querying over an ImageNet-layout folder
    (`<root>/<wnid>/*.JPEG`, e.g. the validation set sorted into class folders)."""
    import json
    from importlib.resources import files
    from pathlib import Path

    from ..inference import embed_images
    from .embeddings import text_embeddings

    index = json.loads((files("audioclip_core") / "resources" / "imagenet" / "class_index.json").read_text())
    wnid_to_idx = {v[0]: int(k) for k, v in index.items()}
    names = imagenet_classnames()
    paths, labels = [], []
    for d in sorted(Path(root).iterdir()):
        if d.is_dir() and d.name in wnid_to_idx:
            files_ = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
            files_ = files_[:per_class] if per_class else files_
            paths += files_
            labels += [wnid_to_idx[d.name]] * len(files_)
    if not paths:
        raise FileNotFoundError(f"{root}: no ImageNet class folders (<wnid>/*.JPEG) found")
    img = embed_images(model, paths, progress=False)
    text = text_embeddings(model, names, template)
    y = torch.tensor(labels)
    scores = img @ text.T
    present = sorted(set(labels))
    rel = torch.stack([y == c for c in present])
    return {
        "accuracy": accuracy(scores, y),
        "images": len(paths),
        "classes": len(present),
        "image_by_text": retrieval_metrics(text[present] @ img.T, rel),
        "chance_accuracy": chance_accuracy(len(names)),
        "chance": chance_retrieval(rel),
    }
