"""Imported by the answer checkers' fork server (verifier._zygote_context): sympy and
math-verify imported and warmed up once there, so every worker forked from it starts warm."""

from coldstart.common.verifier import _warm_up_checks

_warm_up_checks()
