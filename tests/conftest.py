import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUDIOCLIP_SHARED_DIR", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), (f"shared data not found at {SHARED_DATA}: the tests read real files from "
                                   "../shared/data (set AUDIOCLIP_SHARED_DIR to its parent)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model():
    import audioclip_core as ac

    torch.manual_seed(0)
    return ac.build_model("audioclip-tiny").eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    import audioclip_core as ac

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    ac.save_checkpoint(tiny_model, path, metadata={"input_scale": "int16"})
    return path
