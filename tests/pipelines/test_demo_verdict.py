"""`make demo` ends with the verdict; `STRICT=1` (`--strict`) turns a failed claim into exit 3,
while by default the exit status says only whether the pipeline ran."""

import pandas as pd
import pytest

TABLES = ("table1_esresnext", "table2_audioclip", "table3_zero_shot", "table4_querying")


def _row(model, task, dataset, metric, value, chance, fold="mean"):
    return dict(
        table="t", model=model, task=task, dataset=dataset, metric=metric, fold=fold, value=value, chance=chance, n=10
    )


def _write_tables(layout, fine_tuned: float) -> None:
    rows = {
        "table1_esresnext": [_row("ESResNeXt", "classification", "AudioSet", "mAP", 0.7, 0.2)],
        "table2_audioclip": [
            _row(f"AudioCLIP ({m})", "fine-tuned", "ESC50", "accuracy", fine_tuned, 0.1, fold)
            for m in ("partial", "full")
            for fold in ("1", "2", "mean")
        ],
        "table3_zero_shot": [
            _row(f"AudioCLIP ({m})", "zero-shot", "ESC50", "accuracy", 0.5, 0.1, fold)
            for m in ("partial", "full")
            for fold in ("1", "2", "mean")
        ],
        "table4_querying": [
            _row("AudioCLIP (full)", task, "AudioSet", metric, 0.5, 0.1 if metric == "R@1" else 0.2)
            for task in ("image by text", "audio by text", "audio by image", "image by audio")
            for metric in ("P@1", "R@1", "mAP")
        ],
    }
    layout.tables_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        pd.DataFrame(rows[name]).to_parquet(layout.table(name))
        layout.table(name, ".md").write_text(f"# {name}\n\n| model |\n|---|\n| x |\n", encoding="utf-8")


@pytest.mark.parametrize("fine_tuned, strict, code", [(0.6, True, 0), (0.4, False, 0), (0.4, True, 3)])
def test_strict_demo_exits_non_zero_when_a_claim_fails(tmp_path, monkeypatch, capsys, fine_tuned, strict, code):
    from audioclip_core.evaluation import report
    from audioclip_core.layout import DataLayout
    from pipelines import backfill, demo

    monkeypatch.setenv("AUDIOCLIP_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("STRICT", raising=False)
    layout = DataLayout.at(None)
    _write_tables(layout, fine_tuned)
    monkeypatch.setattr(backfill, "run_lineage", lambda *a, **k: True)  # the pipeline ran
    monkeypatch.setattr(report, "render_tables", lambda tables: "the tables")
    monkeypatch.setattr(demo, "promotion_summary", lambda layout: {"text": "", "rejected": False, "example": None})
    assert demo.main(["--strict"] if strict else []) == code
    out = capsys.readouterr()
    verdict = "[FAILS] fine-tuning beats zero-shot  (margin -10.0)" if fine_tuned < 0.5 else "[holds] fine-tuning"
    assert verdict in out.out
    assert ("STRICT: 1 claim(s) of the verdict failed" in out.err) == (code == 3)
