"""The paper's tables and figures from a results store (``rbseg report``).

``spec`` holds what each table/figure shows (plain data), ``inputs`` looks numbers up in the
results, ``tables`` / ``figures`` / ``html`` render them, ``build.build_report`` writes everything.
"""
from .build import ReportSummary, build_report
from .inputs import ResultIndex, load_result_index

__all__ = ["ReportSummary", "ResultIndex", "build_report", "load_result_index"]
