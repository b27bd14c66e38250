"""Erasure audits: does an edit's erased concept come back under attack? (:func:`audit`)"""

from diffloc.audit.config import ATTACKS, AuditConfig
from diffloc.audit.run import AttackResult, AuditReport, audit
from diffloc.audit.target import AuditTarget, audit_target

__all__ = ["ATTACKS", "AttackResult", "AuditConfig", "AuditReport", "AuditTarget", "audit", "audit_target"]
