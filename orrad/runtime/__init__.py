"""The agent runtime: the loop, its context budget, sessions, tools, policies, providers."""
