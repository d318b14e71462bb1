"""The `audioclip` command: embed, classify, query and convert.

    audioclip classify --checkpoint AudioCLIP-Full-Training.pt --labels "dog,rain,car horn" clips/*.wav
    audioclip embed --checkpoint ckpt.safetensors clips/*.wav images/*.jpg --out emb.parquet
    audioclip query --checkpoint ckpt.safetensors --text "a dog barking" clips/*.wav
    audioclip convert AudioCLIP-Full-Training.pt full.safetensors

The checkpoint can also be given by the AUDIOCLIP_CHECKPOINT environment variable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .audio import INPUT_SCALES

NO_CHECKPOINT = """\
audioclip: no checkpoint given. Pass --checkpoint PATH (or set AUDIOCLIP_CHECKPOINT).

The weights are not shipped with this package and nothing downloads them for you.
Published files:
  AudioCLIP-Full-Training.pt     all three heads trained on AudioSet (recommended)
  AudioCLIP-Partial-Training.pt  audio head trained, image/text = vanilla CLIP RN50
      https://github.com/AndreyGuzhov/AudioCLIP/releases/tag/v0.1
  ESRNXFBSP.pt / ESResNeXtFBSP_AudioSet.pt   stand-alone audio classifier (AudioSet, 527 classes)
      https://github.com/AndreyGuzhov/ESResNeXt-fbsp/releases/tag/v0.1
