import sys

from huozi_local.cli import main

sys.exit(main())
