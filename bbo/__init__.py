"""bbo core: search spaces, studies and trials, storage, GP surrogates, acquisition, LLM priors, kits.

Importable without gRPC; the service (``bbo_server``) and the client (``bbo_client``) build on it.
"""

__version__ = "0.1.0"
