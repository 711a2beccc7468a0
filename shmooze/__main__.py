import sys

from shmooze.cli.main import main

sys.exit(main())
