"""Conditional policy search on stable-baselines3, policy queries, and baseline searchers."""

from autoprune.agents.algorithms import AGENTS, create_agent, list_agents
from autoprune.agents.policy import ConditionalPolicy, load_policy
from autoprune.agents.search import SearchConfig, search

__all__ = ["AGENTS", "ConditionalPolicy", "SearchConfig", "create_agent", "list_agents", "load_policy", "search"]