Checkpoints written by this project's training stages (.safetensors) work too.
"""


def _write_rows(rows: list[dict], out: Optional[str]) -> None:
    if not out or out == "-":
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    elif suffix in (".csv", ".parquet"):
        import pandas as pd

        df = pd.DataFrame(rows)
        if suffix == ".csv":
            df.to_csv(path, index=False)
        else:
            df.to_parquet(path, index=False)
    else:
        raise SystemExit(f"audioclip: unknown output format {suffix!r}; use .json, .csv or .parquet")
    print(f"wrote {len(rows)} rows to {path}", file=sys.stderr)


def _load(args):
    from . import load_model
    from .perf import tune_malloc

    ckpt = args.checkpoint or os.environ.get("AUDIOCLIP_CHECKPOINT")
    if not ckpt:
        sys.stderr.write(NO_CHECKPOINT)
        raise SystemExit(2)
    model = load_model(ckpt, preset=args.preset)
    tune_malloc()  # this process embeds large batches: reuse freed activations (perf.py)
    if args.fast or args.bf16:
        model.audio.enable_fast_inference(bf16=args.bf16)
    return model


def _labels(args) -> list[str]:
    labels: list[str] = []
    if args.labels:
        labels += [s.strip() for s in args.labels.split(",") if s.strip()]
    if args.labels_file:
        labels += [s.strip() for s in Path(args.labels_file).read_text(encoding="utf-8").splitlines() if s.strip()]
    if not labels:
        raise SystemExit("audioclip: give class names with --labels a,b,c or --labels-file FILE")
    return labels


def _audio_options(args) -> dict:
    return {"input_scale": args.input_scale, "window_seconds": args.window, "hop_seconds": args.hop,
            "batch_size": args.batch_size}


def cmd_embed(args) -> None:
    from .inference import embed_files, embed_texts

    model = _load(args)
    rows = []
    if args.files:
        emb, kinds = embed_files(model, args.files, **_audio_options(args))
        rows += [{"item": f, "modality": k, "embedding": e.tolist()} for f, k, e in zip(args.files, kinds, emb)]
    if args.text:
        emb = embed_texts(model, args.text, template=args.template)
        rows += [{"item": t, "modality": "text", "embedding": e.tolist()} for t, e in zip(args.text, emb)]
    if not rows:
        raise SystemExit("audioclip embed: give files and/or --text")
    _write_rows(rows, args.out)


def cmd_classify(args) -> None:
    from .inference import embed_files, embed_texts, zero_shot_probabilities

    model = _load(args)
    labels = _labels(args)
    label_emb = embed_texts(model, labels, template=args.template)
    emb, kinds = embed_files(model, args.files, **_audio_options(args))
    rows = []
    for f, kind, e in zip(args.files, kinds, emb):
        probs = zero_shot_probabilities(model, e[None], label_emb, modality=kind)[0]
        top = probs.topk(min(args.top_k, len(labels)))
        rows.append({"file": f, "modality": kind, "label": labels[int(top.indices[0])],
                     "probability": round(float(top.values[0]), 6),
                     "top": [{"label": labels[int(i)], "probability": round(float(p), 6)}
                             for p, i in zip(top.values, top.indices)]})
    if args.out and Path(args.out).suffix.lower() in (".csv", ".parquet"):
        for r in rows:
            r["top"] = json.dumps(r["top"], ensure_ascii=False)
    _write_rows(rows, args.out)


def cmd_query(args) -> None:
    from .inference import embed_files, embed_texts, rank

    model = _load(args)
    cand, kinds = embed_files(model, args.files, **_audio_options(args))
    if args.text:
        queries, names = embed_texts(model, args.text, template=args.template), list(args.text)
    elif args.query_file:
        queries, _ = embed_files(model, args.query_file, **_audio_options(args))
        names = list(args.query_file)
    else:
        raise SystemExit("audioclip query: give --text or --query-file")
    scores, idx = rank(queries, cand, args.top_k)
    rows = []
    for q, name in enumerate(names):
        for r, (s, i) in enumerate(zip(scores[q], idx[q]), start=1):
            rows.append({"query": name, "rank": r, "item": args.files[int(i)],
                         "modality": kinds[int(i)], "score": round(float(s), 6)})
    _write_rows(rows, args.out)


def cmd_convert(args) -> None:
    from .checkpoints import convert

    path, layout = convert(args.src, args.dst, layout=args.layout, preset=args.preset)
    print(f"wrote {path} ({layout})")


def cmd_lineage(args) -> None:
    import time

    from .audit import chain, checkpoints_for_clip, format_chain

    if args.clip:
        root = Path(args.data_root or os.environ.get("AUDIOCLIP_DATA_ROOT") or "data")
        start = time.perf_counter()
        hits = checkpoints_for_clip(args.clip, root)
        rows = [{"checkpoint": h.checkpoint, "stage": h.stage, "sha256": h.sha256, "via": h.via} for h in hits]
        if args.out:
            _write_rows(rows, args.out)
        else:
            print(f"{len(hits)} checkpoints trained on {args.clip} (searched {root} in "
                  f"{time.perf_counter() - start:.2f} s):")
            for h in hits:
                print(f"  {h.stage:<22s} {h.checkpoint}  ({h.via})")
        return
    if not args.checkpoint:
        raise SystemExit("audioclip lineage: give a CHECKPOINT, or --clip YTID")
    records = chain(Path(args.checkpoint))
    if args.out:
        _write_rows(records, args.out)
    else:
        print(format_chain(records))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="audioclip", description="AudioCLIP: embed, classify, query, convert")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("--checkpoint", "-c", help="checkpoint file (official .pt or .safetensors)")
        sp.add_argument("--preset", default=None, help="architecture preset (default: from the checkpoint, else audioclip-rn50)")
        sp.add_argument("--input-scale", choices=INPUT_SCALES, default=None,
                        help="how [-1,1] audio is fed: 'unit' (released weights, default) or 'int16' (x32768)")
        sp.add_argument("--window", type=float, default=10.0, help="longer audio is embedded in windows of this many seconds")
        sp.add_argument("--hop", type=float, default=5.0, help="hop between windows, seconds")
        sp.add_argument("--batch-size", type=int, default=8)
        sp.add_argument("--template", default="{}", help="prompt template for texts, e.g. 'the sound of {}'")
        sp.add_argument("--out", "-o", help="output file (.json, .csv, .parquet); default: JSON on stdout")
        sp.add_argument("--fast", action="store_true",
                        help="compile the audio backbone (about 2x the clips/s on a CPU after a one-off "
                             "30-40 s compilation: worth it from a few hundred clips)")
        sp.add_argument("--bf16", action="store_true",
                        help="like --fast, with the backbone in bfloat16 (about 5x; embeddings within "
                             "cosine 0.9999 of float32; the fbsp front end stays float32)")

    sp = sub.add_parser("embed", help="embed audio/image files and texts")
    model_args(sp)
    sp.add_argument("files", nargs="*")
    sp.add_argument("--text", action="append", help="a text to embed (repeatable)")
    sp.set_defaults(func=cmd_embed)

    sp = sub.add_parser("classify", help="zero-shot classification of audio/image files")
    model_args(sp)
    sp.add_argument("files", nargs="+")
    sp.add_argument("--labels", help="comma-separated class names")
    sp.add_argument("--labels-file", help="file with one class name per line")
    sp.add_argument("--top-k", type=int, default=3)
    sp.set_defaults(func=cmd_classify)

    sp = sub.add_parser("query", help="rank files by a text or by a query file")
    model_args(sp)
    sp.add_argument("files", nargs="+", help="the collection to search")
    sp.add_argument("--text", action="append", help="query text (repeatable)")
    sp.add_argument("--query-file", action="append", help="query audio/image file (repeatable)")
    sp.add_argument("--top-k", type=int, default=5)
    sp.set_defaults(func=cmd_query)

    sp = sub.add_parser("lineage", help="trace a checkpoint to its data and code, or a clip to its checkpoints")
    sp.add_argument("checkpoint", nargs="?", help="a checkpoint written by a training stage")
    sp.add_argument("--clip", help="an AudioSet YouTube id (or segment id, or ESC-50/US8K file name)")
    sp.add_argument("--data-root", help="where to look for checkpoints (default AUDIOCLIP_DATA_ROOT or ./data)")
    sp.add_argument("--out", "-o", help="write JSON/CSV/parquet instead of text")
    sp.set_defaults(func=cmd_lineage)

    sp = sub.add_parser("convert", help="convert a checkpoint between layouts")
    sp.add_argument("src")
    sp.add_argument("dst", help=".safetensors (our format, with metadata) or .pt (official layout)")
    sp.add_argument("--layout", choices=("audioclip", "clip", "esrnxfbsp"), default=None)
    sp.add_argument("--preset", default=None)
    sp.set_defaults(func=cmd_convert)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import AudioDecodeError, CheckpointError, LineageError

    try:
        args.func(args)
    except (CheckpointError, AudioDecodeError, FileNotFoundError, LineageError) as exc:
        print(f"audioclip: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
