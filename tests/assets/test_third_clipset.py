"""A clip set beyond ESC-50 and UrbanSound8K takes a spec and the reader of its metadata rows:
its manifest, folds and shards assets, its folder and its DuckDB views follow from them."""

import dagster as dg
import duckdb
import numpy as np
import pytest
import soundfile as sf

from assets import clipsets, shards, sources
from assets.resources import DataRoot, DatasetSources
from audioclip_core.data import clipsets as data_clipsets
from audioclip_core.data.clipsets import ClipSetSpec
from audioclip_core.layout import DataLayout

LABELS = ("dog_bark", "siren")
FOLDS, PER_FOLD_CLASS = 3, 2
# a layout of its own: meta/labels.csv (file, split, label) + audio/<label>/<file>, 1 s mono 16 kHz;
# the reader derives the class id from the label
TINY = ClipSetSpec(
    name="tinyset",
    title="TinySet",
    metadata="meta/labels.csv",
    num_folds=FOLDS,
    row=lambda r: (f"audio/{r['label']}/{r['file']}", int(r["split"]), LABELS.index(r["label"]), r["label"]),
    expected_clips=FOLDS * len(LABELS) * PER_FOLD_CLASS,
    expected_fold_counts={k: len(LABELS) * PER_FOLD_CLASS for k in range(1, FOLDS + 1)},
    expected_per_class=FOLDS * PER_FOLD_CLASS,
    clip_seconds=1.0,
    channels=1,
    num_classes=len(LABELS),
    audio_layout="audio/<label>/",
)


def _generate(root):
    rng = np.random.default_rng(0)
    lines = ["file,split,label"]
    for fold in range(1, FOLDS + 1):
        for class_id, label in enumerate(LABELS):
            (root / "audio" / label).mkdir(parents=True, exist_ok=True)
            for i in range(PER_FOLD_CLASS):
                name = f"{fold}-{i}.wav"
                t = np.arange(16000) / 16000
                y = 0.3 * np.sin(2 * np.pi * (220 + 440 * class_id) * t) + 0.01 * rng.standard_normal(t.size)
                sf.write(root / "audio" / label / name, y, 16000, subtype="PCM_16")
                lines.append(f"{name},{fold},{label}")
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


@pytest.fixture
def tiny(monkeypatch):
    """TinySet registered beside ESC-50 and UrbanSound8K, as one more entry of SPECS would be."""
    monkeypatch.setitem(data_clipsets.SPECS, TINY.name, TINY)
    return TINY


def _meta(result, key):
    return {k: v.value for k, v in result.asset_materializations_for_node(key)[-1].metadata.items()}


def test_a_spec_and_a_reader_give_the_manifest_folds_and_shards_assets(tiny, tmp_path):
    made = clipsets.clipset_assets([tiny])
    by_key = {a.key.to_user_string(): a for a in made}
    assert set(by_key) == {"tinyset_manifest", "tinyset_folds", "tinyset_shards"}
    folds = by_key["tinyset_folds"]
    assert folds.partitions_def.get_partition_keys() == ["1", "2", "3"]  # from num_folds
    assert folds.backfill_policy == dg.BackfillPolicy.single_run()
    assert folds.descriptions_by_key[folds.key] == "Official TinySet fold k: test = fold k, train = the other two."
    assert {a.key.to_user_string(): a.group_names_by_key[a.key] for a in made} == {
        "tinyset_manifest": "downstream",
        "tinyset_folds": "downstream",
        "tinyset_shards": "shards",
    }
    assert {c.name for a in made for c in a.check_specs} == {
        "every_row_has_its_file",
        "published_counts",
        "disjoint_and_covering",
        "shards_match_record",
    }

    # beside the built-in sets' assets in one Definitions, wired as theirs are
    defs = dg.Definitions(
        assets=[*dg.load_assets_from_modules([sources, clipsets, shards]), *made],
        resources={"data_root": DataRoot(root=str(tmp_path / "data")), "sources": DatasetSources()},
    )
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    parents = {
        k: {p.to_user_string() for p in graph.get(dg.AssetKey(k)).parent_keys}
        for k in ("tinyset_manifest", "tinyset_folds", "tinyset_shards", "esc50_shards")
    }
    assert parents == {
        "tinyset_manifest": {"dataset_sources"},
        "tinyset_folds": {"tinyset_manifest"},
        "tinyset_shards": {"tinyset_manifest"},
        "esc50_shards": {"esc50_manifest"},
    }


def test_the_third_set_materialises_from_its_folder(tiny, tmp_path):
    src = tmp_path / "TinySet"
    n = _generate(src)
    manifest, folds, shards_asset = clipsets.clipset_assets([tiny])
    res = {
        "data_root": DataRoot(root=str(tmp_path / "data")),
        "sources": DatasetSources(clipset_dirs={"tinyset": str(src)}),
    }
    result = dg.materialize([manifest, shards_asset], resources=res, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    m = _meta(result, "tinyset_manifest")
    assert m["clips"] == m["ok"] == n == 12 and m["classes"] == 2 and m["source"] == str(src.resolve())
    assert all(c.passed for c in result.get_asset_check_evaluations())  # the counts are the spec's
    assert _meta(result, "tinyset_shards")["samples"] == 12

    # all folds in one run, each fold's test split the fold's 4 clips
    r = dg.materialize(
        [folds],
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": "1", "dagster/asset_partition_range_end": "3"},
    )
    assert r.success
    mats = {e.partition: e.metadata for e in r.asset_materializations_for_node("tinyset_folds")}
    assert [(mats[k]["test"].value, mats[k]["train"].value) for k in "123"] == [(4, 8)] * 3
    assert sorted((c.partition, c.passed) for c in r.get_asset_check_evaluations()) == [(k, True) for k in "123"]
    layout = DataLayout.at(tmp_path / "data")
    con = duckdb.connect(str(layout.catalog), read_only=True)
    assert con.sql("SELECT count(*) FROM tinyset_fold2_test WHERE fold = 2").fetchall()[0][0] == 4
    assert con.sql("SELECT DISTINCT class_name FROM tinyset ORDER BY 1").fetchall() == [("dog bark",), ("siren",)]


def test_the_third_sets_folder_from_its_variable_or_an_error_naming_it(tiny, tmp_path, monkeypatch):
    layout = DataLayout.at(tmp_path / "data")
    monkeypatch.setenv("AUDIOCLIP_TINYSET_DIR", str(tmp_path / "TinySet"))
    assert DatasetSources().clipset("tinyset", layout) == (tmp_path / "TinySet").resolve()
    monkeypatch.delenv("AUDIOCLIP_TINYSET_DIR")
    # nothing configured: the demo dataset (not generated here) holds no TinySet
    monkeypatch.setattr("audioclip_core.data.demo_dataset.generate_all", lambda root: None)
    with pytest.raises(FileNotFoundError, match="AUDIOCLIP_TINYSET_DIR"):
        DatasetSources().clipset("tinyset", layout)
    with pytest.raises(ValueError, match="unknown clip set 'other'"):
        DatasetSources().clipset("other", layout)
