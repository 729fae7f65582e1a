import sys

from audit_service.cli import main

sys.exit(main())
