"""The LLM gateway's domain (contract: "LLM gateway"): what a call may cost at most (reserved before the
upstream is contacted), and what it cost (its ``usage``, settled as events). The HTTP side is
portal/gateway.py; the upstream client is ``upstream``."""
