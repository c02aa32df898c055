import json

from conftest import dvc, needs_real_data


@needs_real_data
def test_prepared_project_is_up_to_date(prepared_project):
    status = dvc(prepared_project, "status", "prepare")
    assert "up to date" in status.stdout or status.stdout.strip() == "", status.stdout
    counts = json.loads((prepared_project / "reports" / "data.json").read_text())["counts"]
    assert counts["val"]["total"] == 5000
