"""Audit files: one TOML file declares a whole audit (models, configs, probe, I2P, report).

`load_audit` validates a file into an `AuditSpec`, `plan_audit` says what is done and left without
writing anything, and `run_audit` runs what is left into one output folder.
"""

from analysis.audit.spec import AuditSpec, load_audit

__all__ = ["AuditSpec", "load_audit"]
