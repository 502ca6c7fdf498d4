"""The HTML report of a run (report.html and the files beside it); see :mod:`featsurv.report.render`."""
from .render import REPORT_FILE, write_report

__all__ = ["write_report", "REPORT_FILE"]
