"""The four table assets from trained checkpoints and from released-layout checkpoint files."""

import dagster as dg
import pandas as pd
import torch


def _assert_figures_embedded(name: str, meta: dict) -> None:
    """Every table's figures on its asset page with no server behind them: a summary chart (Table
    3's one figure), every confusion matrix of Tables 1-2 on grids with their count, each image a
    small PNG data URI - no link to a port."""
    import re
    from pathlib import Path

    values = {k: v.value for k, v in meta.items()}
    folder = Path(values["plots_folder"])
    uris = {k: re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", str(v)) for k, v in values.items()}
    assert uris["summary_plot"], f"{name}: no embedded summary plot"
    assert all(len(u) * 3 / 4 <= 100_000 for us in uris.values() for u in us), f"{name}: an embedded PNG over 100 KB"
    assert not any("127.0.0.1:5000" in str(v) for k, v in values.items() if k != "mlflow_run"), name
    confusions = sorted(folder.glob("confusion_*.png"))
    if name in ("table1_esresnext", "table2_audioclip"):
        md = values["confusion_matrices"]
        count = int(re.search(r"\*\*(\d+) confusion matrices\*\*", md).group(1))
        assert count >= 1 and len(uris["confusion_matrices"]) >= 1
        grids = sorted(folder.glob(f"{name}_grid_*.png"))
        assert len(grids) == len(uris["confusion_matrices"]) and confusions


def test_evaluation_tables_from_trained_and_released_checkpoints(lineage, stage_outputs, tmp_path, monkeypatch):
    import duckdb

    import audioclip_core as ac
    from assets import evaluation

    res = dict(lineage["res"])
    for stage, meta in stage_outputs.items():  # the training curves embedded, not only linked
        if isinstance(meta, dict) and "curves_file" in meta:
            assert meta["curves_plot"].startswith("![training curves](data:image/png;base64,"), stage
    extra = {"ESResNeXt (a copy)": str(stage_outputs["esresnext_audioset"]["checkpoint"])}
    for table in (evaluation.table1_esresnext, evaluation.table2_audioclip, evaluation.table3_zero_shot):
        name = table.key.to_user_string()
        cfg = evaluation.EvalConfig(
            audioset_partition="balanced_train",
            esresnext_checkpoints=extra if table is evaluation.table1_esresnext else {},
        )
        result = dg.materialize(
            [table], resources=res, instance=dg.DagsterInstance.ephemeral(), run_config=dg.RunConfig(ops={name: cfg})
        )
        assert result.success
        md = result.asset_materializations_for_node(name)[-1].metadata["table"].value
        assert "| model | task |" in md
        protocol = result.asset_materializations_for_node(name)[-1].metadata["protocol"].value
        assert protocol["clip_seconds"] == {"esc50": 5.0, "us8k": 4.0} and protocol["input_scale"]["us8k"] == "minmax"
        _assert_figures_embedded(name, result.asset_materializations_for_node(name)[-1].metadata)
    # Table 1: a row for an extra ESResNeXt checkpoint (here the trained one again: the same
    # mAP), and one for the weights kept after 4 epochs (keep_epochs, set by the fixture) - it
    # trains 4, so they are the final weights: the same mAP again
    t1 = pd.read_parquet(lineage["data"] / "tables" / "table1_esresnext.parquet")
    maps = t1[(t1["dataset"] == "AudioSet") & (t1["metric"] == "mAP")].set_index("model")["value"]
    assert set(maps.index) == {"ESResNeXt", "ESResNeXt (4 epochs)", "ESResNeXt (a copy)"} and maps.notna().all()
    assert maps["ESResNeXt"] == maps["ESResNeXt (a copy)"] == maps["ESResNeXt (4 epochs)"]
    # Table 2: fine-tuned rows after partial and after full training (fold 2 trained from each)
    t2 = pd.read_parquet(lineage["data"] / "tables" / "table2_audioclip.parquet")
    ft = t2[(t2["task"] == "fine-tuned") & (t2["dataset"] == "ESC50") & (t2["fold"] == "2")]
    assert set(ft["model"]) == {"AudioCLIP (partial)", "AudioCLIP (full)"} and ft["value"].notna().all()
    con = duckdb.connect(str(lineage["data"] / "catalog.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT model, dataset, fold, value FROM table1_esresnext WHERE metric = 'accuracy' AND fold = '2'"
    ).fetchall()
    assert rows and 0.0 <= rows[0][3] <= 1.0  # the one fold the fixture trained
    zs = con.execute(
        "SELECT value FROM table3_zero_shot WHERE model = 'AudioCLIP (full)' AND fold = 'mean' AND dataset = 'ESC50'"
    ).fetchall()
    assert zs and zs[0][0] is not None
    con.close()
    # the released-weights path: checkpoint files in the official layout, no trained assets
    from audioclip_core.evaluation import classification

    embedded = []  # the ClipSetEmbeddings of every clip set, per run
    real_embed = classification.embed_clipset
    monkeypatch.setattr(
        classification, "embed_clipset", lambda *a, **kw: embedded.append(real_embed(*a, **kw)) or embedded[-1]
    )
    full = ac.export_official(ac.load_model(stage_outputs["audioclip_full"]["checkpoint"]), tmp_path / "Full.pt")
    cfg = evaluation.EvalConfig(
        full_checkpoint=str(full), partial_checkpoint=str(full), template="the sound of {}", preset="audioclip-demo"
    )
    result = dg.materialize(
        [evaluation.table3_zero_shot],
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        run_config=dg.RunConfig(ops={"table3_zero_shot": cfg}),
    )
    assert result.success
    df = pd.read_parquet(lineage["data"] / "tables" / "table3_zero_shot.parquet")
    esc = df[(df["dataset"] == "ESC50") & (df["fold"] == "mean")]
    assert len(esc) == 2 and esc["value"].notna().all()
    # the same table with compiled audio backbones (frozen weights, BatchNorm folded)
    from audioclip_core.models.esresnext import ESResNeXt

    compiled = []
    real = ESResNeXt.enable_fast_inference
    monkeypatch.setattr(
        ESResNeXt, "enable_fast_inference", lambda self, **kw: compiled.append(self) or real(self, **kw)
    )
    fast = cfg.model_copy(update={"fast_inference": True})
    eager_runs = len(embedded)
    result = dg.materialize(
        [evaluation.table3_zero_shot],
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        run_config=dg.RunConfig(ops={"table3_zero_shot": fast}),
    )
    assert result.success
    assert len(compiled) == 2  # the partial and the full model
    df_fast = pd.read_parquet(lineage["data"] / "tables" / "table3_zero_shot.parquet")
    # Compiled float32 code sums in another order than eager code (and folds BatchNorm into the
    # convolutions), so embeddings differ by rounding: ~1e-6 on the machines seen, 1e-3 bounds
    # it with a wide margin, while a wrong compiled graph moves unit vectors by O(0.1). The
    # tables need not be equal to the last digit: a clip whose two best class scores are closer
    # than twice its embedding's change (|t| = 1, so each cosine moves by at most |da|) may
    # flip; every other prediction must agree, and each accuracy can move by at most
    # (such clips) / n.
    assert len(embedded) == 2 * eager_runs
    near_ties = 0
    for eager, fast_emb in zip(embedded[:eager_runs], embedded[eager_runs:]):
        a_eager, text, ids = eager.audio, eager.text, eager.class_ids
        a_fast, text_fast, ids_fast = fast_emb.audio, fast_emb.text, fast_emb.class_ids
        assert torch.equal(ids, ids_fast) and torch.equal(text, text_fast)  # text towers are not compiled
        moved = (a_fast - a_eager).norm(dim=-1)
        assert float(moved.max()) < 1e-3, float(moved.max())
        scores, scores_fast = a_eager @ text.T, a_fast @ text.T
        top2 = scores.topk(2, dim=-1).values
        tie = (top2[:, 0] - top2[:, 1]) <= 2 * moved
        near_ties += int(tie.sum())
        assert torch.equal(scores.argmax(-1)[~tie], scores_fast.argmax(-1)[~tie])
    assert list(df_fast["model"]) == list(df["model"]) and list(df_fast["fold"]) == list(df["fold"])
    allowed = near_ties / df["n"].min() + 1e-12
    assert float((df_fast["value"] - df["value"]).abs().max()) <= allowed, (near_ties, df, df_fast)


def test_table_functions_build_what_the_assets_publish(lineage, stage_outputs):
    """audioclip_core.evaluation.tables, called as from a notebook on the data root's
    checkpoints and manifests, gives exactly the rows the table asset publishes."""
    from assets import evaluation
    from audioclip_core.evaluation import tables
    from audioclip_core.layout import DataLayout

    result = dg.materialize(
        [evaluation.table3_zero_shot], resources=dict(lineage["res"]), instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    layout = DataLayout.at(lineage["data"])
    mine = tables.table3_zero_shot(
        {
            "partial": tables.existing(layout.checkpoint("audioclip_partial")),
            "full": tables.existing(layout.checkpoint("audioclip_full")),
        },
        {n: tables.clipset_table(layout, n) for n in tables.CLIPSETS},
    )
    published = pd.read_parquet(layout.table("table3_zero_shot"))
    assert mine.rows["value"].notna().any()
    pd.testing.assert_frame_equal(mine.rows.reset_index(drop=True), published, check_dtype=False)
