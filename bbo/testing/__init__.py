"""Real stand-ins for the services bbo talks to, for tests and benchmarks (never used by ``bbo serve``).

- :mod:`bbo.testing.chat_server`: a local OpenAI-compatible chat server with scripted answers;
- :mod:`bbo.testing.postgres`: a throwaway PostgreSQL cluster on a loopback port;
- :mod:`bbo.testing.strategies`: a strategy without a model, for tests of what surrounds it.
"""
