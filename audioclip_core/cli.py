"""The `audioclip` command: embed, classify, query and convert.

    audioclip classify --checkpoint AudioCLIP-Full-Training.pt --labels "dog,rain,car horn" clips/*.wav
    audioclip embed --checkpoint ckpt.safetensors clips/*.wav images/*.jpg --out emb.parquet
    audioclip query --checkpoint ckpt.safetensors --text "a dog barking" clips/*.wav
    audioclip convert AudioCLIP-Full-Training.pt full.safetensors

The checkpoint can also be given by the AUDIOCLIP_CHECKPOINT environment variable, and as a
registered model of the data root's MLflow store (`--checkpoint models:/audioclip@champion`). A
checkpoint written by a training stage is compared with its lineage record as it is loaded:
one whose bytes differ is still used, with a warning on stderr naming both digests.
Exit status: 0 every input answered, 1 an error (nothing answered), 2 wrong arguments or a
missing one (no checkpoint, labels or query), 3 some inputs failed (each has a row saying why; the others are answered),
4 `lineage`: a checkpoint of the chain differs from its record (MISMATCH), 5 `lineage --clip`:
the id is in no manifest of the data root, 141 stdout closed early (`| head`): stopped quietly.
"""

from __future__ import annotations

import argparse
import json
import math
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


OUTPUT_FORMATS = (".json", ".csv", ".parquet")

# exit statuses (also in the README)
EXIT_OK = 0  # every input answered
EXIT_ERROR = 1  # nothing answered: a bad checkpoint, labels, output path, ...
EXIT_USAGE = 2  # wrong arguments (argparse's own status), or a missing one: checkpoint, labels, query
EXIT_PARTIAL = 3  # some inputs failed: their rows say why; every other input is answered
EXIT_MISMATCH = 4  # `lineage`: a checkpoint's bytes differ from its lineage record (the chain is printed)
EXIT_UNKNOWN = 5  # `lineage --clip`: the id is in no manifest of the data root (unknown, not merely unused)
EXIT_PIPE = 141  # stdout was closed early (`| head`): stop quietly, as a process killed by SIGPIPE


