"""What `make demo` prints of the tables (report.render_tables): the legend and the protocol
they share once, each table's own protocol statements under it, and a line on what its rows
can show - from the tables' markdown as report.render_markdown writes it."""

import pandas as pd

from audioclip_core.evaluation.report import FOOTER, PROTOCOL, render_markdown, render_tables, split_markdown

BASE = {
    "template": "{}",
    "input_scale": "int16",
    "clip_seconds": {"esc50": 5.0, "us8k": 4.0},
    "channels": {"esc50": 1, "us8k": 2},
    "folds": {"esc50": 5, "us8k": 10},
}


def _rows(*rows):
    return pd.DataFrame(
        [dict(zip(("model", "task", "dataset", "metric", "value"), r), fold="mean", chance=0.1, note="") for r in rows]
    )


def _md(name, df, protocol):
    return f"# {name}\n\n{render_markdown(df, protocol)}\n"


def tables():
    return {
        "table1_esresnext": _md(
            "table1_esresnext",
            _rows(
                ("ESResNeXt", "classification", "AudioSet", "mAP", 0.8),
                ("ESResNeXt (8 epochs)", "classification", "AudioSet", "mAP", 0.7),
                ("ESResNeXt", "fine-tuned", "ESC50", "accuracy", 0.6),
            ),
            BASE,
        ),
        "table2_audioclip": _md(
            "table2_audioclip",
            _rows(
                ("AudioCLIP (full)", "classification", "AudioSet", "mAP image", 1.0),
                ("AudioCLIP (full)", "classification", "AudioSet", "mAP audio", 0.8),
            ),
            BASE,
        ),
        "table3_zero_shot": _md(
            "table3_zero_shot", _rows(("AudioCLIP (full)", "zero-shot", "ESC50", "accuracy", 0.7)), BASE
        ),
        "table4_querying": _md(
            "table4_querying",
            _rows(("AudioCLIP (full)", "image by text", "AudioSet", "R@1", 0.2)),
            {**BASE, "audioset_partition": "eval", "query_rule": "same_labels"},
        ),
    }


def test_the_protocol_is_printed_once_with_each_tables_differences():
    out = render_tables(tables())
    assert out.count(FOOTER) == 1
    assert out.count(PROTOCOL) == 1 and out.count("prompt template `{}`") == 1
    assert out.count("ESC50 5 s x 1 ch, 5 official folds") == 1
    # Table 4's own statements, under Table 4 only
    t4 = out.split("## table4_querying")[1]
    assert "Protocol, in addition: AudioSet partition eval; AudioSet query relevance: same_labels" in t4
    assert out.count("AudioSet partition eval") == 1
    for name in tables():
        assert out.count(f"## {name}") == 1


def test_each_row_kind_is_explained_once():
    out = render_tables(tables())
    t1 = out.split("## table1_esresnext")[1].split("## table2_audioclip")[0]
    assert "ESResNeXt (8 epochs): the weights stage 1 kept after 8 of its epochs" in t1
    assert "shorter-trained" in t1
    t2 = out.split("## table2_audioclip")[1].split("## table3_zero_shot")[0]
    assert "a frame leaves two candidates" in t2  # what an image figure can show
    assert out.count("a frame leaves two candidates") == 1  # not again under Table 4's image rows
    assert out.count("AudioCLIP (partial): stage 2") == 1
    assert "R@1: its ceiling is 1 / (relevant items)" in out.split("## table4_querying")[1]


def test_split_markdown_reads_back_the_table_and_the_protocol():
    md = tables()["table4_querying"]
    table, parts = split_markdown(md)
    assert table[0].startswith("| model | task |") and len(table) == 3
    assert parts[0] == "prompt template `{}`" and parts[-1].startswith("AudioSet query relevance: same_labels")
