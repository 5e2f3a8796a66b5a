import sys

from hoiguide.cli import main

sys.exit(main())
