"""Usage control: Casbin decides, this package explains and attaches obligations.

The broker is the policy decision point; each connector also enforces its department's
own policy before it touches data.
"""

from yumen.policy._engine import Decision, DecisionRequest, Obligations, PolicyEngine, default_policy_paths

__all__ = ["Decision", "DecisionRequest", "Obligations", "PolicyEngine", "default_policy_paths"]
