"""notebooks/quickstart.ipynb runs top to bottom (on the tiny slice without ratings, pointed at by an environment variable)."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, tiny_config_dict, write_yaml

pytestmark = pytest.mark.slow  # subprocesses and real training: the full suite, not the fast tier


def tagged(notebook, tag: str) -> list:
    """The code cells carrying `tag` in their metadata (the notebook marks its figure and recommend cells)."""
    return [cell for cell in notebook.cells if cell.cell_type == "code" and tag in cell.metadata.get("tags", [])]


@pytest.mark.long
def test_quickstart_notebook_executes(tiny_data, embedding_cache, tmp_path, monkeypatch):
    config = tiny_config_dict(tiny_data, tmp_path / "runs", embedding_cache)
    config["train"]["epochs"] = 1
    # Without a rating column: the notebook must not assume rating metrics exist (the quickstart data has them).
    del config["data"]["interactions"]["columns"]["rating"], config["data"]["rating_range"]
    monkeypatch.setenv("PIPELINE_NOTEBOOK_CONFIG", str(write_yaml(tmp_path / "tiny.yaml", config)))
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    # The run the notebook made is the tiny config's (the notebook read the variable), complete and loadable.
    latest = (tmp_path / "runs" / "latest").resolve()
    assert latest.name.startswith("tiny-") and (latest / "metrics.json").is_file()
    # The training curve and the report's charts are shown inline as images.
    figures = tagged(notebook, "figure")
    assert len(figures) == 2
    for cell in figures:
        assert any("image/png" in output.get("data", {}) for output in cell.outputs), cell.source[:80]
    # The new user's list is shown as a table, joined with the titles of the tiny catalog.
    (recommend,) = tagged(notebook, "recommend")
    tables = [output.data["text/html"] for output in recommend.outputs if "text/html" in output.get("data", {})]
    assert tables and "<table" in tables[-1] and "title" in tables[-1] and "new-user" in tables[-1]
