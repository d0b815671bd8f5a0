"""The project notebook runs top to bottom (on the synthetic data, with the session's
tiny training run as the results to show)."""

import os

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_notebook_executes_on_synthetic_data(synthetic_dir, trained_model, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("BUSI_DATA", str(synthetic_dir))
    monkeypatch.setenv("BUSI_RUN", str(trained_model))
    monkeypatch.setenv("BUSI_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("BUSI_AUDIT_OUT", str(tmp_path / "audit"))
    notebook = nbformat.read(ROOT / "project_notebook.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert str(os.path.basename(synthetic_dir)) in text or "data:" in text
    assert "test accuracy" in text, "the results section did not read the training run"
    assert (tmp_path / "audit" / "audit.md").is_file()
    assert (tmp_path / "figures" / "audit_threshold_pairs.png").is_file()
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 9  # 7 audit figures, the split, the results
    tables = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    # the session model is a multitask model with an input check: its sections are filled
    assert "Dice, all lesion images" in tables, "the lesion section did not read the run's segmentation metrics"
    assert "flagged at the threshold" in tables and "masks" in tables, "the input-check section has no per-set table"
    assert "test images wrong" in text, "the worked examples did not run the served model on the test split"
    assert "| image | true | predicted |" in tables
