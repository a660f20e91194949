"""Demo input for the FITS flow: a small synthetic CRISP cube under $INGEST_HOME/science, then one ingest."""
from __future__ import annotations

from typing import Any

from tasks.home import home_path


def run_demo() -> dict[str, Any]:
    from flows.fits.cli import run_cube
    from flows.fits.samples import write_sample_cube

    science = home_path("science")
    cube = write_sample_cube(science / "demo" / "2019-04-16" / "CRISP")
    relative = cube.relative_to(science).as_posix()
    code, summary = run_cube(relative, previews=True, owner_emails=["observer@example.org"])
    if code:
        raise RuntimeError(f"FITS demo ingest failed: {summary.get('error')}")
    summary["cube"] = str(cube)
    summary["see_records_with"] = (f"SELECT * FROM fits_cubes c JOIN fits_metadata m ON m.cube_id = c.id "
                                   f"WHERE c.oid = '{summary['oid']}'")
    summary["check_access_with"] = (f"python flows/run.py fits-access '{summary['oid']}' "
                                    f"--user observer@example.org")
    return summary
