"""`python -m inspectd ...` = the `inspectd` command."""

from inspectd.cli import main

raise SystemExit(main())
