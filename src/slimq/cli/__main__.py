import sys

from slimq.cli.main import main

sys.exit(main())