def _finite(obj):
    """JSON has no NaN/Inf: such floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _write_rows(rows: list[dict], out: Optional[str]) -> None:
    rows = _finite(rows)
    if not out or out == "-":
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False, allow_nan=False)
        sys.stdout.write("\n")
        return
    from .files import atomic_write

    path = Path(out)
    suffix = path.suffix.lower()
    with atomic_write(path) as tmp:  # a complete file or none: never half an output
        if suffix == ".json":
            tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
        else:
            import pandas as pd

            df = pd.DataFrame(rows)
            if suffix == ".csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_parquet(tmp, index=False)
    print(f"wrote {len(rows)} rows to {path}", file=sys.stderr)


def _load(args):
    from . import load_model
    from .perf import tune_malloc

    ckpt = args.checkpoint or os.environ.get("AUDIOCLIP_CHECKPOINT")
    if not ckpt:
        sys.stderr.write(NO_CHECKPOINT)
        raise SystemExit(EXIT_USAGE)
    model = load_model(ckpt, preset=args.preset, allow_non_finite=args.allow_non_finite_weights)
    _warn_if_changed(ckpt)
    tune_malloc()  # this process embeds large batches: reuse freed activations (perf.py)
    if args.fast or args.bf16:
        model.audio.enable_fast_inference(bf16=args.bf16)
    return model


def _warn_if_changed(path) -> None:
    """A checkpoint of ours whose bytes differ from its lineage record is still used, with a
    warning naming the file and both digests (one hash of the file; none without a record)."""
    from .errors import LineageError
    from .lineage import MISMATCH, verify_checkpoint

    try:
        check = verify_checkpoint(Path(path))
    except LineageError as exc:
        print(f"audioclip: warning: {exc}; the checkpoint is used unverified", file=sys.stderr)
        return
    if check.state == MISMATCH:
        print(f"audioclip: warning: {check}; answering with the file as it is", file=sys.stderr)


def split_labels(text: str) -> list[str]:
    """Class names from one --labels value: comma-separated, CSV-style quoting for names that
    hold a comma (`'"Beep, bleep",Drum'` is two names; `""` inside quotes is one `"`)."""
    import csv
    import re

    text = re.sub(r'"\s+(?=,|$)', '"', text.strip())  # spaces after a closing quote: `"a, b" , c`
    rows = list(csv.reader([text], skipinitialspace=True, strict=True))
    return [s.strip() for s in (rows[0] if rows else []) if s.strip()]


def _warn_split_class_names(names: list[str]) -> None:
    """Say so when two neighbouring names of an unquoted --labels are one AudioSet class name
    split at its comma ("Beep, bleep"): the answer is still given, for the names as split."""
    import csv

    path = Path(__file__).parent / "resources" / "audioset" / "class_labels_indices.csv"
    try:
        with path.open(encoding="utf-8", newline="") as f:
            known = {row[2] for row in csv.reader(f) if len(row) > 2}
    except OSError:
        return
    for a, b in zip(names, names[1:]):
        if f"{a}, {b}" in known or f"{a},{b}" in known:
            print(
                f"audioclip: warning: --labels split the AudioSet class '{a}, {b}' at its comma into two "
                f"classes; quote it to keep it whole: --labels '\"{a}, {b}\",...' (or --label '{a}, {b}')",
                file=sys.stderr,
            )


def _labels(args) -> list[str]:
    from .errors import InputError, check_input_file

    labels: list[str] = []
    for text in args.labels or []:
        try:
            names = split_labels(text)
        except Exception as exc:  # csv.Error: an unclosed quote, ...
            raise UserError(f'--labels {text!r}: {exc}; quote a name holding a comma as "Beep, bleep"') from exc
        _warn_split_class_names(names)
        labels += names
    labels += [s.strip() for s in args.label or [] if s.strip()]
    if args.labels_file:
        check_input_file(args.labels_file, "labels file")
        try:
            text = Path(args.labels_file).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{args.labels_file}: labels file is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from exc
        labels += [s.strip() for s in text.splitlines() if s.strip()]
    if not labels:
        raise MissingArgument("give class names with --labels a,b,c, --label NAME (repeatable) or --labels-file FILE")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise UserError(f"class names given twice: {', '.join(map(repr, twice))}")
    return labels


def _audio_options(args, model) -> dict:
    from .inference import resolve_input_scale

    return {
        "input_scale": resolve_input_scale(model, args.protocol, args.input_scale),
        "window_seconds": args.window,
        "hop_seconds": args.hop,
        "batch_size": args.batch_size,
        "progress": sys.stderr.isatty(),  # bars for a person watching, none in a redirected log
    }


def _report(res, args) -> None:
    """Name the failed inputs on stderr; the exit status then says some failed."""
    if res.failed:
        print(
            f"audioclip: {len(res.failed)} of {len(res.paths)} inputs failed (their rows say why; "
            f"exit status {EXIT_PARTIAL}):",
            file=sys.stderr,
        )
        for i in res.failed:
            print(f"  {res.errors[i]}", file=sys.stderr)
        args.partial = True


def _status(error: Optional[str]) -> dict:
    return {"status": "ok" if error is None else "error", "error": error}


def cmd_embed(args) -> None:
    from .inference import embed_texts, try_embed_files

    if not args.files and not args.text:
        raise UserError("embed: give files and/or --text")
    model = _load(args)
    rows = []
    if args.files:
        res = try_embed_files(model, args.files, **_audio_options(args, model))
        rows += [
            {"item": f, "modality": k, **_status(err), "embedding": None if err else e.tolist()}
            for f, k, e, err in zip(res.paths, res.kinds, res.embeddings, res.errors)
        ]
        _report(res, args)
    if args.text:
        emb = embed_texts(model, args.text, template=args.template, truncate=args.truncate)
        rows += [
            {"item": t, "modality": "text", **_status(None), "embedding": e.tolist()} for t, e in zip(args.text, emb)
        ]
    _write_rows(rows, args.out)


def cmd_classify(args) -> None:
    from .inference import embed_texts, try_embed_files, zero_shot_probabilities

    labels = _labels(args)
    model = _load(args)
    label_emb = embed_texts(model, labels, template=args.template, truncate=args.truncate)
    res = try_embed_files(model, args.files, **_audio_options(args, model))
    rows = []
    for f, kind, e, err in zip(res.paths, res.kinds, res.embeddings, res.errors):
        if err is not None:
            rows.append({"file": f, "modality": kind, **_status(err), "label": None, "probability": None, "top": None})
            continue
        probs = zero_shot_probabilities(model, e[None], label_emb, modality=kind)[0]
        top = probs.topk(min(args.top_k, len(labels)))
        rows.append(
            {
                "file": f,
                "modality": kind,
                **_status(None),
                "label": labels[int(top.indices[0])],
                "probability": round(float(top.values[0]), 6),
                "top": [
                    {"label": labels[int(i)], "probability": round(float(p), 6)}
                    for p, i in zip(top.values, top.indices)
                ],
            }
        )
    if args.out and Path(args.out).suffix.lower() in (".csv", ".parquet"):
        for r in rows:
            r["top"] = None if r["top"] is None else json.dumps(_finite(r["top"]), ensure_ascii=False)
    _report(res, args)
    _write_rows(rows, args.out)


def cmd_query(args) -> None:
    from .inference import embed_texts, rank, score_reference, try_embed_files

    if not args.text and not args.query_file:
        raise MissingArgument("query: give --text or --query-file")
    model = _load(args)
    cand = try_embed_files(model, args.files, **_audio_options(args, model))
    rows = [
        {
            "query": None,
            "rank": None,
            "item": cand.paths[i],
            "modality": cand.kinds[i],
            "score": None,
            **_status(cand.errors[i]),
        }
        for i in cand.failed
    ]
    _report(cand, args)
    if args.text:
        queries, names = embed_texts(model, args.text, template=args.template, truncate=args.truncate), list(args.text)
    else:
        q = try_embed_files(model, args.query_file, **_audio_options(args, model))
        rows += [
            {
                "query": q.paths[i],
                "rank": None,
                "item": None,
                "modality": q.kinds[i],
                "score": None,
                **_status(q.errors[i]),
            }
            for i in q.failed
        ]
        _report(q, args)
        queries, names = q.embeddings[q.ok], [q.paths[i] for i in q.ok]
    ok = cand.ok
    if ok and len(names):
        everything = queries @ cand.embeddings[ok].T  # each query against every candidate
        scores, idx = rank(queries, cand.embeddings[ok], args.top_k)
        for qi, name in enumerate(names):
            best = None
            for r, (s, i) in enumerate(zip(scores[qi], idx[qi]), start=1):
                j = ok[int(i)]
                median, spread, z = score_reference(everything[qi], int(i))
                best = z if best is None else best
                rows.append(
                    {
                        "query": name,
                        "rank": r,
                        "item": cand.paths[j],
                        "modality": cand.kinds[j],
                        "score": round(float(s), 6),
                        "z": None if z is None else round(z, 2),
                        "others_median": None if median is None else round(median, 6),
                        "others_spread": None if spread is None else round(spread, 6),
                        **_status(None),
                    }
                )
            print(f"audioclip: query {name!r}: {_verdict(best, len(ok))}", file=sys.stderr)
    _write_rows(rows, args.out)


STANDS_OUT = 3.0  # z of the best candidate from which `query` calls it a match, not noise


def _verdict(z: Optional[float], n: int) -> str:
    if z is None:
        return f"{n} candidates: too few to tell a match from noise (z needs 4 or more that differ)"
    if z >= STANDS_OUT:
        return f"the best candidate stands out from the other {n - 1} (z {z:.1f}): likely a match"
    return (
        f"no candidate stands out from the other {n - 1} (best z {z:.1f}, under {STANDS_OUT:g}): "
        "the top scores are within the spread of the rest, no better than a random pairing"
    )


def cmd_convert(args) -> None:
    from .checkpoints import convert

    dst = Path(args.dst)
    if dst.is_dir():
        raise UserError(f"convert: {dst} is a directory; give the output file's name (.safetensors or .pt)")
    if dst.suffix.lower() not in (".safetensors", ".pt", ".pth"):
        raise UserError(
            f"convert: unknown output format {dst.suffix or '(none)'!r} for {dst}; "
            "use .safetensors (this project's format) or .pt (the official layout)"
        )
    path, layout = convert(
        args.src, args.dst, layout=args.layout, preset=args.preset, allow_non_finite=args.allow_non_finite_weights
    )
    _warn_if_changed(args.src)
    print(f"wrote {path} ({layout})")


def cmd_lineage(args) -> None:
    import time

    from .lineage import HELD_OUT, MISMATCH, TRAINED_ON_IT, chain, checkpoints_for_clip, format_chain, verify_chain

    if args.clip:
        from .layout import DataLayout

        root = DataLayout.at(args.data_root).root
        start = time.perf_counter()
        skipped: list[str] = []
        listed: list[str] = []
        hits = checkpoints_for_clip(args.clip, root, skipped, listed)
        for reason in skipped:
            print(f"audioclip: skipped (damaged): {reason}", file=sys.stderr)
        if skipped:
            args.partial = True
        if not listed:  # told apart from a clip that is known but unused
            print(
                f"audioclip: {args.clip!r} is in none of the {'readable ' if skipped else ''}manifests under "
                f"{root}: not a clip id this data root knows (an AudioSet YouTube id or segment id, or an "
                f"ESC-50/US8K file name; exit status {EXIT_PARTIAL if skipped else EXIT_UNKNOWN})",
                file=sys.stderr,
            )
            if not skipped:  # with records skipped the search was partial: status 3, 0 checkpoints
                args.unknown = True
                return
        rows = [{"checkpoint": h.checkpoint, "name": h.name, "sha256": h.sha256, "via": h.via} for h in hits]
        if args.out:
            _write_rows(rows, args.out)
        else:
            trained = sum(h.via == TRAINED_ON_IT for h in hits)
            held = sum(h.via.startswith(HELD_OUT) for h in hits)
            uses = f"{trained} trained on it" + (f", {held} held it out for validation" if held else "")
            if len(hits) - trained - held:
                uses += f", {len(hits) - trained - held} descend from one of those"
            manifests = f"{len(listed)} manifest{'s' if len(listed) != 1 else ''}"
            print(
                f"{len(hits)} checkpoints from data holding {args.clip}: {uses} (listed in {manifests}; "
                f"searched {root} in {time.perf_counter() - start:.2f} s){':' if hits else ''}"
            )
            name_w = max((len(h.name) for h in hits), default=0)
            path_w = max((len(h.checkpoint) for h in hits), default=0)
            for h in hits:
                print(f"  {h.name:<{name_w}}  {h.checkpoint:<{path_w}}  ({h.via})")
        return
    if not args.checkpoint:
        raise MissingArgument("lineage: give a CHECKPOINT, or --clip YTID")
    if args.clips:
        from .lineage import clips_of

        rows = clips_of(Path(args.checkpoint))
        if args.out:
            _write_rows(rows, args.out)
        else:
            for name in dict.fromkeys(r["manifest"] for r in rows):
                mine = [r for r in rows if r["manifest"] == name]
                held = [r for r in mine if r.get("use") != "trained on"]
                print(
                    f"{name} (sha256 {mine[0]['sha256'][:16]}): {len(mine) - len(held)} clips trained on"
                    + (f", {len(held)} held out for validation (marked *)" if held else "")
                )
                for r in mine:
                    print(f"  {r['clip']}" + (" *" if r.get("use") != "trained on" else ""))
        return
    records = chain(Path(args.checkpoint))
    checks = verify_chain(Path(args.checkpoint), records)
    if args.out:
        _write_rows([{**r, "file_check": c.state if c else "not found"} for r, c in zip(records, checks)], args.out)
    else:
        print(format_chain(records, checks))
    for c in checks:
        if c is not None and c.state == MISMATCH:
            print(f"audioclip: warning: {c}", file=sys.stderr)
            args.mismatch = True


class UserError(Exception):
    """A mistake in how the command was called: one line, no traceback, exit status 1."""


class MissingArgument(UserError):
    """A required input of the command not given (labels, a query, a checkpoint): exit status 2,
    as argparse's for wrong arguments."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _output_file(text: str) -> str:
    if text == "-":
        return text
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a directory; give a file name ending in " + ", ".join(OUTPUT_FORMATS)
        )
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"unknown output format {path.suffix or '(none)'!r}; use " + ", ".join(OUTPUT_FORMATS)
        )
    return text


