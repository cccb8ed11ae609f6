"""The bbo gRPC service: servicer, server process (``bbo serve``) and the ``bbo`` command line."""
