"""The quickstart notebook executes top to bottom on tiny data."""


import nbformat
from conftest import REPO
from nbclient import NotebookClient


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    path = REPO / "notebooks" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    monkeypatch.setenv("SEQJAX_QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("SEQJAX_REPO", str(REPO))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells for o in c.get("outputs", []))
    assert "NDCG@10" in outputs and "full catalogue" in outputs