EPILOG = f"""exit status: {EXIT_OK} every input answered; {EXIT_ERROR} an error, nothing answered (a bad
checkpoint, labels or output path); {EXIT_USAGE} wrong arguments or no checkpoint; {EXIT_PARTIAL} some
inputs failed - each has a row with status "error" and the reason, every other input is answered;
{EXIT_MISMATCH} lineage: a checkpoint differs from its lineage record (MISMATCH); {EXIT_UNKNOWN} lineage
--clip: the id is in no manifest of the data root (a known clip no checkpoint trained on is 0);
{EXIT_PIPE} stdout closed early (e.g. piped into head), said nothing more.
AUDIOCLIP_DEBUG=1 shows tracebacks."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="audioclip", description="AudioCLIP: embed, classify, query, convert", epilog=EPILOG
    )
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument(
            "--checkpoint",
            "-c",
            help="checkpoint file (official .pt or .safetensors), or a registered model: models:/audioclip@champion",
        )
        sp.add_argument(
            "--preset", default=None, help="architecture preset (default: from the checkpoint, else audioclip-rn50)"
        )
        sp.add_argument(
            "--input-scale",
            choices=INPUT_SCALES,
            default=None,
            help="how [-1,1] audio is fed: 'int16' (x32768), 'minmax' (each clip min-max scaled to the "
            "int16 range) or 'unit' (unscaled). Default: what the checkpoint records, else the "
            "--protocol's, else int16 - the rule the evaluation tables apply",
        )
        sp.add_argument(
            "--protocol",
            choices=("esc50", "us8k"),
            default=None,
            help="the files are clips of this dataset: use its published loader's input scale "
            "(ESC-50 int16, UrbanSound8K minmax) when the checkpoint records none, as Table 3 does",
        )
        sp.add_argument(
            "--window",
            type=_positive_float,
            default=10.0,
            help="longer audio is embedded in windows of this many seconds",
        )
        sp.add_argument("--hop", type=_positive_float, default=5.0, help="hop between windows, seconds")
        sp.add_argument(
            "--batch-size",
            type=_positive_int,
            default=2,
            help="windows of a long file (and images) embedded at once (default 2: the "
            "model plus ~0.25 GB per window for the paper preset); memory grows "
            "with it, never with the length of the file",
        )
        sp.add_argument("--template", default="{}", help="prompt template for texts, e.g. 'the sound of {}'")
        sp.add_argument(
            "--truncate",
            action="store_true",
            help="cut texts longer than the text tower's 77 tokens (default: refuse them)",
        )
        sp.add_argument(
            "--out", "-o", type=_output_file, help="output file (.json, .csv, .parquet); default: JSON on stdout"
        )
        sp.add_argument(
            "--fast",
            action="store_true",
            help="compile the audio backbone (about 2x the clips/s on a CPU after a one-off "
            "30-40 s compilation: worth it from a few hundred clips)",
        )
        sp.add_argument(
            "--bf16",
            action="store_true",
            help="like --fast, with the backbone in bfloat16 (about 5x; embeddings within "
            "cosine 0.9999 of float32; the fbsp front end stays float32)",
        )
        sp.add_argument(
            "--allow-non-finite-weights",
            action="store_true",
            help="load a checkpoint even if some weights are NaN/Inf (for debugging)",
        )

    def sub_parser(name, help):
        return sub.add_parser(name, help=help, description=help, epilog=EPILOG)

    sp = sub_parser("embed", "embed audio/image files and texts")
    model_args(sp)
    sp.add_argument("files", nargs="*")
    sp.add_argument("--text", action="append", help="a text to embed (repeatable)")
    sp.set_defaults(func=cmd_embed)

    sp = sub_parser("classify", "zero-shot classification of audio/image files")
    model_args(sp)
    sp.add_argument("files", nargs="+")
    sp.add_argument(
        "--labels",
        action="append",
        help="comma-separated class names; quote a name that holds a comma, CSV-style: "
        "--labels '\"Beep, bleep\",Drum' is two classes (repeatable)",
    )
    sp.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="one class name, commas kept (repeatable): --label 'Beep, bleep' --label Drum",
    )
    sp.add_argument(
        "--labels-file",
        help="file with one class name per line, commas kept (the demo's ten classes: "
        "<data root>/labels/demo_classes.txt)",
    )
    sp.add_argument("--top-k", type=_positive_int, default=3, help="labels per file (default: 3)")
    sp.set_defaults(func=cmd_classify)

    sp = sub_parser(
        "query",
        "rank files by a text or by a query file. Each row holds the cosine score and a reference: "
        "others_median / others_spread, the median of the query's scores on every other candidate "
        "(a random pairing in this collection) and their median absolute deviation scaled to a "
        "standard deviation, and z = (score - others_median) / others_spread. z near 0: no more a "
        "match than any other file; 3 or more: it stands out (stderr says which per query). A raw "
        "cosine alone means little: its level depends on the checkpoint and the modality pair",
    )
    model_args(sp)
    sp.add_argument("files", nargs="+", help="the collection to search")
    sp.add_argument("--text", action="append", help="query text (repeatable)")
    sp.add_argument("--query-file", action="append", help="query audio/image file (repeatable)")
    sp.add_argument("--top-k", type=_positive_int, default=5, help="results per query (default: 5)")
    sp.set_defaults(func=cmd_query)

    sp = sub_parser(
        "lineage",
        "trace a checkpoint to its data and code (each checkpoint file of the chain "
        "VERIFIED or MISMATCH against its record), or a clip to its checkpoints",
    )
    sp.add_argument(
        "checkpoint", nargs="?", help="a checkpoint written by a training stage, or a models:/ URI of the registry"
    )
    sp.add_argument("--clip", help="an AudioSet YouTube id (or segment id, or ESC-50/US8K file name)")
    sp.add_argument(
        "--clips",
        action="store_true",
        help="list the clips CHECKPOINT was trained on, from the manifest "
        "versions its record names (unchanged after the manifests move on)",
    )
    sp.add_argument(
        "--data-root",
        help="where to look for checkpoints (default AUDIOCLIP_DATA_ROOT, else data/ of the checkout, as the pipeline)",
    )
    sp.add_argument("--out", "-o", type=_output_file, help="write JSON/CSV/parquet instead of text")
    sp.set_defaults(func=cmd_lineage)

    sp = sub_parser("convert", "convert a checkpoint between layouts")
    sp.add_argument("src")
    sp.add_argument("dst", help=".safetensors (our format, with metadata) or .pt (official layout)")
    sp.add_argument("--layout", choices=("audioclip", "clip", "esrnxfbsp"), default=None)
    sp.add_argument("--preset", default=None)
    sp.add_argument(
        "--allow-non-finite-weights",
        action="store_true",
        help="convert even if some weights are NaN/Inf (for debugging)",
    )
    sp.set_defaults(func=cmd_convert)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit status (`EXIT_*`)."""
    args = build_parser().parse_args(argv)
    from .errors import CheckpointError, InputError, LineageError, TextTooLongError

    args.partial = args.mismatch = args.unknown = False
    try:
        _resolve_model_uris(args)
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        return _closed_pipe()
    except TextTooLongError as exc:
        return _fail(
            f"text {exc.text[:60]!r} is {exc.tokens} tokens long, more than the text tower's "
            f"{exc.context_length}: shorten it, or pass --truncate to cut it",
            exc,
        )
    except (CheckpointError, InputError, LineageError, UserError, OSError, ValueError) as exc:
        # ValueError: what the library says of a bad value (an unknown preset, ...)
        return _fail(str(exc), exc, EXIT_USAGE if isinstance(exc, MissingArgument) else EXIT_ERROR)
    except KeyboardInterrupt:
        print("audioclip: interrupted", file=sys.stderr)
        return 130
    if args.mismatch:
        return EXIT_MISMATCH
    if args.unknown:
        return EXIT_UNKNOWN
    return EXIT_PARTIAL if args.partial else EXIT_OK


def _resolve_model_uris(args) -> None:
    """A checkpoint given as a `models:/` URI (`models:/audioclip@champion`, `models:/audioclip/3`)
    - by argument, `convert`'s source or AUDIOCLIP_CHECKPOINT - becomes the checkpoint file of
    that model in the MLflow store of the data root (downloaded once, its lineage beside it)."""
    from .registry import is_model_uri, resolve_checkpoint

    for attr in ("checkpoint", "src"):
        from_env = attr == "checkpoint" and args.func is not cmd_lineage  # lineage never reads the variable
        value = getattr(args, attr, None) or (os.environ.get("AUDIOCLIP_CHECKPOINT") if from_env else None)
        if value and is_model_uri(value):
            setattr(args, attr, str(resolve_checkpoint(value)))


def _closed_pipe() -> int:
    """The reader of stdout went away (`audioclip lineage ... | head`): nothing more to say.
    Stdout is pointed at /dev/null so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured stdout in tests)
        pass
    return EXIT_PIPE


def _fail(message: str, exc: BaseException, status: int = EXIT_ERROR) -> int:
    if os.environ.get("AUDIOCLIP_DEBUG"):
        raise exc
    lines = message.strip().splitlines() or [type(exc).__name__]
    print(f"audioclip: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
