"""The audit stage: a target's answers -> evidence over queries -> a verdict against a claim.

`engine` runs the sequential audit of one endpoint, `text` the greedy-token (text tier) vote,
`claims` turns posteriors and a claim into head verdicts, `identify` scores answers collected
elsewhere, and `endpoint_evaluation` measures audits against known targets.
"""

from hspi.audit.engine import AuditReport, AuditSettings, HeadReport, QueryRecord, run_audit, write_report

__all__ = ["AuditReport", "AuditSettings", "HeadReport", "QueryRecord", "run_audit", "write_report"]
