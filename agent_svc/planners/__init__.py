"""Planners: the offline one (deterministic parsing + BM25) and Gemini, behind one interface."""

from __future__ import annotations

from typing import Protocol

from agent_svc.domain import Plan, Query, Recommendation


class Planner(Protocol):
    name: str  # "offline" or "gemini"

    def recommend(self, query: Query) -> Recommendation: ...

    def plan(self, query: Query) -> Plan: ...
