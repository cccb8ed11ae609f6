import sys

from bbo_server.cli import main

sys.exit(main())
